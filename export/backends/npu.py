"""What an NPU backend supplies to handheld: its schemes, its chips, its SDK check and its lowering.

An NPU runs integer activations with ranges fixed at export, so its schemes are PT2E quantizers applied to
an exported graph and calibrated on text (`handheld.export.npu` runs them), not eager transforms like the
CPU's. Everything up to lowering runs without the vendor SDK; lowering needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from handheld.core.errors import HandheldError


@dataclass(frozen=True)
class NpuScheme:
    name: str
    description: str
    quantizer: Callable[[str], Any]  # chip -> a PT2E Quantizer (built lazily: it imports ExecuTorch's backend code)


@dataclass(frozen=True)
class NpuSupport:
    schemes: dict[str, NpuScheme]
    chips: dict[str, str]  # --soc value -> what it is
    default_chip: str
    # What lowering lacks on this machine, as one phrase (SDK, version, variable, wheel, Python), or None.
    missing_sdk: Callable[[], str | None]
    # (converted graph module, example inputs, chip, constant methods) -> an EdgeProgramManager with the delegate.
    lower: Callable[[Any, tuple, str, dict[str, Any]], Any]

    def scheme(self, backend: str, name: str | None) -> NpuScheme:
        if name not in self.schemes:
            raise HandheldError(f"backend {backend} needs --scheme, one of: {', '.join(self.schemes)}" if name is None
                                else f"unknown scheme {name!r} for backend {backend}; known: {', '.join(self.schemes)}")
        return self.schemes[name]

    def chip(self, backend: str, name: str | None) -> str:
        name = self.default_chip if name is None else name
        if name not in self.chips:
            raise HandheldError(f"unknown --soc {name!r} for backend {backend}; known: {', '.join(self.chips)}")
        return name
