"""ExecuTorch's ATen-to-edge passes without the ones that have nothing to rewrite in this program.

Converting a program to the edge dialect (and emitting it) runs a dozen passes, and each one retraces the whole program with fake
tensors and symbolic shapes whether or not it changes a node: on SmolLM2 8da4w each retrace costs 7-10 s
(measured, 2-core VM), ~80 s in all. A pass whose rewrite has no target in the graph as the passes before it
left it is skipped. What each pass acts on is read from its source (ExecuTorch 1.5.1, `exir/passes/`), and
decided per node so that a doubt runs the pass; XNNPACK's own per-partition passes are pruned the same way in
patch_xnnpack_passes. A test checks that the programs come out byte for byte the same as with every pass
(tests/test_mobile_8da4w.py).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

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
ACTS_ON: dict[str, Callable[[torch.fx.Graph], bool]] = {
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
    """While active, a pass named in ACTS_ON returns the graph module unchanged when it has nothing to rewrite."""
    from torch.fx.passes.infra.pass_base import PassBase, PassResult

    original = PassBase.__call__

    def call(self, graph_module):
        acts_on = ACTS_ON.get(type(self).__name__)
        if acts_on is not None and not acts_on(graph_module.graph):
            return PassResult(graph_module, False)
        return original(self, graph_module)

    if enabled:
        PassBase.__call__ = call
    try:
        yield
    finally:
        PassBase.__call__ = original
