"""The one `.pte` writer: every backend's lowered program (XNNPACK's dynamic one, an NPU's static one) is emitted
here with its metadata, by the same ExecuTorch passes, atomically; and what it holds is counted here.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from handheld.core.atomic import atomic_path
from handheld.core.pte_metadata import ProgramMetadata

@dataclass(frozen=True)
class ExportResult:
    """A program `handheld export` wrote: where, how large, how long the export took, what runs where."""

    path: Path
    file_bytes: int
    seconds: float
    op_counts: dict[str, dict[str, int]]


# Graph plumbing, not computation: left out of operator counts.
_PLUMBING = {"getitem", "executorch_call_delegate", "copy_", "sym_size"}


def write_program(lowered: Any, metadata: ProgramMetadata, path: Path, *, dynamic_shapes: bool = True,
                  op_counts: dict[str, dict[str, int]] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    """`lowered` (ExecuTorch's EdgeProgramManager, delegates inside) with `metadata` and its operator counts as the
    program's constant methods, emitted to `path` atomically; returns the counts (`op_counts`: already counted by
    the caller). `dynamic_shapes` False: a static program (an NPU's), which ExecuTorch's runner must feed its exact
    token count."""
    from executorch.exir import EdgeCompileConfig, EdgeProgramManager, ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    if op_counts is None:
        op_counts = count_ops(lowered.exported_program().graph_module)
    metadata = dataclasses.replace(metadata, op_counts=op_counts)
    methods = metadata.to_constant_methods() | ({} if dynamic_shapes else {"enable_dynamic_shape": False})
    program = EdgeProgramManager(lowered.exported_program(), methods, EdgeCompileConfig(_check_ir_validity=False))
    log("emitting the ExecuTorch program")
    config = ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        run_reinplace_pass=True,  # write the KV cache in place instead of copying it every step
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
    )
    # No grad: constant propagation runs the in-place cache writes.
    with atomic_path(path) as tmp, torch.no_grad(), open(tmp, "wb") as f:
        _emit(program, config, f)
    return op_counts


def _emit(program, config, file) -> None:
    program.to_executorch(config).write_to_file(file)


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
