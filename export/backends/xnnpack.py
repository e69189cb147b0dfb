"""XNNPACK: the CPU backend. One partitioner for every precision (fp32, bf16, dynamically quantized
linears), so quantized linears merge with their neighbours into few, large partitions: each partition
costs a deep copy and XNNPACK's whole pass pipeline at export, and a delegate call at run time."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from handheld.export.backends import executorch_patches as patches
from handheld.quant.schemes import Scheme


def partitioners(scheme: Scheme) -> list[Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    bf16 = scheme.dtype == torch.bfloat16
    # Without enable_bf16 every bf16 node falls back to ExecuTorch's portable kernels (~20x slower).
    return [XnnpackPartitioner(enable_bf16=bf16)]


@contextlib.contextmanager
def lowering() -> Iterator[None]:
    """Held while a program is lowered to XNNPACK: decompositions and edge passes with nothing to rewrite skipped,
    XNNPACK's passes pruned to those that can change a partition (export time), its partitions copied without
    their weights (export memory)."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    with patches.skipped_empty_decompositions(), patches.pruned_edge_passes(), patches.pruned_xnnpack_passes(), \
            patches.weights_shared_with(XnnpackBackend):
        yield
