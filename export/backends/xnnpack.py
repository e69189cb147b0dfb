"""XNNPACK: the CPU backend. One partitioner for every precision (fp32, bf16, dynamically quantized
linears), so quantized linears merge with their neighbours into few, large partitions: each partition
costs a deep copy and XNNPACK's whole pass pipeline at export, and a delegate call at run time."""

from __future__ import annotations

from typing import Any

import torch

from handheld.quant.schemes import Scheme


def partitioners(scheme: Scheme) -> list[Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    bf16 = scheme.dtype == torch.bfloat16
    # Without enable_bf16 every bf16 node falls back to ExecuTorch's portable kernels (~20x slower).
    return [XnnpackPartitioner(enable_bf16=bf16)]
