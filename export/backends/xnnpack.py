"""XNNPACK: the CPU backend. Dynamically-quantized linears first, then everything else it can take."""

from __future__ import annotations

from typing import Any

import torch

from handheld.quant.schemes import Scheme


def partitioners(scheme: Scheme) -> list[Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )

    bf16 = scheme.dtype == torch.bfloat16
    # Without enable_bf16 every bf16 node falls back to ExecuTorch's portable kernels (~20x slower).
    return [XnnpackDynamicallyQuantizedPartitioner(enable_bf16=bf16), XnnpackPartitioner(enable_bf16=bf16)]
