"""The 8da4w scheme as fake quantization (torchao QAT): the float model computes exactly what the
quantized one will, with straight-through gradients. `prepare` for training;
`handheld.quant.prequantized.quantized_model` converts to ship.

Both use the configs of `mobile_8da4w.scheme_configs`, so what training sees is what ships: the trained
weights quantize to exactly the integers and scales the fake quantizers computed with.
"""

from __future__ import annotations

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

