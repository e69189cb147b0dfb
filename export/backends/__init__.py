"""The backends a model can be lowered to, as one explicit table.

A CPU backend (XNNPACK) lowers eager schemes (`handheld.quant.schemes`) and supplies `partitioners(scheme)`.
An NPU backend (QNN, MediaTek) brings its own calibrated PT2E schemes, chips, SDK check and lowering
(`NpuSupport`, run by `handheld.export.npu`). Vendor SDKs are imported inside each backend module, lazily.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from handheld.core.errors import HandheldError
from handheld.export.backends import mediatek, qnn, xnnpack
from handheld.export.backends.npu import NpuSupport
from handheld.quant.schemes import Scheme


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    partitioners: Callable[[Scheme], list[Any]] | None = None  # CPU: lowers an eager scheme's model
    npu: NpuSupport | None = None  # NPU: calibrated schemes, quantized anywhere, lowered where the SDK is
    lowering: Callable[[], ContextManager[None]] = contextlib.nullcontext  # held while lowered and emitted


BACKENDS: dict[str, Backend] = {
    "xnnpack": Backend("xnnpack", "XNNPACK: every Arm and x86 CPU", partitioners=xnnpack.partitioners,
                       lowering=xnnpack.lowering),
    "qnn": Backend("qnn", "Qualcomm Hexagon NPU (QNN / QAIRT SDK)", npu=qnn.SUPPORT),
    "mediatek": Backend("mediatek", "MediaTek APU (NeuroPilot)", npu=mediatek.SUPPORT),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise HandheldError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]
