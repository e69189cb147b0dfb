"""The one door to torchao's quantized-tensor internals: reading and replacing a quantized weight's integers and
scales. torchao's `quantize_` builds the structure XNNPACK lowers; handheld fills it with integers chosen by its
own rules (scale rules, GPTQ, a pre-quantized checkpoint). A torchao bump that renames these touches this file only.
"""

from __future__ import annotations

import torch


def is_int_weight(param: object) -> bool:
    from torchao.quantization import IntxUnpackedToInt8Tensor

    return isinstance(param, IntxUnpackedToInt8Tensor)


@torch.no_grad()
def set_int_weight(param: torch.Tensor, values: torch.Tensor, scales: torch.Tensor) -> None:
    """Replace a torchao quantized weight's integers (int8 holding the scheme's range) and scales, in its layout."""
    param.qdata.copy_(values.to(param.qdata.device))
    param.scale.copy_(scales.to(param.scale.device, param.scale.dtype).reshape(param.scale.shape))


def int_weight(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers, scales) of a torchao quantized weight, as stored."""
    return param.qdata, param.scale


def int_bits(param: torch.Tensor) -> int:
    """The scheme's bit width of a torchao quantized weight (its integers travel as int8)."""
    return 4 if param.target_dtype == torch.int4 else 8
