"""Models in Meta's pre-quantized layout: build the torchao model a checkpoint describes, and write one back.

One sequence builds every pre-quantized model, whether from a checkpoint's integers or from a trained
float model: float backbone -> 8da4w (torchao) -> online R4 if SpinQuant -> unmerged LoRA adapters.
The on-disk layout itself is checked in `handheld.core.checkpoints.prequantized`.
"""

from __future__ import annotations

import torch
from torch import nn

from handheld.core.checkpoints.meta import write_meta
from handheld.core.checkpoints.prequantized import PER_ROW, expected_layout, float_args, validate_prequantized
from handheld.core.llama.config import ModelArgs
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer
from handheld.quant.lora import add_lora
from handheld.quant.mobile_8da4w import IntWeights, quantize_8da4w
from handheld.quant.spinquant_r4 import enable_online_hadamard
from handheld.quant.torchao_adapter import int_weight, is_int_weight, set_int_weight


def quantized_model(args: ModelArgs, float_state: dict[str, torch.Tensor], max_seq_len: int,
                    full_logits: bool, int_weights: IntWeights | None = None) -> nn.Module:
    """The pre-quantized structure `args` describes, its backbone quantized from `float_state` (untied
    names), its adapters (if any) loaded from the `.adaptor.` entries of the same state. `int_weights`: the
    4-bit linears' integers and scales as training fixed them; the others round by torchao's rule (absmax)."""
    model = Transformer(float_args(args), max_seq_len=max_seq_len, full_logits=full_logits, tied=False)
    model.load_state_dict({k: v.float() for k, v in float_state.items() if ".adaptor." not in k})
    # torchao's own rounding (absmax) where no integers are given: the grid its QAT fake quantizers train on.
    model = quantize_8da4w(model, group_size=args.quantization_args.group_size, scale_rule="absmax",
                           int_weights=int_weights)
    return _finish(model, args, float_state)


def _finish(model: nn.Module, args: ModelArgs, state: dict[str, torch.Tensor]) -> nn.Module:
    if args.quantization_args.spinquant:
        model = enable_online_hadamard(model)
    if args.lora_args is not None:
        model = add_lora(model, args.lora_args.rank, args.lora_args.scale)
        model.load_state_dict({k: v.float() for k, v in state.items() if ".adaptor." in k}, strict=False)
    return model.eval()


def build_prequantized_model(args: ModelArgs, state: dict[str, torch.Tensor], max_seq_len: int,
                             full_logits: bool) -> nn.Module:
    """torchao's quantized structure for the scheme, filled with the checkpoint's integers and scales."""
    model = Transformer(float_args(args), max_seq_len=max_seq_len, full_logits=full_logits, tied=False)
    # The structure only (its integers are replaced by the checkpoint's): torchao's own rounding is the fastest.
    model = quantize_8da4w(model, group_size=args.quantization_args.group_size, scale_rule="absmax")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                set_int_weight(module.weight, state[f"{name}.weight"], state[f"{name}.scales"].float())
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(state[name].float())
    return _finish(model, args, state)


def prequantized_state(model: nn.Module, adaptor_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The Meta-layout state dict of a model quantized by `quantize_8da4w` (optionally with LoRA)."""
    state = {}
    for name, param in model.named_parameters():
        if is_int_weight(param):
            base = name.removesuffix(".weight")
            values, scales = int_weight(param)
            state[name] = values.clone()
            scales = scales.float()
            state[f"{base}.scales"] = scales.reshape(-1, 1) if base in PER_ROW else scales.clone()  # Meta's [rows, 1]
        elif ".adaptor." in name:
            state[name] = param.detach().to(adaptor_dtype).clone()
        else:
            state[name] = param.detach().float().clone()
    return state


def write_prequantized(directory, args: ModelArgs, model: nn.Module) -> None:
    """Write `model` (quantized by `quantize_8da4w`, optionally with LoRA) in Meta's layout and tensor order:
    a float tensor first, so ExecuTorch's `export_llm` (which takes the checkpoint's dtype from its first
    tensor) reads the file too."""
    if args.quantization_args is None:
        raise HandheldError("write_prequantized needs params with quantization_args")
    state = prequantized_state(model)
    validate_prequantized(args, state)
    write_meta(directory, args, {name: state[name] for name in expected_layout(args)})
