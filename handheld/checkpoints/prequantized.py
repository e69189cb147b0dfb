"""Meta's pre-quantized checkpoint layout (Llama 3.2 SpinQuant_INT4_EO8 and QLORA_INT4_EO8), read and written.

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

from handheld.config import ModelArgs
from handheld.errors import HandheldError
from handheld.model import Transformer

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


def build_prequantized_model(args: ModelArgs, state: dict[str, torch.Tensor], max_seq_len: int,
                             full_logits: bool) -> nn.Module:
    """torchao's quantized structure for the scheme, filled with the checkpoint's integers and scales."""
    from handheld.quant.lora import add_lora
    from handheld.quant.mobile_8da4w import quantize_8da4w
    from handheld.quant.spinquant_r4 import enable_online_hadamard

    model = Transformer(float_args(args), max_seq_len=max_seq_len, full_logits=full_logits, tied=False)
    model = quantize_8da4w(model, group_size=args.quantization_args.group_size)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.qdata.copy_(state[f"{name}.weight"])
                module.weight.scale.copy_(state[f"{name}.scales"].float().reshape(module.weight.scale.shape))
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(state[name].float())
    if args.quantization_args.spinquant:
        model = enable_online_hadamard(model)
    if args.lora_args is not None:
        model = add_lora(model, args.lora_args.rank, args.lora_args.scale)
        adapters = {k: v.float() for k, v in state.items() if ".adaptor." in k}
        model.load_state_dict(adapters, strict=False)
    return model.eval()


def prequantized_state(model: nn.Module, adaptor_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The Meta-layout state dict of a model quantized by `quantize_8da4w` (optionally with LoRA)."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    state = {}
    for name, param in model.named_parameters():
        if isinstance(param, IntxUnpackedToInt8Tensor):
            base = name.removesuffix(".weight")
            state[name] = param.qdata.clone()
            scales = param.scale.float()
            state[f"{base}.scales"] = scales.reshape(-1) if base in PER_ROW else scales.clone()
        elif ".adaptor." in name:
            state[name] = param.detach().to(adaptor_dtype).clone()
        else:
            state[name] = param.detach().float().clone()
    return state


def write_prequantized(directory, args: ModelArgs, model: nn.Module) -> None:
    """Write `model` (quantized by `quantize_8da4w`, optionally with LoRA) in Meta's layout."""
    from handheld.checkpoints.meta import write_meta

    if args.quantization_args is None:
        raise HandheldError("write_prequantized needs params with quantization_args")
    state = prequantized_state(model)
    validate_prequantized(args, state)
    write_meta(directory, args, state)
