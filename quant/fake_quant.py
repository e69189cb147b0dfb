"""The 8da4w scheme as fake quantization (torchao QAT): the float model computes exactly what the
quantized one will, with straight-through gradients. `prepare` for training, `convert` to ship.

Both use the configs of `mobile_8da4w.scheme_configs`, so what training sees is what ships: converting a
prepared model gives the same integers and scales as quantizing its weights directly.
"""

from __future__ import annotations

from torch import nn

from handheld.quant.mobile_8da4w import check_group_size, scheme_configs, untie_embedding


def _apply(model: nn.Module, group_size: int, step: str) -> nn.Module:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    for config, selects in scheme_configs(group_size):
        quantize_(model, QATConfig(config, step=step), filter_fn=selects)
    return model


def prepare_fake_quant(model: nn.Module, group_size: int = 32) -> nn.Module:
    """Every linear and the embedding fake-quantized as 8da4w will quantize them (weights stay float)."""
    check_group_size(model, group_size)
    return _apply(untie_embedding(model), group_size, "prepare")


def convert_fake_quant(model: nn.Module, group_size: int = 32) -> nn.Module:
    """A prepared model to the real 8da4w structure (torchao quantized tensors), ready to export."""
    return _apply(model, group_size, "convert")
