"""Numeric schemes a model can be exported with, as one explicit table.

A scheme is a transform `model -> model` applied to the eager float model before export, so the
same transformed model is the eager oracle for the `.pte`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from handheld.errors import HandheldError


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    dtype: torch.dtype  # activation dtype of the exported program
    transform: Callable[[nn.Module], nn.Module]


def _to_fp32(model: nn.Module) -> nn.Module:
    return model.float()


def _to_bf16(model: nn.Module) -> nn.Module:
    # RoPE angles stay float32: bf16 cos/sin lose too much precision at long positions.
    rope_tables = {name: buf for name, buf in model.named_buffers() if name.startswith("rope_")}
    model = model.to(torch.bfloat16)
    for name, buf in rope_tables.items():
        setattr(model, name, buf)
    return model


SCHEMES: dict[str, Scheme] = {
    "fp32": Scheme("fp32", "unquantized, float32", torch.float32, _to_fp32),
    "bf16": Scheme("bf16", "unquantized, bfloat16 weights and activations", torch.bfloat16, _to_bf16),
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise HandheldError(f"unknown scheme {name!r}; known schemes: {', '.join(SCHEMES)}")
    return SCHEMES[name]
