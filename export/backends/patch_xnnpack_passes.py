"""XNNPACK's preprocessing without the passes that cannot change a partition.

ExecuTorch runs 17 passes on every XNNPACK partition, and most of them end by retracing the whole partition
with fake tensors whether or not they changed anything: on a Llama graph that retrace, not the rewriting, is
about half of the lowering time (measured: SmolLM2 width, 8da4w, 2 layers: 19.7 of 44 s in those passes).
A pass whose operators are absent from a partition has nothing to rewrite, so it is skipped there. The
decision is made for each pass on the graph as the passes before it left it (an earlier pass can create an
operator a later one rewrites). Which operators each pass acts on is read from its source (ExecuTorch 1.5.1);
a test checks that the programs come out byte for byte the same as with every pass.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch


def _op_name(target: object) -> str:
    """"aten.max" for aten.max.dim: the operator without its overload (coarser, so never skips wrongly)."""
    name = getattr(target, "__name__", str(target))
    return ".".join(name.split(".")[:2])


def _graph_ops(graph: torch.fx.Graph) -> set[str]:
    return {_op_name(node.target) for node in graph.nodes if node.op == "call_function"}


def _any_of(*ops: str) -> Callable[[set[str]], bool]:
    return lambda present: not present.isdisjoint(ops)


def _all_of(*ops: str) -> Callable[[set[str]], bool]:
    return lambda present: present.issuperset(ops)


UPSAMPLE_PATTERN_NEEDS = ("aten.upsample_bilinear2d",)
SDPA_PATTERN_NEEDS = ("aten.bmm", "aten._softmax", "aten.where", "aten.logical_not")

# Pass class name -> "this partition holds something the pass rewrites". Passes not named here always run.
_ACTS_ON: dict[str, Callable[[set[str]], bool]] = {
    # The two pattern-matching passes: operators every one of their patterns contains (a test reads the patterns).
    "ConvertToUpsampleBilinear2d": _all_of(*UPSAMPLE_PATTERN_NEEDS),
    "ConvertToSDPAPass": _all_of(*SDPA_PATTERN_NEEDS),
    "FuseBatchNormPass": _any_of("aten.native_batch_norm", "aten._native_batch_norm_legit_no_training"),
    "DecomposeBatchNorm": _any_of("aten.native_batch_norm", "aten._native_batch_norm_legit_no_training"),
    "FuseActivationPass": _any_of("aten.relu", "aten.hardtanh"),
    "DecomposeConcatenate": _any_of("aten.cat"),
    "RemoveGetItemPass": _any_of("aten.max_pool2d_with_indices", "aten.max"),
    "InsertPadQDQPass": _any_of("aten.constant_pad_nd"),
    "Conv1dUnsqueezePass": _any_of("aten.convolution"),
    "PReLUReshapePass": _any_of("aten._prelu_kernel", "aten.prelu"),
    "RemoveRedundantCopyPass": _any_of("aten._to_copy"),
}


def _has_custom_meta(graph: torch.fx.Graph) -> bool:
    return any("custom" in node.meta for node in graph.nodes)


def _has_dim_order_op(graph: torch.fx.Graph) -> bool:
    from executorch.exir.passes.dim_order_ops_registry import MemoryFormatOpsMap

    return any(node.op == "call_function" and node.target in MemoryFormatOpsMap for node in graph.nodes)


def _has_constant_call(graph: torch.fx.Graph) -> bool:
    """ConstPropPass folds a call whose every input is a real tensor or a literal: here, one whose input nodes
    are all get_attr (or none: arange, full). Placeholders trace as fake tensors, and a fold chain starts at such
    a call, so a graph without one folds nothing."""
    return any(node.op == "call_function" and all(arg.op == "get_attr" for arg in node.all_input_nodes)
               for node in graph.nodes)


# The same for passes that look at more than operator names: pass class name -> predicate on the graph.
_ACTS_ON_GRAPH: dict[str, Callable[[torch.fx.Graph], bool]] = {
    # Copies node.meta["custom"] from a q/dq node's parent: nothing to copy without it.
    "PropagateCustomMetaPass": _has_custom_meta,
    # Turns the dim-order ops back into memory-format ones.
    "DimOrderOpsRevertPass": _has_dim_order_op,
    "ConstPropPass": _has_constant_call,
}


def can_change(pass_: type, graph: torch.fx.Graph) -> bool:
    """Whether `pass_` has anything to rewrite in `graph` as it is now."""
    if pass_.__name__ in _ACTS_ON_GRAPH:
        return _ACTS_ON_GRAPH[pass_.__name__](graph)
    return _ACTS_ON.get(pass_.__name__, lambda _: True)(_graph_ops(graph))


def passes_for(passes: list[type], graph: torch.fx.Graph) -> list[type]:
    """The passes that can change this graph as it is, in their order (before any of them runs)."""
    return [p for p in passes if can_change(p, graph)]


@contextlib.contextmanager
def pruned_passes(enabled: bool = True) -> Iterator[None]:
    """While active, XNNPACK's pass manager runs each pass only if it can change the partition as the passes
    before it left it; ExecuTorch's own loop runs each pass that does (one pass at a time)."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    original = XNNPACKPassManager.transform

    def transform(self):
        passes, program = self.passes, self._exported_program
        try:
            for pass_ in passes:
                if can_change(pass_, program.graph):
                    self.passes, self._exported_program = [pass_], program
                    program = original(self)
        finally:
            self.passes = passes
        return program

    if enabled:
        XNNPACKPassManager.transform = transform
    try:
        yield
    finally:
        XNNPACKPassManager.transform = original
