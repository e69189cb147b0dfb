"""The 8da4w scheme as fake quantization (torchao QAT): the float model computes exactly what the
quantized one will, with straight-through gradients. `prepare` for training;
`handheld.quant.prequantized.quantized_model` converts to ship.

Both use the configs of `mobile_8da4w.scheme_configs`, so what training sees is what ships: the trained
weights quantize to exactly the integers and scales the fake quantizers computed with.
"""

from __future__ import annotations

import torch
from torch import nn

from handheld.core.defaults import GROUP_SIZE
from handheld.quant.linears import check_group_size, untie_embedding
from handheld.quant.mobile_8da4w import scheme_configs


def _apply(model: nn.Module, group_size: int, step: str) -> nn.Module:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    for config, selects in scheme_configs(group_size):
        quantize_(model, QATConfig(config, step=step), filter_fn=selects)
    return model


def prepare_fake_quant(model: nn.Module, group_size: int = GROUP_SIZE) -> nn.Module:
    """Every linear and the embedding fake-quantized as 8da4w will quantize them (weights stay float)."""
    check_group_size(model, group_size)
    return _apply(untie_embedding(model), group_size, "prepare")



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
