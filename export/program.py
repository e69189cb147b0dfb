"""Checkpoint -> scheme transform -> torch.export -> backend lowering -> `.pte`, written atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from handheld.core.atomic import refuse_overwriting_inputs
from handheld.core.checkpoints import read_checkpoint
from handheld.core.checkpoints.prequantized import executorch_loader_notes
from handheld.core.errors import HandheldError
from handheld.export.backends import Backend
from handheld.export.backends.executorch_patches import release_delegated_weights
from handheld.export.metadata import program_metadata
from handheld.export.npu import export_npu
from handheld.export.options import ExportOptions
from handheld.export.pte_writer import ExportResult, count_ops, write_program
from handheld.export.memory_check import check_memory, checkpoint_parameters
from handheld.export.weight_bytes import weight_bytes_by_kind
from handheld.quant.schemes import Scheme, prepare_model, scheme_options
from handheld.core.tokenizers.tokenizer import NUM_SPECIAL, load_tokenizer

# Operators that only appear outside a delegate if a quantized linear was not delegated.
_QUANTIZED_LINEAR_OPS = {"linear", "addmm", "mm", "torchao.choose_qparams_affine", "torchao.quantize_affine"}


def special_ids(tokenizer_path: Path | None, vocab_size: int) -> tuple[int, list[int]]:
    """BOS and stop ids from the tokenizer; without one, Llama 3's layout (specials after the ranks)."""
    if tokenizer_path is not None:
        tok = load_tokenizer(tokenizer_path)
        if tok.vocab_size > vocab_size:
            raise HandheldError(f"tokenizer {tokenizer_path} has {tok.vocab_size} ids but the model only {vocab_size}")
        return tok.bos_id, tok.stop_ids
    first_special = vocab_size - NUM_SPECIAL
    return first_special, [first_special + 1, first_special + 8, first_special + 9]


def export_program(source: Path, output: Path, options: ExportOptions = ExportOptions(),
                   log: Callable[[str], None] = print) -> ExportResult:
    """`handheld export`: a checkpoint (or, for an NPU, a `.pt2` from `handheld quantize`) as a `.pte` for
    `options.backend`, written atomically at `output` by the one writer (`handheld.export.pte_writer`)."""
    options.check_source(source)
    if options.is_npu:
        return export_npu(source, output, options, log)
    return _export_eager(source, output, options, log)


def _export_eager(checkpoint_dir: Path, output: Path, options: ExportOptions,
                  log: Callable[[str], None]) -> ExportResult:
    """A CPU backend: the scheme's eager model, traced with a dynamic token count and lowered."""
    backend, max_seq_len = options.target, options.seq_len
    refuse_overwriting_inputs(output, [checkpoint_dir, options.tokenizer, options.calib])
    start = time.perf_counter()
    checkpoint = _read_for_export(checkpoint_dir, options.scheme, log, options.skip_memory_check)
    tokenizer_path = options.tokenizer or checkpoint.tokenizer_path
    bos_id, eos_ids = special_ids(tokenizer_path, checkpoint.args.vocab_size)
    if tokenizer_path is None:
        log(f"no tokenizer given: BOS/EOS ids assume Llama 3's layout (BOS {bos_id})")
    scheme_opts = scheme_options(options.scheme, options.group_size, checkpoint, scale_rule=options.scale_rule,
                                 calib=options.calib, calib_tokens=options.calib_tokens, budget_mb=options.budget_mb,
                                 rotation=options.rotation)
    if options.calib is not None:
        log(f"GPTQ on {options.calib} (the slow step before lowering)")
    reader = load_tokenizer(tokenizer_path) if options.calib is not None and tokenizer_path else None
    prepared = prepare_model(checkpoint, options.scheme, scheme_opts, max_seq_len=max_seq_len,
                             full_logits=options.full_logits, tokenizer=reader)
    model, scheme, args = prepared.model, prepared.scheme, checkpoint.args
    if options.llm_kv_ops:
        with_llm_kv_ops(model, options.kv_cache)
    del checkpoint  # its tensors (often a memory-mapped file) are freed once the model no longer needs them
    metadata = program_metadata(
        args, max_seq_len=max_seq_len, bos_id=bos_id, eos_ids=eos_ids, scheme=prepared.label,
        backend=backend.name, full_logits=options.full_logits, group_size=prepared.group_size,
        quantization=prepared.quantization, weight_bytes=weight_bytes_by_kind(model), llm_kv_ops=options.llm_kv_ops,
        kv_cache=options.kv_cache,
    )
    lowered = lower(model, scheme, backend, max_seq_len, log)
    del model, prepared  # the backend has serialized its own copy; the delegates now hold the last references
    release_delegated_weights(lowered.program)
    with backend.lowering():  # emission runs edge passes too
        write_program(lowered.program, metadata, output, op_counts=lowered.op_counts, log=log)
    return ExportResult(output, output.stat().st_size, time.perf_counter() - start, lowered.op_counts)


