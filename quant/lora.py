"""LoRA adapters kept beside a (quantized) linear, unmerged, with Meta's QLoRA tensor names:
`<linear>.weight` stays the backbone weight, `<linear>.adaptor.A.weight` / `.adaptor.B.weight` are added."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from handheld.core.errors import HandheldError
from handheld.quant.linears import block_linears


class LoRAAdaptor(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        bound = in_features**-0.5  # nn.Linear's own init range, drawn from a seeded generator
        with torch.no_grad():
            self.A.weight.uniform_(-bound, bound, generator=generator)
        nn.init.zeros_(self.B.weight)  # a fresh adapter starts as the identity change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))


class LoRALinear(nn.Module):
    """y = backbone(x) + scale * B(A(x)). A fake-quantized backbone (QAT) keeps its fake quantizers, so
    the adapters learn against the numerics that ship; the adapters themselves stay unquantized."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator | None = None):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.scale = scale
        self.activation_fake_quantizer = getattr(base, "activation_fake_quantizer", None)
        self.weight_fake_quantizer = getattr(base, "weight_fake_quantizer", None)
        self.adaptor = LoRAAdaptor(base.in_features, base.out_features, rank, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone_x, weight = x, self.weight
        if self.activation_fake_quantizer is not None:
            backbone_x = self.activation_fake_quantizer(x)
        if self.weight_fake_quantizer is not None:
            weight = self.weight_fake_quantizer(weight)
        return F.linear(backbone_x, weight) + self.scale * self.adaptor(x)


def check_rank(model: nn.Module, rank: int) -> None:
    narrowest = min(min(m.in_features, m.out_features) for m in block_linears(model).values())
    if not 1 <= rank <= narrowest:
        raise HandheldError(f"LoRA rank {rank} does not fit: it must be between 1 and the narrowest linear's width {narrowest}")


def freeze_all_but_adapters(model: nn.Module) -> list[nn.Parameter]:
    """Phase `lora`: the backbone stops moving; returns the adapter parameters to train."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(".adaptor." in name)
        if param.requires_grad:
            trainable.append(param)
    return trainable


def add_lora(model: nn.Module, rank: int, scale: float, seed: int = 0) -> nn.Module:
    """Wrap every transformer-block linear with an adapter (the classifier keeps none, as in Meta's files)."""
    check_rank(model, rank)
    generator = torch.Generator().manual_seed(seed)
    for name, linear in block_linears(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(linear, rank, scale, generator))
    return model
