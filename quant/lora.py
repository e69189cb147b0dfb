"""LoRA adapters kept beside a (quantized) linear, unmerged, with Meta's QLoRA tensor names:
`<linear>.weight` stays the backbone weight, `<linear>.adaptor.A.weight` / `.adaptor.B.weight` are added."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from handheld.quant.mobile_8da4w import block_linears


class LoRAAdaptor(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.B.weight)  # a fresh adapter starts as the identity change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.scale = scale
        self.adaptor = LoRAAdaptor(base.in_features, base.out_features, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + self.scale * self.adaptor(x)


def add_lora(model: nn.Module, rank: int, scale: float) -> nn.Module:
    """Wrap every transformer-block linear with an adapter (the classifier keeps none, as in Meta's files)."""
    for name, linear in block_linears(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(linear, rank, scale))
    return model