def with_llm_kv_ops(model: nn.Module, kv_cache: str = "fp32") -> nn.Module:
    """The model's cache and attention through ExecuTorch's LLM ops, `kv_cache` fp32 or int8, the ops registered
    first: what export lowers, and what eval scores for a checkpoint."""
    register_llm_ops(kv_cache)
    return model.use_llm_kv_ops(kv_cache)


def register_llm_ops(kv_cache: str = "fp32") -> None:
    """ExecuTorch's LLM ops (`llama::update_cache`, `llama::custom_sdpa`, `llama::custom_quantized_sdpa`) exist in
    torch once their AOT library is imported; the runtimes that run the programs carry the kernels (handheld's
    native runner its own). An int8 cache also calls the per-token rounding ops, whose out variants emission needs."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the import registers them)

    if kv_cache == "int8":
        import executorch.kernels.quantized  # noqa: F401


def _read_for_export(checkpoint_dir: Path, scheme_name: str | None, log: Callable[[str], None],
                     skip_memory_check: bool):
    """The checkpoint, once the machine is known to have the memory its export needs."""
    checkpoint = read_checkpoint(checkpoint_dir)
    log(f"loaded {checkpoint.format} checkpoint {checkpoint_dir}")
    job = scheme_name or ("8da4w" if checkpoint.prequantized else "fp32")
    check_memory(f"export of {checkpoint_dir} as {job}", checkpoint_parameters(checkpoint), job, skip_memory_check)
    for note in executorch_loader_notes(checkpoint.args):
        log(note)
    return checkpoint


@dataclass
class Lowered:
    program: Any  # ExecuTorch's EdgeProgramManager (imported lazily)
    op_counts: dict[str, dict[str, int]]


def lower(model: nn.Module, scheme: Scheme, backend: Backend, max_seq_len: int,
          log: Callable[[str], None] = print) -> Lowered:
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    log("tracing with torch.export")
    exported = trace(model, max_seq_len)
    log(f"lowering to {backend.name} (the slow step)")
    with backend.lowering():
        lowered = to_edge_transform_and_lower(exported, partitioner=backend.partitioners(scheme),
                                              compile_config=EdgeCompileConfig(_check_ir_validity=False))
    op_counts = count_ops(lowered.exported_program().graph_module)
    if scheme.quantized:
        check_quantized_linears_delegated(op_counts, backend.name)
    return Lowered(lowered, op_counts)


def check_quantized_linears_delegated(op_counts: dict[str, dict[str, int]], backend: str) -> None:
    """A quantized linear left to ExecuTorch's portable kernels runs dequantized and slow: refuse it."""
    left = {op: n for op, n in op_counts["portable"].items() if op in _QUANTIZED_LINEAR_OPS}
    if left:
        found = ", ".join(f"{op} x{n}" for op, n in sorted(left.items()))
        raise HandheldError(f"{backend} did not take every quantized linear; left undelegated: {found}")


def trace(model: nn.Module, max_seq_len: int) -> torch.export.ExportedProgram:
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    # One graph for prefill and decode: the token count is dynamic, positions come in as a tensor.
    dynamic = ({1: torch.export.Dim.DYNAMIC(min=1, max=max_seq_len)}, None)
    with torch.no_grad():
        # No run_decompositions here: to_edge_transform_and_lower runs its own.
        return torch.export.export(model, example, dynamic_shapes=dynamic)
