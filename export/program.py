"""Checkpoint -> scheme transform -> torch.export -> backend lowering -> `.pte`, written atomically."""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from handheld.core.atomic import atomic_path, refuse_overwriting_inputs
from handheld.core.checkpoints import read_checkpoint
from handheld.core.checkpoints.prequantized import executorch_loader_notes
from handheld.core.errors import HandheldError
from handheld.core.pte_metadata import ProgramMetadata
from handheld.export.backends import Backend, get_backend
from handheld.export.metadata import program_metadata
from handheld.export.memory_check import check_memory, checkpoint_parameters
from handheld.export.weight_bytes import weight_bytes_by_kind
from handheld.quant.schemes import Scheme, get_scheme, prepare_model, scheme_options
from handheld.core.tokenizers.tokenizer import NUM_SPECIAL, load_tokenizer

# Operators that only appear outside a delegate if a quantized linear was not delegated.
_QUANTIZED_LINEAR_OPS = {"linear", "addmm", "mm", "torchao.choose_qparams_affine", "torchao.quantize_affine"}
# Graph plumbing, not computation: left out of operator counts.
_PLUMBING = {"getitem", "executorch_call_delegate", "copy_", "sym_size"}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    file_bytes: int
    seconds: float
    op_counts: dict[str, dict[str, int]]


def special_ids(tokenizer_path: Path | None, vocab_size: int) -> tuple[int, list[int]]:
    """BOS and stop ids from the tokenizer; without one, Llama 3's layout (specials after the ranks)."""
    if tokenizer_path is not None:
        tok = load_tokenizer(tokenizer_path)
        if tok.vocab_size > vocab_size:
            raise HandheldError(f"tokenizer {tokenizer_path} has {tok.vocab_size} ids but the model only {vocab_size}")
        return tok.bos_id, tok.stop_ids
    first_special = vocab_size - NUM_SPECIAL
    return first_special, [first_special + 1, first_special + 8, first_special + 9]


def export_checkpoint(
    checkpoint_dir: Path,
    output: Path,
    *,
    scheme_name: str | None,
    backend_name: str,
    max_seq_len: int,
    tokenizer_path: Path | None = None,
    group_size: int | None = None,
    full_logits: bool = False,
    log: Callable[[str], None] = print,
    scale_rule: str | None = None,
    calib: Path | None = None,
    calib_tokens: int | None = None,
    budget_mb: float | None = None,
    skip_memory_check: bool = False,
    llm_kv_ops: bool = True,
) -> ExportResult:
    """`scheme_name` None means: the checkpoint's own (pre-quantized) scheme, else fp32.
    `full_logits` returns logits for every input position (for evaluation), not just the last.
    `calib`: text GPTQ calibrates a 4-bit scheme on (`calib_tokens` of it); `scale_rule`: how groups round;
    `budget_mb`: weights a decoded token may read, the most sensitive linears kept 8-bit within it.
    `llm_kv_ops` False keeps the plain indexed cache (attention over the whole cache: benchmarks compare)."""
    backend = get_backend(backend_name)  # fail on bad names before any heavy work
    if backend.partitioners is None:
        raise HandheldError(f"backend {backend.name} takes calibrated NPU schemes: export it with handheld.export.npu")
    if scheme_name is not None:
        get_scheme(scheme_name)
    if max_seq_len < 2:
        raise HandheldError(f"--max-seq-len must be at least 2, got {max_seq_len}")
    refuse_overwriting_inputs(output, [checkpoint_dir, tokenizer_path, calib])
    start = time.perf_counter()
    checkpoint = _read_for_export(checkpoint_dir, scheme_name, log, skip_memory_check)
    tokenizer_path = tokenizer_path or checkpoint.tokenizer_path
    bos_id, eos_ids = special_ids(tokenizer_path, checkpoint.args.vocab_size)
    if tokenizer_path is None:
        log(f"no tokenizer given: BOS/EOS ids assume Llama 3's layout (BOS {bos_id})")
    options = scheme_options(scheme_name, group_size, checkpoint, scale_rule=scale_rule, calib=calib,
                             calib_tokens=calib_tokens, budget_mb=budget_mb)
    if calib is not None:
        log(f"GPTQ on {calib} (the slow step before lowering)")
    prepared = prepare_model(checkpoint, scheme_name, options, max_seq_len=max_seq_len, full_logits=full_logits,
                             tokenizer=load_tokenizer(tokenizer_path) if calib is not None and tokenizer_path else None)
    model, scheme, args = prepared.model, prepared.scheme, checkpoint.args
    _with_llm_kv_ops(model, llm_kv_ops)
    del checkpoint  # its tensors (often a memory-mapped file) are freed once the model no longer needs them
    metadata = program_metadata(
        args, max_seq_len=max_seq_len, bos_id=bos_id, eos_ids=eos_ids, scheme=prepared.label,
        backend=backend.name, full_logits=full_logits, group_size=prepared.group_size,
        quantization=prepared.quantization, weight_bytes=weight_bytes_by_kind(model), llm_kv_ops=llm_kv_ops,
    )
    lowered = lower(model, scheme, backend, max_seq_len, log)
    del model, prepared  # the backend has serialized its own copy; the delegates now hold the last references
    release_delegated_weights(lowered.program)
    # The operator split is only known after lowering, and it travels in the .pte too.
    metadata = dataclasses.replace(metadata, op_counts=lowered.op_counts)
    with atomic_path(output) as tmp, backend.lowering():  # emission runs edge passes too
        write_program(lowered.program, metadata, tmp, log)
    seconds = time.perf_counter() - start
    return ExportResult(output, output.stat().st_size, seconds, lowered.op_counts)


