"""The Llama 3.2 mobile scheme as a transform: 4-bit groupwise linears with 8-bit dynamic activations
("8da4w"), an 8-bit per-channel classifier (8-bit dynamic activations) and an 8-bit per-channel embedding.

Quantization math is torchao's (`quantize_` configs); this module only decides what gets which config.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from handheld.errors import HandheldError

CLASSIFIER = "output"


def untie_embedding(model: nn.Module) -> nn.Module:
    """Give the classifier its own weight: it is quantized differently from the embedding."""
    if model.output.weight is model.tok_embeddings.weight:
        model.output.weight = nn.Parameter(model.tok_embeddings.weight.detach().clone())
    return model


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every transformer-block linear (everything but the classifier)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != CLASSIFIER}


def check_group_size(model: nn.Module, group_size: int) -> None:
    if group_size <= 0:
        raise HandheldError(f"--group-size must be positive, got {group_size}")
    for name, linear in block_linears(model).items():
        if linear.in_features % group_size:
            raise HandheldError(
                f"--group-size {group_size} does not divide the input width {linear.in_features} of layer {name}"
            )


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


def quantize_8da4w(model: nn.Module, group_size: int = 32) -> nn.Module:
    from torchao.quantization import quantize_

    check_group_size(model, group_size)
    model = untie_embedding(model)
    for config, selects in scheme_configs(group_size):
        quantize_(model, config, filter_fn=selects)
    return model


# XNNPACK stores 4-bit group scales as bf16 (torchao keeps them fp32 in eager).
GROUP_SCALE_BYTES = 2


def weight_bytes_by_kind(model: nn.Module) -> dict[str, int]:
    """Bytes of stored weights by kind, as XNNPACK packs them: 4-bit values two to a byte, bf16 group scales.
    "embedding" is a float table not shared with the classifier (decode reads one row of it per token)."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    split = {"4-bit linears": 0, "scales": 0, "8-bit embedding": 0, "8-bit classifier": 0, "embedding": 0, "other": 0}
    # A tied table is listed once (as the embedding) but read whole by the classifier every token.
    tied = model.tok_embeddings.weight is getattr(model, CLASSIFIER).weight
    for name, param in model.named_parameters():
        if not isinstance(param, IntxUnpackedToInt8Tensor):
            untied_embedding = name.startswith("tok_embeddings") and not tied
            split["embedding" if untied_embedding else "other"] += param.numel() * param.element_size()
            continue
        bits = 4 if param.target_dtype == torch.int4 else 8
        values = param.qdata.numel() * bits // 8
        if name.startswith("tok_embeddings"):
            split["8-bit embedding"] += values
        elif name.startswith(CLASSIFIER + "."):
            split["8-bit classifier"] += values
        else:
            split["4-bit linears"] += values
        scale_bytes = GROUP_SCALE_BYTES if bits == 4 else param.scale.element_size()
        split["scales"] += param.scale.numel() * scale_bytes
    return split
