"""ExecuTorch's edge conversion without the decomposition retraces that have nothing to decompose.

`to_edge_transform_and_lower` calls `run_decompositions` three times for a partitioner that filters the
operators it keeps (XNNPACK's does): once to functionalize, once with the table minus the kept operators, and
once more with the whole table after the kept ones are hidden. Each call retraces the whole program with fake
tensors and symbolic shapes whether or not an operator in its table occurs: on SmolLM2 8da4w that is 81 s of a
258 s export (25 + 23 + 33 s, measured), and the last one finds nothing to decompose but `aten.sym_size.int`
(the dynamic token count's size queries, which a retrace derives again as they were). ExecuTorch 1.5.1 already
skips such a call on its other path ("safe to skip when none of those targets occur in the graph"); this does
the same on this one. A program is only passed through when it came out of an earlier `run_decompositions`
(already functional) and no node calls an operator of the table but `sym_size`. A test checks that the programs come out byte
for byte the same as without it (tests/test_mobile_8da4w.py).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch


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
