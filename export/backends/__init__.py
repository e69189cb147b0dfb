"""The backends a model can be lowered to, as one explicit table.

Each backend module exposes `partitioners(scheme)`; vendor SDKs are imported inside it, lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from handheld.core.errors import HandheldError
from handheld.export.backends import xnnpack
from handheld.quant.schemes import Scheme


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    partitioners: Callable[[Scheme], list[Any]]


BACKENDS: dict[str, Backend] = {
    "xnnpack": Backend("xnnpack", "XNNPACK: every Arm and x86 CPU", xnnpack.partitioners),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise HandheldError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]