def _with_llm_kv_ops(model: nn.Module, wanted: bool) -> None:
    if wanted:
        register_llm_ops()
        model.use_llm_kv_ops()


def register_llm_ops() -> None:
    """ExecuTorch's LLM ops (`llama::update_cache`, `llama::custom_sdpa`) exist in torch once their AOT library
    is imported; the runtimes that run the programs carry the kernels (handheld's native runner its own)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the import registers them)


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


def release_delegated_weights(program) -> None:
    """Swap each delegate's weights for storage-free stand-ins of the same shape and dtype. The backend has
    already serialized its own copy, and emission only propagates shapes through the delegate's original graph,
    so the model's weights are freed before the program is emitted (1B fp32: 5 GB emission no longer holds)."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    for module in program.exported_program().graph_module.modules():
        if isinstance(module, LoweredBackendModule):
            state = module.original_module.state_dict
            for name, tensor in state.items():
                # A 0-d zero expanded to the shape: no storage beyond one element.
                stand_in = torch.zeros((), dtype=tensor.dtype).expand(tensor.shape)
                is_parameter = isinstance(tensor, nn.Parameter)  # unlifting the graph checks the kind
                state[name] = nn.Parameter(stand_in, tensor.requires_grad) if is_parameter else stand_in


def write_program(lowered, metadata: ProgramMetadata, path: Path, log: Callable[[str], None] = print) -> None:
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager, ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    program = EdgeProgramManager(lowered.exported_program(), metadata.to_constant_methods(),
                                 EdgeCompileConfig(_check_ir_validity=False))
    log("emitting the ExecuTorch program")
    config = ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        run_reinplace_pass=True,  # write the KV cache in place instead of copying it every step
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
    )
    with torch.no_grad(), open(path, "wb") as f:  # constant propagation runs in-place cache writes
        program.to_executorch(config).write_to_file(f)


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


def count_ops(graph_module: torch.fx.GraphModule) -> dict[str, dict[str, int]]:
    """Operator counts inside backend delegates and outside them (run by ExecuTorch's kernels), the same
    split by delegate (which backend runs what), and the number of delegate partitions per backend (each one
    a call at run time and a compile at export)."""
    delegated: collections.Counter[str] = collections.Counter()
    partitions: collections.Counter[str] = collections.Counter()
    by_backend: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.target.startswith("lowered_module"):
            lowered = getattr(graph_module, node.target)
            ops = _op_names(lowered.original_module.graph_module)
            delegated.update(ops)
            by_backend[lowered.backend_id].update(ops)
            partitions[lowered.backend_id] += 1
    portable = collections.Counter(_op_names(graph_module))
    return {"delegated": dict(delegated), "portable": dict(portable), "partitions": dict(partitions),
            "by_backend": {backend: dict(ops) for backend, ops in by_backend.items()}}


def _op_names(graph_module: torch.fx.GraphModule) -> list[str]:
    names = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(getattr(node.target, "__name__", node.target))
        if name.startswith("auto_functionalized") and node.args:
            name = str(node.args[0])  # an in-place op as export wraps it (update_cache): counted by its own name
        name = name.removeprefix("aten.").removesuffix(".default")
        if name.split(".")[0] in _PLUMBING:
            continue
        names.append(name)
    return names
