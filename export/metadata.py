"""The metadata the exporter writes into a `.pte` (the contract itself is `handheld.core.pte_metadata`)."""

from __future__ import annotations

import handheld
from handheld.core.llama.config import ModelArgs, known_model_names, named_model_args
from handheld.core.pte_metadata import ProgramMetadata
from handheld.export.provenance import export_provenance


def model_name(args: ModelArgs) -> str:
    """The named shape these params are, or a description of a custom Llama."""
    for name in known_model_names():
        if named_model_args(name).architecture() == args.architecture():
            return name
    return f"llama(dim={args.dim}, n_layers={args.n_layers}, n_heads={args.n_heads}, vocab_size={args.vocab_size})"


def program_metadata(args: ModelArgs, *, max_seq_len: int, bos_id: int, eos_ids: list[int], scheme: str, backend: str,
                     full_logits: bool, group_size: int | None, weight_bytes: dict[str, int],
                     quantization: dict | None = None, llm_kv_ops: bool = False,
                     kv_cache: str = "fp32") -> ProgramMetadata:
    """Everything but the operator counts, which are known only after lowering."""
    return ProgramMetadata(
        max_seq_len=max_seq_len, vocab_size=args.vocab_size, n_layers=args.n_layers, bos_id=bos_id,
        eos_ids=tuple(eos_ids), model=model_name(args), params=args.to_dict(), scheme=scheme, backend=backend,
        version=handheld.__version__, full_logits=full_logits, group_size=group_size, quantization=quantization, weight_bytes=weight_bytes,
        provenance=export_provenance(), llm_kv_ops=llm_kv_ops, kv_cache=kv_cache,
    )
