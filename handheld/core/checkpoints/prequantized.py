"""Meta's pre-quantized checkpoint layout (Llama 3.2 SpinQuant_INT4_EO8 and QLORA_INT4_EO8): what the files hold.

This module checks a state dict against the layout; `handheld.quant.prequantized` builds models from it
and writes models into it. `expected_layout` is the one description of the layout, in the order Meta's files
list their tensors; tests/golden/meta_prequantized_llama3_2_1b.json holds the published 1B listing it must match.

`params.json` carries `quantization_args` (group size; handheld adds the spinquant flag) and, for QLoRA,
`lora_args` (rank, scale). In `consolidated.00.pth`:
- every block linear: `<name>.weight` int8 holding 4-bit values in [-8, 7], `<name>.scales` fp32 [out, in/group];
- `tok_embeddings` and `output`: `.weight` int8 with per-row `.scales` fp32 [rows, 1] (older handheld files: [rows]);
- LoRA: `<name>.adaptor.A.weight` [rank, in] and `<name>.adaptor.B.weight` [out, rank] in bf16, kept unmerged;
- norms in float. SpinQuant's R4 is folded into every `feed_forward.w2` and applied online at inference.
The first tensor is a float one (`norm.weight`): ExecuTorch's `export_llm` takes a checkpoint's dtype from its
first tensor and stops on int8.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from handheld.core.llama.config import ModelArgs
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer

PER_ROW = ("tok_embeddings", "output")


def float_args(args: ModelArgs) -> ModelArgs:
    return dataclasses.replace(args, quantization_args=None, lora_args=None)


def _linear_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    with torch.device("meta"):
        model = Transformer(float_args(args), max_seq_len=1, tied=False)
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}


# ExecuTorch's pre-quantized loader: the group sizes it accepts, and the LoRA scale its adapters always use.
EXECUTORCH_GROUP_SIZES = (32, 64, 128, 256)
EXECUTORCH_LORA_SCALE = 2.0


def expected_layout(args: ModelArgs) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of the layout `args` describe, name -> (shape, kind), in Meta's order: the final norm,
    the 8-bit embedding and classifier with their scales, then block by block. Kinds: "int8" (4- or 8-bit
    values), "scales" (fp32: ExecuTorch's loader asserts it), "adaptor" (bf16: likewise), "float" (norms)."""
    shapes = _linear_shapes(args)
    layout = {"norm.weight": ((args.dim,), "float")}
    for name in PER_ROW:
        layout[f"{name}.weight"] = (shapes[name], "int8")
    for name in PER_ROW:
        layout[f"{name}.scales"] = ((shapes[name][0], 1), "scales")
    for i in range(args.n_layers):
        for norm in ("attention_norm", "ffn_norm"):
            layout[f"layers.{i}.{norm}.weight"] = ((args.dim,), "float")
        for name, (rows, cols) in shapes.items():
            if name.startswith(f"layers.{i}."):
                layout.update(_block_linear(args, name, rows, cols))
    return layout


def _block_linear(args: ModelArgs, name: str, rows: int, cols: int) -> dict[str, tuple[tuple[int, ...], str]]:
    group = args.quantization_args.group_size
    if cols % group:
        raise HandheldError(f"quantization_args.group_size {group} does not divide the input width {cols} of {name}")
    out = {f"{name}.weight": ((rows, cols), "int8"), f"{name}.scales": ((rows, cols // group), "scales")}
    if args.lora_args is not None:
        rank = args.lora_args.rank
        out[f"{name}.adaptor.A.weight"] = ((rank, cols), "adaptor")
        out[f"{name}.adaptor.B.weight"] = ((rows, rank), "adaptor")
    return out


def validate_prequantized(args: ModelArgs, state: dict[str, torch.Tensor]) -> None:
    expected = expected_layout(args)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise HandheldError(f"pre-quantized checkpoint is missing tensor {missing[0]}" + _more(missing))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        hint = " (LoRA adapters, but params.json has no lora_args)" if "adaptor" in unexpected[0] else ""
        raise HandheldError(f"pre-quantized checkpoint has unexpected tensor {unexpected[0]}{hint}")
    for key, (shape, kind) in expected.items():
        _check_tensor(key, state[key], shape, kind, args)
    for name in _linear_shapes(args):
        if name not in PER_ROW:
            values = state[f"{name}.weight"]
            if values.min() < -8 or values.max() > 7:
                raise HandheldError(f"tensor {name}.weight holds values outside the 4-bit range [-8, 7]")


def _check_tensor(key: str, tensor: torch.Tensor, shape: tuple, kind: str, args: ModelArgs) -> None:
    if kind == "int8" and tensor.dtype != torch.int8:
        raise HandheldError(f"tensor {key} has dtype {tensor.dtype}; Meta's pre-quantized layout stores int8")
    if kind != "int8" and not tensor.is_floating_point():
        raise HandheldError(f"tensor {key} has dtype {tensor.dtype}; expected a float tensor")
    got = tuple(tensor.shape)
    if got != shape and not (shape[-1:] == (1,) and got == shape[:1]):  # per-row scales: [rows, 1] or [rows]
        raise HandheldError(_shape_message(key, got, shape, args))


def executorch_loader_notes(args: ModelArgs) -> list[str]:
    """One line for each setting of a pre-quantized checkpoint that ExecuTorch's own `export_llm` would not
    carry over (its loader fixes the LoRA scale and allows four group sizes); empty when it would."""
    notes = []
    lora, quant = args.lora_args, args.quantization_args
    if lora is not None and lora.scale != EXECUTORCH_LORA_SCALE:
        notes.append(f"warning: lora_args.scale {lora.scale:g} will not survive ExecuTorch's export_llm, whose loader "
                     f"fixes the LoRA scale at {EXECUTORCH_LORA_SCALE:g} (alpha = 2 x rank); handheld's export keeps it")
    if quant is not None and quant.group_size not in EXECUTORCH_GROUP_SIZES:
        notes.append(f"warning: group size {quant.group_size} cannot be exported by ExecuTorch's export_llm, which "
                     f"reads only {', '.join(map(str, EXECUTORCH_GROUP_SIZES))}; handheld's export handles it")
    return notes


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _shape_message(key: str, got: tuple, want: tuple, args: ModelArgs) -> str:
    if key.endswith(".scales") and key.removesuffix(".scales") in PER_ROW:
        return f"tensor {key} has shape {got}: per-row scales of {want[0]} rows are [{want[0]}, 1] (or [{want[0]}])"
    if key.endswith(".scales"):
        return (f"tensor {key} has shape {got}: it does not match quantization_args.group_size "
                f"{args.quantization_args.group_size}, which implies {want}")
    if ".adaptor." in key:
        return f"tensor {key} has shape {got} but lora_args.rank {args.lora_args.rank} implies {want}"
    return f"tensor {key} has shape {got} but the params imply {want}"
