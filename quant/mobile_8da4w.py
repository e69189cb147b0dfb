"""The Llama 3.2 mobile scheme as a transform: 4-bit groupwise linears with 8-bit dynamic activations
("8da4w"), an 8-bit per-channel classifier (8-bit dynamic activations) and an 8-bit per-channel embedding.

Quantization math is torchao's (`quantize_` configs); this module only decides what gets which config.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from handheld.core.defaults import GROUP_SIZE
from handheld.quant.linears import CLASSIFIER, check_group_size, untie_embedding


def scheme_configs(group_size: int) -> list[tuple[object, Callable[[nn.Module, str], bool]]]:
    """The scheme as (torchao config, which modules get it) pairs; QAT wraps the same configs."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    linear_4bit = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    classifier_8bit = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    embedding_8bit = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return [
        (linear_4bit, lambda m, name: isinstance(m, nn.Linear) and name != CLASSIFIER),
        (classifier_8bit, lambda m, name: name == CLASSIFIER),
        (embedding_8bit, lambda m, name: isinstance(m, nn.Embedding)),
    ]


def quantize_8da4w(model: nn.Module, group_size: int = GROUP_SIZE) -> nn.Module:
    from torchao.quantization import quantize_

    check_group_size(model, group_size)
    model = untie_embedding(model)
    for config, selects in scheme_configs(group_size):
        quantize_(model, config, filter_fn=selects)
    return model
