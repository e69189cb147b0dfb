"""Every patch handheld applies to ExecuTorch, in one file: an ExecuTorch version bump is checked here.

Each patch is a context manager held only while XNNPACK lowers and emits a program
(`export.backends.xnnpack.lowering`), undone on exit, and leaves the program byte for byte what ExecuTorch alone
writes (tests/test_mobile_8da4w.py::test_export_savings_write_the_same_program); what each one skips or shares is
read from ExecuTorch 1.5.1's own source, and tests/test_executorch_patches.py checks the names against its classes.
Four patches and one reach into ExecuTorch's objects, one section each:

1. `skipped_empty_decompositions`: a decomposition retrace with nothing to decompose is skipped (export time).
2. `pruned_edge_passes`: an edge pass with nothing to rewrite is skipped (export time).
3. `pruned_xnnpack_passes`: an XNNPACK per-partition pass that cannot change the partition is skipped (export time).
4. `weights_shared_with`: the partitions' copies for preprocessing share the weights (export memory).
5. `release_delegated_weights`: a lowered program's delegates drop the model's weights before emission (memory).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Callable, Iterator

import torch
from torch import nn


# --------------------------------------------------------------------------------------------------------------
# 1. Decompositions
#
# ExecuTorch's edge conversion without the decomposition retraces that have nothing to decompose.
#
# `to_edge_transform_and_lower` calls `run_decompositions` three times for a partitioner that filters the
# operators it keeps (XNNPACK's does): once to functionalize, once with the table minus the kept operators, and
# once more with the whole table after the kept ones are hidden. Each call retraces the whole program with fake
# tensors and symbolic shapes whether or not an operator in its table occurs: on SmolLM2 8da4w that is 81 s of a
# 258 s export (25 + 23 + 33 s, measured), and the last one finds nothing to decompose but `aten.sym_size.int`
# (the dynamic token count's size queries, which a retrace derives again as they were). ExecuTorch 1.5.1 already
# skips such a call on its other path ("safe to skip when none of those targets occur in the graph"); this does
# the same on this one. A program is only passed through when it came out of an earlier `run_decompositions`
# (already functional) and no node calls an operator of the table but `sym_size`. A test checks that the programs come out byte
# for byte the same as without it (tests/test_mobile_8da4w.py).
# --------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def skipped_empty_decompositions(enabled: bool = True) -> Iterator[None]:
    """While active, `ExportedProgram.run_decompositions(table)` returns a functional program unchanged when
    none of its nodes calls an operator of `table`."""
    from executorch.exir.graph_module import contains_any_call_fn_target_op
    from torch.export import ExportedProgram

    original = ExportedProgram.run_decompositions
    functional: weakref.WeakSet = weakref.WeakSet()

    def run_decompositions(self, decomp_table=None, *args, **kwargs):
        # Size queries are not decomposed by a retrace, only recorded again: they alone do not need one.
        table = {op for op in (decomp_table or {}) if op != torch.ops.aten.sym_size.int}
        if decomp_table and self in functional and not contains_any_call_fn_target_op(self.graph_module, table):
            return self
        result = original(self, decomp_table, *args, **kwargs)
        functional.add(result)
        return result

    if enabled:
        ExportedProgram.run_decompositions = run_decompositions
    try:
        yield
    finally:
        ExportedProgram.run_decompositions = original


# --------------------------------------------------------------------------------------------------------------
# 2. Edge passes
#
# ExecuTorch's ATen-to-edge passes without the ones that have nothing to rewrite in this program.
#
# Converting a program to the edge dialect (and emitting it) runs a dozen passes, and each one retraces the whole program with fake
# tensors and symbolic shapes whether or not it changes a node: on SmolLM2 8da4w each retrace costs 7-10 s
# (measured, 2-core VM), ~80 s in all. A pass whose rewrite has no target in the graph as the passes before it
# left it is skipped. What each pass acts on is read from its source (ExecuTorch 1.5.1, `exir/passes/`), and
# decided per node so that a doubt runs the pass; XNNPACK's own per-partition passes are pruned the same way in
# section 3. A test checks that the programs come out byte for byte the same as with every pass
# (tests/test_mobile_8da4w.py).
# --------------------------------------------------------------------------------------------------------------

_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)
_PROMOTING = ("aten.add.Tensor", "aten.mul.Tensor", "aten.sub.Tensor", "aten.div.Tensor", "aten.div.Tensor_mode",
              "aten.minimum.default")


def _calls(graph: torch.fx.Graph) -> Iterator[torch.fx.Node]:
    return (node for node in graph.nodes if node.op == "call_function")


def _aten(node: torch.fx.Node) -> object:
    """The ATen overload behind a node: an edge op wraps one in `_op` (an ATen overload's own `_op` is its C++
    function, so it is not unwrapped)."""
    target = node.target
    return target if isinstance(target, torch._ops.OpOverload) else getattr(target, "_op", target)


def _tensor_arguments(node: torch.fx.Node) -> Iterator[object]:
    """The values a node passes where its schema expects a Tensor (what ScalarToTensor and SymToTensor coerce)."""
    schema = getattr(_aten(node), "_schema", None)
    if schema is None:
        return
    for position, argument in enumerate(schema.arguments):
        if isinstance(argument.type, torch.TensorType):
            if position < len(node.args):
                yield node.args[position]
            elif argument.name in node.kwargs:
                yield node.kwargs[argument.name]


def _value(item: object) -> object:
    return item.meta.get("val") if isinstance(item, torch.fx.Node) else item


def _has_transpose(graph) -> bool:  # NormalizeTransposePass: aten.t -> aten.t_copy
    return any(_aten(node) == torch.ops.aten.t.default for node in _calls(graph))


def _has_view(graph) -> bool:  # ReplaceBrokenOpsWithFunctionalOpsPass: every view op -> its _copy
    return any(getattr(_aten(node), "is_view", False) for node in _calls(graph))


def _has_scalar_for_tensor(graph) -> bool:  # ScalarToTensorPass: a Python number where a Tensor goes
    return any(isinstance(value, (bool, int, float)) for node in _calls(graph) for value in _tensor_arguments(node))


def _has_symbol_for_tensor(graph) -> bool:  # SymToTensorPass: a SymInt/SymFloat/SymBool where a Tensor goes
    return any(isinstance(_value(value), _SYMBOLIC) for node in _calls(graph) for value in _tensor_arguments(node))


def _has_mixed_types(graph) -> bool:
    """RemoveMixedTypeOperators: add/mul/sub/div/minimum whose operands differ in dtype (a number or a symbol
    counts as differing: the pass would promote it)."""
    for node in _calls(graph):
        if str(_aten(node)) not in _PROMOTING:
            continue
        values = [_value(arg) for arg in node.args]
        if not all(isinstance(v, torch.Tensor) for v in values) or len({v.dtype for v in values}) > 1:
            return True
    return False


def _has_memory_format_op(graph) -> bool:  # MemoryFormatOpsPass: _to_copy/empty/clone -> their dim_order ops
    from executorch.exir.passes.dim_order_ops_registry import DimOrderOpsMap

    return any(node.target in DimOrderOpsMap for node in _calls(graph))


def _has_portable_layout_op(graph) -> bool:
    """LegalizePortableDimOrderPass (at emission, on what no backend took): pooling, expand, mean and sum get a
    contiguous input. The top-level graph's own nodes only: a delegate's inside is not rewritten."""
    from executorch.exir.passes import LegalizePortableDimOrderPass

    return any(node.target in LegalizePortableDimOrderPass._target_ops for node in _calls(graph))


# Pass class name -> "this graph holds something the pass rewrites". Passes not named here always run.
EDGE_ACTS_ON: dict[str, Callable[[torch.fx.Graph], bool]] = {
    "NormalizeTransposePass": _has_transpose,
    "ReplaceBrokenOpsWithFunctionalOpsPass": _has_view,
    "ScalarToTensorPass": _has_scalar_for_tensor,
    "SymToTensorPass": _has_symbol_for_tensor,
    "RemoveMixedTypeOperators": _has_mixed_types,
    "MemoryFormatOpsPass": _has_memory_format_op,
    "LegalizePortableDimOrderPass": _has_portable_layout_op,
}


@contextlib.contextmanager
def pruned_edge_passes(enabled: bool = True) -> Iterator[None]:
    """While active, a pass named in EDGE_ACTS_ON returns the graph module unchanged when it has nothing to rewrite."""
    from torch.fx.passes.infra.pass_base import PassBase, PassResult

    original = PassBase.__call__

    def call(self, graph_module):
        acts_on = EDGE_ACTS_ON.get(type(self).__name__)
        if acts_on is not None and not acts_on(graph_module.graph):
            return PassResult(graph_module, False)
        return original(self, graph_module)

    if enabled:
        PassBase.__call__ = call
    try:
        yield
    finally:
        PassBase.__call__ = original


# --------------------------------------------------------------------------------------------------------------
# 3. XNNPACK's per-partition passes
#
# XNNPACK's preprocessing without the passes that cannot change a partition.
#
# ExecuTorch runs 17 passes on every XNNPACK partition, and most of them end by retracing the whole partition
# with fake tensors whether or not they changed anything: on a Llama graph that retrace, not the rewriting, is
# about half of the lowering time (measured: SmolLM2 width, 8da4w, 2 layers: 19.7 of 44 s in those passes).
# A pass whose operators are absent from a partition has nothing to rewrite, so it is skipped there. The
# decision is made for each pass on the graph as the passes before it left it (an earlier pass can create an
# operator a later one rewrites). Which operators each pass acts on is read from its source (ExecuTorch 1.5.1);
# a test checks that the programs come out byte for byte the same as with every pass.
# --------------------------------------------------------------------------------------------------------------

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
XNNPACK_ACTS_ON: dict[str, Callable[[set[str]], bool]] = {
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
XNNPACK_ACTS_ON_GRAPH: dict[str, Callable[[torch.fx.Graph], bool]] = {
    # Copies node.meta["custom"] from a q/dq node's parent: nothing to copy without it.
    "PropagateCustomMetaPass": _has_custom_meta,
    # Turns the dim-order ops back into memory-format ones.
    "DimOrderOpsRevertPass": _has_dim_order_op,
    "ConstPropPass": _has_constant_call,
}


def can_change(pass_: type, graph: torch.fx.Graph) -> bool:
    """Whether `pass_` has anything to rewrite in `graph` as it is now."""
    if pass_.__name__ in XNNPACK_ACTS_ON_GRAPH:
        return XNNPACK_ACTS_ON_GRAPH[pass_.__name__](graph)
    return XNNPACK_ACTS_ON.get(pass_.__name__, lambda _: True)(_graph_ops(graph))


def xnnpack_passes_for(passes: list[type], graph: torch.fx.Graph) -> list[type]:
    """The passes that can change this graph as it is, in their order (before any of them runs)."""
    return [p for p in passes if can_change(p, graph)]


@contextlib.contextmanager
def pruned_xnnpack_passes(enabled: bool = True) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------------------------
# 4. Partition copies that share the weights
#
# Backend preprocessing on copies of the partitions that share the weights instead of duplicating them.
#
# Before a backend preprocesses, ExecuTorch deep-copies every partition's program, all partitions at once and
# weights included, in case the backend rewrites the graph. The backend then serializes its own copy of the
# weights, so a 1B fp32 export held three: the model's, ExecuTorch's copies and XNNPACK's (15.3 GiB peak). Here
# the graphs are still copied but the weight tensors are shared: XNNPACK only reads them. The programs come out
# byte for byte the same (tests/test_mobile_8da4w.py).
# --------------------------------------------------------------------------------------------------------------

def copy_sharing_weights(cls, program, compile_specs):
    """`BackendDetails.copy_exported_program_for_preprocess`, with the program's tensors passed through."""
    tensors = [*program.state_dict.values(), *program.constants.values()]
    memo = {id(t): t for t in tensors if isinstance(t, torch.Tensor)}  # deepcopy returns memo hits as they are
    return copy.deepcopy(program, memo)


@contextlib.contextmanager
def weights_shared_with(backend_cls: type) -> Iterator[None]:
    """While active, `backend_cls.preprocess` receives partitions whose weights are the caller's own tensors."""
    own = backend_cls.__dict__.get("copy_exported_program_for_preprocess")  # None: inherited from BackendDetails
    backend_cls.copy_exported_program_for_preprocess = classmethod(copy_sharing_weights)
    try:
        yield
    finally:
        if own is None:
            del backend_cls.copy_exported_program_for_preprocess
        else:
            backend_cls.copy_exported_program_for_preprocess = own


# --------------------------------------------------------------------------------------------------------------
# 5. Delegates' weights released before emission
# --------------------------------------------------------------------------------------------------------------

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
