"""Meta's pre-quantized checkpoint layout (Llama 3.2 SpinQuant_INT4_EO8 and QLORA_INT4_EO8): what the files hold.

This module checks a state dict against the layout; `handheld.quant.prequantized` builds models from it
and writes models into it.

`params.json` carries `quantization_args` (group size, spinquant flag) and, for QLoRA, `lora_args`
(rank, scale). In `consolidated.00.pth`:
- every block linear: `<name>.weight` int8 holding 4-bit values in [-8, 7], `<name>.scales` float [out, in/group];
- `tok_embeddings` and `output`: `.weight` int8 with per-row `.scales` float [rows];
- LoRA: `<name>.adaptor.A.weight` [rank, in] and `<name>.adaptor.B.weight` [out, rank], kept unmerged;
- norms in float. SpinQuant's R4 is folded into every `feed_forward.w2` and applied online at inference.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from handheld.core.config import ModelArgs
from handheld.core.errors import HandheldError
from handheld.core.model import Transformer

PER_ROW = ("tok_embeddings", "output")


def float_args(args: ModelArgs) -> ModelArgs:
    return dataclasses.replace(args, quantization_args=None, lora_args=None)


def _linear_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    with torch.device("meta"):
        model = Transformer(float_args(args), max_seq_len=1, tied=False)
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}


def validate_prequantized(args: ModelArgs, state: dict[str, torch.Tensor]) -> None:
    group = args.quantization_args.group_size
    expected: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, (rows, cols) in _linear_shapes(args).items():
        expected[f"{name}.weight"] = ((rows, cols), "int8")
        if name in PER_ROW:
            expected[f"{name}.scales"] = ((rows,), "float")
        else:
            if cols % group:
                raise HandheldError(f"quantization_args.group_size {group} does not divide the input width {cols} of {name}")
            expected[f"{name}.scales"] = ((rows, cols // group), "float")
            if args.lora_args is not None:
                rank = args.lora_args.rank
                expected[f"{name}.adaptor.A.weight"] = ((rank, cols), "float")
                expected[f"{name}.adaptor.B.weight"] = ((rows, rank), "float")
    for i in range(args.n_layers):
        for norm in ("attention_norm", "ffn_norm"):
            expected[f"layers.{i}.{norm}.weight"] = ((args.dim,), "float")
    expected["norm.weight"] = ((args.dim,), "float")

    missing = sorted(set(expected) - set(state))
    if missing:
        raise HandheldError(f"pre-quantized checkpoint is missing tensor {missing[0]}" + _more(missing))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        hint = " (LoRA adapters, but params.json has no lora_args)" if "adaptor" in unexpected[0] else ""
        raise HandheldError(f"pre-quantized checkpoint has unexpected tensor {unexpected[0]}{hint}")
    for key, (shape, kind) in expected.items():
        tensor = state[key]
        if kind == "int8" and tensor.dtype != torch.int8:
            raise HandheldError(f"tensor {key} has dtype {tensor.dtype}; Meta's pre-quantized layout stores int8")
        if kind == "float" and not tensor.is_floating_point():
            raise HandheldError(f"tensor {key} has dtype {tensor.dtype}; expected a float tensor")
        if tuple(tensor.shape) != shape:
            raise HandheldError(_shape_message(key, tuple(tensor.shape), shape, args))
    for name in _linear_shapes(args):
        if name not in PER_ROW:
            values = state[f"{name}.weight"]
            if values.min() < -8 or values.max() > 7:
                raise HandheldError(f"tensor {name}.weight holds values outside the 4-bit range [-8, 7]")


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _shape_message(key: str, got: tuple, want: tuple, args: ModelArgs) -> str:
    if key.endswith(".scales") and len(want) == 2:
        return (f"tensor {key} has shape {got}: it does not match quantization_args.group_size "
                f"{args.quantization_args.group_size}, which implies {want}")
    if ".adaptor." in key:
        return f"tensor {key} has shape {got} but lora_args.rank {args.lora_args.rank} implies {want}"
    return f"tensor {key} has shape {got} but the params imply {want}"
