"""The Llama 3.2 mobile scheme as a transform: 4-bit groupwise linears with 8-bit dynamic activations
("8da4w"), an 8-bit per-channel classifier (8-bit dynamic activations) and an 8-bit per-channel embedding.
`classifier_bits=4` gives the classifier 4-bit groups like the linears, as ExecuTorch's `export_llm` CLI does:
on a 128k vocabulary it is a fifth of the bytes a decoded token reads, so it trades quality for speed.

The structure is torchao's (`quantize_` configs: what XNNPACK lowers); this module decides what gets which
config and, for the 4-bit weights, which integers and scales fill it: a scale rule's (`quant/scale_rules.py`;
`absmax` is torchao's own and leaves its rounding untouched) or precomputed ones (GPTQ).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from handheld.core.defaults import GROUP_SIZE, SCALE_RULE
from handheld.core.errors import HandheldError
from handheld.quant.linears import CLASSIFIER, block_linears, check_group_size, input_importance, untie_embedding
from handheld.quant.scale_rules import check_scale_rule, quantize_groups
from handheld.quant.torchao_adapter import set_int_weight

IntWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # linear name -> (int8 values in [-8, 7], group scales)


CLASSIFIER_BITS = (8, 4)


def scheme_configs(group_size: int, classifier_bits: int = 8,
                   eight_bit: frozenset[str] = frozenset()) -> list[tuple[object, Callable[[nn.Module, str], bool]]]:
    """The scheme as (torchao config, which modules get it) pairs; QAT wraps the same configs. `eight_bit` names
    block linears kept at 8 bits per channel (mixed precision, quant/mixed_precision.py), like the classifier."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    linear_4bit = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    linear_8bit = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    classifier = linear_8bit if classifier_bits == 8 else linear_4bit
    embedding_8bit = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    return [
        (linear_4bit, lambda m, name: isinstance(m, nn.Linear) and name != CLASSIFIER and name not in eight_bit),
        (classifier, lambda m, name: name == CLASSIFIER),
        (linear_8bit, lambda m, name: isinstance(m, nn.Linear) and name in eight_bit),
        (embedding_8bit, lambda m, name: isinstance(m, nn.Embedding)),
    ]


def quantize_8da4w(model: nn.Module, group_size: int = GROUP_SIZE, classifier_bits: int = 8,
                   scale_rule: str = SCALE_RULE, int_weights: IntWeights | None = None,
                   eight_bit: frozenset[str] = frozenset()) -> nn.Module:
    """`int_weights` (e.g. GPTQ's) fill the 4-bit linears they name; the others round by `scale_rule`.
    `eight_bit`: block linears kept at 8 bits per channel (torchao's symmetric rounding)."""
    from torchao.quantization import quantize_

    check_group_size(model, group_size)
    check_scale_rule(scale_rule)
    if classifier_bits == 4 and model.output.in_features % group_size:
        raise HandheldError(f"--group-size {group_size} does not divide the classifier's input width {model.output.in_features}")
    unknown = sorted(eight_bit - set(block_linears(model)))
    if unknown:
        raise HandheldError(f"not block linears of this model: {', '.join(unknown)}")
    model = untie_embedding(_widen_unquantized(model))
    done = _round_4bit_linears(model, group_size, classifier_bits, scale_rule, int_weights or {}, eight_bit)
    for config, selects in scheme_configs(group_size, classifier_bits, eight_bit):
        quantize_(model, config, filter_fn=_widened_when_selected(lambda m, name: name not in done and selects(m, name)))
    return model


def _round_4bit_linears(model: nn.Module, group_size: int, classifier_bits: int, scale_rule: str,
                        int_weights: IntWeights, eight_bit: frozenset[str]) -> set[str]:
    """Quantize each 4-bit linear on its own (so only one float copy is ever extra) with our integers; returns
    their names. Under `absmax` without given integers, none: torchao's own rounding is that rule."""
    from torchao.quantization import quantize_

    if scale_rule == "absmax" and not int_weights:
        return set()
    config, selects = scheme_configs(group_size, classifier_bits, eight_bit)[0]
    four_bit = [(name, m) for name, m in model.named_modules()
                if selects(m, name) or (classifier_bits == 4 and name == CLASSIFIER)]
    for name, linear in four_bit:
        values, scales = int_weights.get(name) or quantize_groups(
            linear.weight.detach(), group_size, scale_rule, input_importance(model, name))
        quantize_(linear, config, filter_fn=_widened_when_selected(lambda m, _, target=linear: m is target))
        set_int_weight(linear.weight, values, scales)
    return {name for name, _ in four_bit}


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
