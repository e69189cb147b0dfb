"""Which XNNPACK passes handheld skips per partition, and why that cannot change a program."""

import torch

from handheld.export.backends import patch_xnnpack_passes


def _graph(*ops):
    """A graph calling each op once on one input."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    for op in ops:
        x = graph.call_function(op, (x,))
    graph.output(x)
    return graph


def test_pattern_passes_need_operators_every_pattern_holds():
    """The two subgraph-matching passes are skipped when an operator that every one of their patterns contains
    is absent: read from ExecuTorch's own patterns, so a new pattern without it fails here."""
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    for needs, graphs in ((patch_xnnpack_passes.UPSAMPLE_PATTERN_NEEDS, list(bilinear_2d.get_graphs_dict())),
                          (patch_xnnpack_passes.SDPA_PATTERN_NEEDS, sdpa.get_graphs())):
        assert graphs
        for pattern in graphs:
            assert set(needs) <= patch_xnnpack_passes._graph_ops(pattern.graph)


def test_passes_kept_in_order_and_only_skipped_without_their_operators():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.dialects._ops import ops as exir_ops

    every = XNNPACKPassManager(None).passes  # the default list, in ExecuTorch's order
    plain = patch_xnnpack_passes.passes_for(every, _graph(exir_ops.edge.aten.linear.default))
    names = [p.__name__ for p in plain]
    pruned = {*patch_xnnpack_passes._ACTS_ON, *patch_xnnpack_passes._ACTS_ON_GRAPH}
    assert names == [p.__name__ for p in every if p.__name__ not in pruned]
    assert "ConvertToLinearPass" in names and "FuseActivationPass" not in names
    with_relu = patch_xnnpack_passes.passes_for(every, _graph(exir_ops.edge.aten.linear.default, exir_ops.edge.aten.relu.default))
    assert "FuseActivationPass" in [p.__name__ for p in with_relu]
    assert patch_xnnpack_passes.passes_for(every, _graph(exir_ops.edge.aten.max.dim)) != plain  # overloads are coarsened


def test_the_patch_is_undone():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    original = XNNPACKPassManager.transform
    with patch_xnnpack_passes.pruned_passes():
        assert XNNPACKPassManager.transform is not original
    assert XNNPACKPassManager.transform is original
    with patch_xnnpack_passes.pruned_passes(enabled=False):
        assert XNNPACKPassManager.transform is original


def test_each_pass_is_judged_on_the_graph_the_passes_before_it_left(monkeypatch):
    """An earlier pass can create what a later one rewrites: the later one must then run."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.dialects._ops import ops as exir_ops

    ran = []

    class AddsRelu:  # stands for a pass that leaves a new operator behind
        pass

    class FuseActivationPass:  # same name as XNNPACK's: skipped unless a relu or hardtanh is present
        pass

    def run_one(self):
        (pass_,) = self.passes
        ran.append(pass_.__name__)
        if pass_ is AddsRelu:
            return _Program(_graph(exir_ops.edge.aten.linear.default, exir_ops.edge.aten.relu.default))
        return self._exported_program

    monkeypatch.setattr(XNNPACKPassManager, "transform", run_one)
    manager = XNNPACKPassManager(_Program(_graph(exir_ops.edge.aten.linear.default)), [FuseActivationPass, AddsRelu,
                                                                                      FuseActivationPass])
    with patch_xnnpack_passes.pruned_passes():
        result = manager.transform()
    assert ran == ["AddsRelu", "FuseActivationPass"]  # skipped before the relu existed, run after
    assert manager.passes == [FuseActivationPass, AddsRelu, FuseActivationPass]
    assert "aten.relu" in patch_xnnpack_passes._graph_ops(result.graph)


class _Program:
    def __init__(self, graph):
        self.graph = graph


def test_lowered_program_lets_the_float_weights_go(odd_checkpoint):
    """Once XNNPACK has serialized its copy, the model's float weights are freed before emission (export's peak
    memory): nothing but the delegate kept them, and releasing the delegate's reference drops them (the
    program stays byte for byte the same: test_mobile_8da4w)."""
    import gc
    import weakref

    from handheld.core.checkpoints import read_checkpoint
    from handheld.export.backends import get_backend
    from handheld.export.program import lower, release_delegated_weights
    from handheld.quant.schemes import prepare_model

    prepared = prepare_model(read_checkpoint(odd_checkpoint), "fp32", max_seq_len=16, full_logits=False)
    weight = weakref.ref(prepared.model.layers[0].feed_forward.w1.weight)
    lowered = lower(prepared.model, prepared.scheme, get_backend("xnnpack"), 16, log=lambda _: None)
    del prepared
    gc.collect()
    assert weight() is not None, "the delegate holds the weight it was made from"
    release_delegated_weights(lowered.program)
    gc.collect()
    assert weight() is None


def test_graph_judged_passes_run_when_their_targets_are_there():
    """PropagateCustomMetaPass copies node.meta["custom"]; DimOrderOpsRevertPass rewrites dim-order ops;
    ConstPropPass folds calls on constants only: each runs once the graph has one."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.dialects._ops import ops as exir_ops

    every = XNNPACKPassManager(None).passes
    graph = _graph(exir_ops.edge.aten.linear.default)
    assert not {"PropagateCustomMetaPass", "DimOrderOpsRevertPass"} & {p.__name__ for p in patch_xnnpack_passes.passes_for(every, graph)}
    next(n for n in graph.nodes if n.op == "call_function").meta["custom"] = {"anything": 1}
    assert "PropagateCustomMetaPass" in {p.__name__ for p in patch_xnnpack_passes.passes_for(every, graph)}
    with_dim_order = _graph(exir_ops.edge.dim_order_ops._to_dim_order_copy.default)
    assert "DimOrderOpsRevertPass" in {p.__name__ for p in patch_xnnpack_passes.passes_for(every, with_dim_order)}
    assert "ConstPropPass" not in {p.__name__ for p in patch_xnnpack_passes.passes_for(every, graph)}
    constant = torch.fx.Graph()
    table = constant.get_attr("table")
    constant.output(constant.call_function(exir_ops.edge.aten.mul.Tensor, (table, table)))
    assert "ConstPropPass" in {p.__name__ for p in patch_xnnpack_passes.passes_for(every, constant)}
