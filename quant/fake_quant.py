"""The 8da4w scheme as fake quantization (torchao QAT): the float model computes exactly what the
quantized one will, with straight-through gradients. `prepare_fake_quant` for training;
`handheld.quant.prequantized.quantized_model` converts to ship.

Both use the configs of `mobile_8da4w.scheme_configs`, so what training sees is what ships. The 4-bit linears'
scales follow a scale rule (quant/scale_rules.py): `absmax` is torchao's own fake quantizer (scales recomputed
from the weights every step); any other rule, the export's default `weighted` included, picks each group's scale
once from the starting weights and keeps it (`FrozenScales`), and `trained_int_weights` hands the trained weights
rounded on those scales to the converter: exactly the integers training saw.
"""

from __future__ import annotations

import torch
from torch import nn

from handheld.core.defaults import GROUP_SIZE
from handheld.quant.linears import check_group_size, input_importance, untie_embedding
from handheld.quant.mobile_8da4w import scheme_configs
from handheld.quant.scale_rules import QMAX, QMIN, check_scale_rule, quantize_groups


def _apply(model: nn.Module, group_size: int, step: str) -> nn.Module:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    for config, selects in scheme_configs(group_size):
        quantize_(model, QATConfig(config, step=step), filter_fn=selects)
    return model


class FrozenScales(nn.Module):
    """A 4-bit groupwise weight fake quantizer whose scales were chosen once by a scale rule: the weights move,
    the grid stays (a straight-through gradient)."""

    def __init__(self, scales: torch.Tensor):
        super().__init__()
        # Not saved: a resumed job prepares the same starting weights, so it recomputes the same scales.
        self.register_buffer("scales", scales, persistent=False)

    def integers(self, weight: torch.Tensor) -> torch.Tensor:
        expanded = self.scales.repeat_interleave(weight.shape[1] // self.scales.shape[1], dim=1)
        return torch.clamp(torch.round(weight / expanded), QMIN, QMAX), expanded

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        values, expanded = self.integers(weight)
        return weight + (values * expanded - weight).detach()


def prepare_fake_quant(model: nn.Module, group_size: int = GROUP_SIZE, scale_rule: str = "absmax") -> nn.Module:
    """Every linear and the embedding fake-quantized as 8da4w will quantize them (weights stay float); the
    4-bit linears' scales by `scale_rule`."""
    check_group_size(model, group_size)
    check_scale_rule(scale_rule)
    model = _apply(untie_embedding(model), group_size, "prepare")
    if scale_rule != "absmax":
        _freeze_4bit_scales(model, group_size, scale_rule)
    return model


@torch.no_grad()
def _freeze_4bit_scales(model: nn.Module, group_size: int, scale_rule: str) -> None:
    selects = scheme_configs(group_size)[0][1]
    for name, module in model.named_modules():
        if hasattr(module, "weight_fake_quantizer") and selects(module, name):
            _, scales = quantize_groups(module.weight, group_size, scale_rule, input_importance(model, name))
            module.weight_fake_quantizer = FrozenScales(scales)


@torch.no_grad()
def trained_int_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(integers, scales) of every 4-bit linear trained under `FrozenScales`, by module name."""
    found = {}
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_fake_quantizer", None)
        if isinstance(quantizer, FrozenScales):
            values, _ = quantizer.integers(module.weight.detach().float())
            found[name] = (values.to(torch.int8).cpu(), quantizer.scales.detach().float().cpu())
    return found



def fake_quantize_tokens_int8(x: torch.Tensor) -> torch.Tensor:
    """8-bit asymmetric per-token quantization (the scheme's dynamic activations; the range always holds 0,
    as torchao's does), with a straight-through gradient."""
    low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / 255).clamp(min=torch.finfo(torch.float32).eps)
    zero = torch.round(-128 - low / scale)
    q = torch.clamp(torch.round(x / scale) + zero, -128, 127)
    return x + ((q - zero) * scale - x).detach()


def prepare_activation_fake_quant(model: nn.Module) -> nn.Module:
    """Only the linears' inputs fake-quantized (8 bits per token), weights left in float: how SpinQuant learns
    its rotations when GPTQ will quantize the weights afterwards (the paper's W4A8 GPTQ variant)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_pre_hook(lambda _, args: (fake_quantize_tokens_int8(args[0]), *args[1:]))
    return model
