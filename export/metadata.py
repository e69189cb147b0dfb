"""The metadata a `.pte` carries as constant methods.

ExecuTorch's LLM runner reads the `get_*`/`use_*`/`enable_*` methods; handheld adds its own under
`handheld_*` so a `.pte` says what it is without relying on its file name.
"""

from __future__ import annotations

import json
from typing import Any

import handheld
from handheld.config import ModelArgs, known_model_names, named_model_args

RUNNER_KEYS = (
    "get_max_seq_len",
    "get_max_context_len",
    "get_vocab_size",
    "get_n_layers",
    "get_bos_id",
    "get_eos_ids",
    "use_kv_cache",
    "use_sdpa_with_kv_cache",
    "enable_dynamic_shape",
)


def model_name(args: ModelArgs) -> str:
    """The named shape these params are, or a description of a custom Llama."""
    for name in known_model_names():
        if named_model_args(name).architecture() == args.architecture():
            return name
    return f"llama(dim={args.dim}, n_layers={args.n_layers}, n_heads={args.n_heads}, vocab_size={args.vocab_size})"


def program_metadata(
    args: ModelArgs,
    *,
    max_seq_len: int,
    bos_id: int,
    eos_ids: list[int],
    scheme: str,
    backend: str,
    full_logits: bool,
) -> dict[str, Any]:
    return {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": args.vocab_size,
        "get_n_layers": args.n_layers,
        "get_bos_id": bos_id,
        "get_eos_ids": eos_ids,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
        "handheld_model": model_name(args),
        "handheld_params": json.dumps(args.to_dict(), sort_keys=True),
        "handheld_scheme": scheme,
        "handheld_backend": backend,
        "handheld_version": handheld.__version__,
        "handheld_full_logits": full_logits,
    }
