"""handheld's patches to ExecuTorch (export/backends/executorch_patches.py). Which of ExecuTorch's edge passes and decompositions handheld skips, and why that cannot change a program (the
byte-for-byte check of whole programs is tests/test_mobile_8da4w.py::test_export_savings_write_the_same_program)."""

import torch

from handheld.export.backends import executorch_patches as patches


def _graph(op, *args, **kwargs):
    """x -> op(x, *args, **kwargs): one call, its input's value recorded as export records it."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.zeros(2, 3)
    graph.output(graph.call_function(op, (x, *args), kwargs))
    return graph


def test_each_pass_named_is_one_of_executorchs_and_runs_on_its_target():
    """Named after real pass classes (a rename in a version bump fails here), each judged on its own target."""
    from executorch.exir import passes
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.passes import memory_format_ops_pass, remove_mixed_type_operators, replace_broken_ops_with_function_ops_pass, scalar_to_tensor_pass, sym_to_tensor_pass
    from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass

    modules = [passes, memory_format_ops_pass, remove_mixed_type_operators, replace_broken_ops_with_function_ops_pass,
               scalar_to_tensor_pass, sym_to_tensor_pass]
    known = {name for module in modules for name in dir(module)} | {NormalizeTransposePass.__name__}
    assert set(patches.EDGE_ACTS_ON) <= known
    acts = patches.EDGE_ACTS_ON
    aten = torch.ops.aten
    plain = _graph(aten.relu.default)
    assert not any(acts[name](plain) for name in acts)
    assert acts["NormalizeTransposePass"](_graph(aten.t.default))
    assert acts["ReplaceBrokenOpsWithFunctionalOpsPass"](_graph(aten.view.default, [6]))
    assert acts["ScalarToTensorPass"](_graph(aten.mul.Tensor, 0.5))  # a number where `other: Tensor` goes
    assert not acts["ScalarToTensorPass"](_graph(aten.mul.Scalar, 0.5))  # the schema takes a Scalar there
    assert acts["RemoveMixedTypeOperators"](_graph(aten.mul.Tensor, 0.5))
    assert acts["MemoryFormatOpsPass"](_graph(exir_ops.edge.aten._to_copy.default, dtype=torch.float16))
    assert acts["LegalizePortableDimOrderPass"](_graph(exir_ops.edge.aten.mean.dim, [-1]))


def test_mixed_types_and_symbols_are_read_from_the_recorded_values():
    aten = torch.ops.aten
    graph = torch.fx.Graph()
    x, y, n = graph.placeholder("x"), graph.placeholder("y"), graph.placeholder("n")
    x.meta["val"], y.meta["val"] = torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)
    same = graph.call_function(aten.add.Tensor, (x, x))
    same.meta["val"] = torch.zeros(2)
    graph.output(same)
    acts = patches.EDGE_ACTS_ON
    assert not acts["RemoveMixedTypeOperators"](graph) and not acts["SymToTensorPass"](graph)
    with graph.inserting_before(list(graph.nodes)[-1]):
        graph.call_function(aten.add.Tensor, (x, y))
    assert acts["RemoveMixedTypeOperators"](graph)
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    n.meta["val"] = ShapeEnv().create_unbacked_symint()
    with graph.inserting_before(list(graph.nodes)[-1]):
        graph.call_function(aten.mul.Tensor, (x, n))
    assert acts["SymToTensorPass"](graph)


def test_the_patches_are_undone():
    from torch.export import ExportedProgram
    from torch.fx.passes.infra.pass_base import PassBase

    call, decompose = PassBase.__call__, ExportedProgram.run_decompositions
    with patches.pruned_edge_passes(), patches.skipped_empty_decompositions():
        assert PassBase.__call__ is not call and ExportedProgram.run_decompositions is not decompose
    assert PassBase.__call__ is call and ExportedProgram.run_decompositions is decompose


def test_a_decomposition_runs_unless_the_program_is_functional_and_holds_none_of_its_operators():
    class Model(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.silu(x) + x.size(0)

    exported = torch.export.export(Model(), (torch.zeros(3),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    table = torch.export.default_decompositions()
    silu, sym_size_only = ({op: table[op]} for op in (torch.ops.aten.silu.default, torch.ops.aten.sym_size.int))
    with patches.skipped_empty_decompositions():
        assert exported.run_decompositions(sym_size_only) is not exported  # not yet functional: it runs
        functional = exported.run_decompositions({})
        assert functional.run_decompositions(sym_size_only) is functional  # only size queries: skipped
        decomposed = functional.run_decompositions(silu)
        assert decomposed is not functional
        assert "silu" not in str(decomposed.graph_module.code) and "sigmoid" in str(decomposed.graph_module.code)


# XNNPACK's per-partition passes: which ones are skipped per partition, and why that cannot change a program.

def _chain_graph(*ops):
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

    for needs, graphs in ((patches.UPSAMPLE_PATTERN_NEEDS, list(bilinear_2d.get_graphs_dict())),
                          (patches.SDPA_PATTERN_NEEDS, sdpa.get_graphs())):
        assert graphs
        for pattern in graphs:
            assert set(needs) <= patches._graph_ops(pattern.graph)


def test_passes_kept_in_order_and_only_skipped_without_their_operators():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.dialects._ops import ops as exir_ops

    every = XNNPACKPassManager(None).passes  # the default list, in ExecuTorch's order
    plain = patches.xnnpack_passes_for(every, _chain_graph(exir_ops.edge.aten.linear.default))
    names = [p.__name__ for p in plain]
    pruned = {*patches.XNNPACK_ACTS_ON, *patches.XNNPACK_ACTS_ON_GRAPH}
    assert names == [p.__name__ for p in every if p.__name__ not in pruned]
    assert "ConvertToLinearPass" in names and "FuseActivationPass" not in names
    with_relu = patches.xnnpack_passes_for(every, _chain_graph(exir_ops.edge.aten.linear.default, exir_ops.edge.aten.relu.default))
    assert "FuseActivationPass" in [p.__name__ for p in with_relu]
    assert patches.xnnpack_passes_for(every, _chain_graph(exir_ops.edge.aten.max.dim)) != plain  # overloads are coarsened


def test_the_xnnpack_pass_patch_is_undone():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    original = XNNPACKPassManager.transform
    with patches.pruned_xnnpack_passes():
        assert XNNPACKPassManager.transform is not original
    assert XNNPACKPassManager.transform is original
    with patches.pruned_xnnpack_passes(enabled=False):
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
            return _Program(_chain_graph(exir_ops.edge.aten.linear.default, exir_ops.edge.aten.relu.default))
        return self._exported_program

    monkeypatch.setattr(XNNPACKPassManager, "transform", run_one)
    manager = XNNPACKPassManager(_Program(_chain_graph(exir_ops.edge.aten.linear.default)), [FuseActivationPass, AddsRelu,
                                                                                      FuseActivationPass])
    with patches.pruned_xnnpack_passes():
        result = manager.transform()
    assert ran == ["AddsRelu", "FuseActivationPass"]  # skipped before the relu existed, run after
    assert manager.passes == [FuseActivationPass, AddsRelu, FuseActivationPass]
    assert "aten.relu" in patches._graph_ops(result.graph)


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
    from handheld.export.program import lower
    from handheld.export.backends.executorch_patches import release_delegated_weights
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
    graph = _chain_graph(exir_ops.edge.aten.linear.default)
    assert not {"PropagateCustomMetaPass", "DimOrderOpsRevertPass"} & {p.__name__ for p in patches.xnnpack_passes_for(every, graph)}
    next(n for n in graph.nodes if n.op == "call_function").meta["custom"] = {"anything": 1}
    assert "PropagateCustomMetaPass" in {p.__name__ for p in patches.xnnpack_passes_for(every, graph)}
    with_dim_order = _chain_graph(exir_ops.edge.dim_order_ops._to_dim_order_copy.default)
    assert "DimOrderOpsRevertPass" in {p.__name__ for p in patches.xnnpack_passes_for(every, with_dim_order)}
    assert "ConstPropPass" not in {p.__name__ for p in patches.xnnpack_passes_for(every, graph)}
    constant = torch.fx.Graph()
    table = constant.get_attr("table")
    constant.output(constant.call_function(exir_ops.edge.aten.mul.Tensor, (table, table)))
    assert "ConstPropPass" in {p.__name__ for p in patches.xnnpack_passes_for(every, constant)}
