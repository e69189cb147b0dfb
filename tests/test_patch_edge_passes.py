"""Which of ExecuTorch's edge passes and decompositions handheld skips, and why that cannot change a program (the
byte-for-byte check of whole programs is tests/test_mobile_8da4w.py::test_export_savings_write_the_same_program)."""

import torch

from handheld.export.backends import patch_edge_decompositions, patch_edge_passes


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
    assert set(patch_edge_passes.ACTS_ON) <= known
    acts = patch_edge_passes.ACTS_ON
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
    acts = patch_edge_passes.ACTS_ON
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
    with patch_edge_passes.pruned_edge_passes(), patch_edge_decompositions.skipped_empty_decompositions():
        assert PassBase.__call__ is not call and ExportedProgram.run_decompositions is not decompose
    assert PassBase.__call__ is call and ExportedProgram.run_decompositions is decompose


def test_a_decomposition_runs_unless_the_program_is_functional_and_holds_none_of_its_operators():
    class Model(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.silu(x) + x.size(0)

    exported = torch.export.export(Model(), (torch.zeros(3),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    table = torch.export.default_decompositions()
    silu, sym_size_only = ({op: table[op]} for op in (torch.ops.aten.silu.default, torch.ops.aten.sym_size.int))
    with patch_edge_decompositions.skipped_empty_decompositions():
        assert exported.run_decompositions(sym_size_only) is not exported  # not yet functional: it runs
        functional = exported.run_decompositions({})
        assert functional.run_decompositions(sym_size_only) is functional  # only size queries: skipped
        decomposed = functional.run_decompositions(silu)
        assert decomposed is not functional
        assert "silu" not in str(decomposed.graph_module.code) and "sigmoid" in str(decomposed.graph_module.code)
