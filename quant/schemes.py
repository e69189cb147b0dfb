"""Numeric schemes a model can be exported with, as one explicit table.

A scheme is a transform `model -> model` applied to the eager float model before export, so the
same transformed model is the eager oracle for the `.pte`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from handheld.core.checkpoints import Checkpoint, build_model
from handheld.core.defaults import GROUP_SIZE
from handheld.core.errors import HandheldError
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.prequantized import build_prequantized_model


@dataclass(frozen=True)
class SchemeOptions:
    group_size: int = GROUP_SIZE  # weight group size of 4-bit schemes


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    dtype: torch.dtype  # activation dtype of the exported program
    transform: Callable[[nn.Module, SchemeOptions], nn.Module]
    quantized: bool = False  # every linear must then run as a backend's quantized kernel


def _to_fp32(model: nn.Module, options: SchemeOptions) -> nn.Module:
    return model.float()


def _to_8da4w(model: nn.Module, options: SchemeOptions) -> nn.Module:
    return quantize_8da4w(model, group_size=options.group_size)


def _to_bf16(model: nn.Module, options: SchemeOptions) -> nn.Module:
    return _to_16_bit(model, torch.bfloat16)


def _to_fp16(model: nn.Module, options: SchemeOptions) -> nn.Module:
    return _to_16_bit(model, torch.float16)


def _to_8da4w_c4(model: nn.Module, options: SchemeOptions) -> nn.Module:
    return quantize_8da4w(model, group_size=options.group_size, classifier_bits=4)


def _to_16_bit(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    # Constant tables stay float32 (16-bit cos/sin lose too much precision at long positions; 1/dim in the
    # norms' mean would be off by up to 0.4%); only weights and the KV caches become 16-bit.
    constants = {name: buf for name, buf in model.named_buffers() if not name.endswith("_cache")}
    model = model.to(dtype)
    for name, buf in constants.items():
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, buf)
    return model


SCHEMES: dict[str, Scheme] = {
    "fp32": Scheme("fp32", "unquantized, float32", torch.float32, _to_fp32),
    "bf16": Scheme("bf16", "unquantized, bfloat16 weights and activations", torch.bfloat16, _to_bf16),
    # XNNPACK serves float16 natively on x86 too (F16C/AVX-512 FP16 kernels) and keeps the weights 16-bit.
    "fp16": Scheme("fp16", "unquantized, float16 weights and activations", torch.float16, _to_fp16),
    "8da4w": Scheme(
        "8da4w",
        "Llama 3.2 mobile: 4-bit g32 linears + 8-bit dynamic activations, 8-bit classifier and embedding",
        torch.float32,
        _to_8da4w,
        quantized=True,
    ),
    "8da4w-c4": Scheme(
        "8da4w-c4",
        "8da4w with a 4-bit g32 classifier (ExecuTorch's export_llm CLI default): fewer bytes per token, less quality",
        torch.float32,
        _to_8da4w_c4,
        quantized=True,
    ),
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise HandheldError(f"unknown scheme {name!r}; known schemes: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def apply_scheme(model: nn.Module, name: str, options: SchemeOptions = SchemeOptions()) -> nn.Module:
    """The eager model a scheme's `.pte` is exported from: its oracle."""
    return get_scheme(name).transform(model, options)


@dataclass(frozen=True)
class PreparedModel:
    model: nn.Module
    scheme: Scheme  # what to lower with
    label: str  # the scheme's name in reports and metadata (spinquant, qat-lora, ...)
    group_size: int | None


def prepare_model(checkpoint: Checkpoint, requested: str | None, options: SchemeOptions = SchemeOptions(), *,
                  max_seq_len: int, full_logits: bool) -> PreparedModel:
    """The eager model for a checkpoint under a scheme: what export lowers and eager runs check against.

    A pre-quantized checkpoint brings its own scheme; `requested` None means that one, else fp32.
    """
    if checkpoint.prequantized:
        quant = checkpoint.args.quantization_args
        if requested not in (None, "8da4w"):
            raise HandheldError(
                f"{checkpoint.path} is pre-quantized ({checkpoint.kind}: 8da4w, group size {quant.group_size}, per "
                f"its params.json); it cannot be exported as --scheme {requested}: leave --scheme out"
            )
        model = build_prequantized_model(checkpoint.args, checkpoint.state, max_seq_len, full_logits)
        return PreparedModel(model, get_scheme("8da4w"), checkpoint.kind, quant.group_size)
    # The checkpoint's own dtype: each scheme widens or narrows (8da4w one weight at a time, so 3B fits).
    model = build_model(checkpoint, max_seq_len=max_seq_len, full_logits=full_logits, dtype=None)
    scheme = get_scheme(requested or "fp32")
    return PreparedModel(scheme.transform(model, options), scheme, scheme.name, options.group_size if scheme.quantized else None)


def scheme_options(requested: str | None, group_size: int | None, checkpoint: Checkpoint) -> SchemeOptions:
    """Options for `requested` on this checkpoint; a --group-size that would be ignored is refused instead."""
    if group_size is None:
        return SchemeOptions()
    if checkpoint.prequantized:
        own = checkpoint.args.quantization_args.group_size
        if group_size != own:
            raise HandheldError(f"{checkpoint.path} is pre-quantized with group size {own}; --group-size {group_size} "
                                "cannot change it")
        return SchemeOptions(group_size=group_size)
    if not get_scheme(requested or "fp32").quantized:
        raise HandheldError(f"--group-size applies to 4-bit schemes; scheme {requested or 'fp32'} has no groups")
    return SchemeOptions(group_size=group_size)


def checkpoint_model(checkpoint: Checkpoint, max_seq_len: int, full_logits: bool = True) -> nn.Module:
    """Any checkpoint's own eager model: float as stored, or its pre-quantized scheme."""
    return prepare_model(checkpoint, None, max_seq_len=max_seq_len, full_logits=full_logits).model
