"""The Llama 3.2 mobile scheme as a transform: 4-bit groupwise linears with 8-bit dynamic activations
("8da4w"), an 8-bit per-channel classifier (8-bit dynamic activations) and an 8-bit per-channel embedding.
`classifier_bits=4` gives the classifier 4-bit groups like the linears, as ExecuTorch's `export_llm` CLI does:
on a 128k vocabulary it is a fifth of the bytes a decoded token reads, so it trades quality for speed.

Quantization math is torchao's (`quantize_` configs); this module only decides what gets which config.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from handheld.core.defaults import GROUP_SIZE
from handheld.core.errors import HandheldError
from handheld.quant.linears import CLASSIFIER, check_group_size, untie_embedding


CLASSIFIER_BITS = (8, 4)


def scheme_configs(group_size: int, classifier_bits: int = 8) -> list[tuple[object, Callable[[nn.Module, str], bool]]]:
    """The scheme as (torchao config, which modules get it) pairs; QAT wraps the same configs."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    linear_4bit = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    classifier = (Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
                  if classifier_bits == 8 else linear_4bit)
    embedding_8bit = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return [
        (linear_4bit, lambda m, name: isinstance(m, nn.Linear) and name != CLASSIFIER),
        (classifier, lambda m, name: name == CLASSIFIER),
        (embedding_8bit, lambda m, name: isinstance(m, nn.Embedding)),
    ]


def quantize_8da4w(model: nn.Module, group_size: int = GROUP_SIZE, classifier_bits: int = 8) -> nn.Module:
    from torchao.quantization import quantize_

    check_group_size(model, group_size)
    if classifier_bits == 4 and model.output.in_features % group_size:
        raise HandheldError(f"--group-size {group_size} does not divide the classifier's input width {model.output.in_features}")
    model = untie_embedding(_widen_unquantized(model))
    for config, selects in scheme_configs(group_size, classifier_bits):
        quantize_(model, config, filter_fn=_widened_when_selected(selects))
    return model


def _widen_unquantized(model: nn.Module) -> nn.Module:
    """float32 for what stays float (norm gains); the weights torchao quantizes are widened one by one."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.dtype != torch.float32:
                setattr(module, name, nn.Parameter(param.detach().float(), requires_grad=param.requires_grad))
    return model


def _widened_when_selected(selects: Callable[[nn.Module, str], bool]) -> Callable[[nn.Module, str], bool]:
    """torchao asks this right before quantizing a module: widen its weight to float32 then, so a 16-bit
    checkpoint never becomes a whole float32 model (the scheme's math is on float32 weights, as before)."""
    def select(module: nn.Module, name: str) -> bool:
        if not selects(module, name):
            return False
        if module.weight.dtype != torch.float32:
            module.weight = nn.Parameter(module.weight.detach().float(), requires_grad=module.weight.requires_grad)
        return True
    return select
