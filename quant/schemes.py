"""Numeric schemes a model can be exported with, as one explicit table.

A scheme is a transform `model -> model` applied to the eager float model before export, so the
same transformed model is the eager oracle for the `.pte`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from handheld.core.checkpoints import Checkpoint, build_model
from handheld.core.defaults import (CALIB_SEQ_LEN, GPTQ_CALIB_TOKENS, GPTQ_MIN_CALIB_TOKENS, GROUP_SIZE, ROTATION,
                                    SCALE_RULE)
from handheld.core.errors import HandheldError
from handheld.quant.calibration import text_tokens, windows_of
from handheld.quant.gptq import sequential_gptq
from handheld.quant.linears import block_linears
from handheld.quant.mixed_precision import choose_eight_bit
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.prequantized import build_prequantized_model
from handheld.quant.rotation import check_rotation, rotate, rotation_record
from handheld.quant.scale_rules import check_scale_rule
from handheld.quant.torchao_adapter import int_bits, is_int_weight

GPTQ_BATCH = 8  # calibration sequences per forward pass (memory, not results)


@dataclass(frozen=True)
class SchemeOptions:
    """How a 4-bit scheme rounds: everything here is written whole into the .pte (`quantization` metadata)."""
    group_size: int = GROUP_SIZE  # weight group size of 4-bit schemes
    scale_rule: str = SCALE_RULE  # how a group's scale is chosen (quant/scale_rules.py)
    calib: Path | None = None  # text GPTQ calibrates the 4-bit linears on (None: data-free rounding)
    calib_tokens: int = GPTQ_CALIB_TOKENS  # tokens of `calib` GPTQ reads, in windows spread over the text
    # Mixed precision: MB (10^6 bytes) of weights a decoded token may read; the block linears whose 4-bit rounding
    # costs the most loss per extra byte (measured on `calib`) stay 8-bit within it. None: every linear 4-bit.
    budget_mb: float | None = None
    rotation: str = ROTATION  # applied before GPTQ (quant/rotation.py); needs `calib`

    def __post_init__(self):
        check_scale_rule(self.scale_rule)
        check_rotation(self.rotation)
        if self.rotation != "none" and self.calib is None:
            raise HandheldError(f"--rotation {self.rotation} needs --calib TEXT: rotated weights round well only with "
                                "GPTQ (without it SmolLM2 loses more than unrotated: benchmarks/results/rotations_smollm2.json)")
        if self.calib_tokens < GPTQ_MIN_CALIB_TOKENS:
            raise HandheldError(f"--calib-tokens must be at least {GPTQ_MIN_CALIB_TOKENS}, got {self.calib_tokens}")
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise HandheldError(f"--budget-mb must be a positive number of megabytes, got {self.budget_mb}")
        if self.budget_mb is not None and self.calib is None:
            raise HandheldError("--budget-mb needs --calib TEXT: each linear's sensitivity is measured on it")


@dataclass(frozen=True, eq=False)
class Calibration:
    """A calibration text read for GPTQ: its token windows and what identifies it in metadata."""
    name: str
    sha256: str
    sequences: torch.Tensor  # [N, seq_len] token ids

    def record(self) -> dict:
        return {"method": "gptq", "act_order": True, "text": self.name, "sha256": self.sha256,
                "sequences": self.sequences.shape[0], "seq_len": self.sequences.shape[1]}


def read_calibration(options: SchemeOptions, tokenizer, max_seq_len: int) -> Calibration:
    """--calib's token windows for GPTQ: one line naming the problem for a missing, non-UTF-8, empty or too
    short text."""
    seq_len = min(CALIB_SEQ_LEN, max_seq_len)
    ids = text_tokens(options.calib, tokenizer)
    windows = windows_of(ids, seq_len)
    if windows.numel() < GPTQ_MIN_CALIB_TOKENS:
        raise HandheldError(f"calibration text {options.calib} has {len(ids)} tokens ({windows.numel()} in whole "
                            f"windows of {seq_len}); GPTQ needs at least {GPTQ_MIN_CALIB_TOKENS}")
    wanted = max(1, options.calib_tokens // seq_len)
    picked = torch.linspace(0, windows.shape[0] - 1, min(wanted, windows.shape[0])).round().long()  # spread over the text
    digest = hashlib.sha256(options.calib.read_bytes()).hexdigest()
    return Calibration(options.calib.name, digest, windows[picked])


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    dtype: torch.dtype  # activation dtype of the exported program
    # (model, options, calibration or None) -> the eager model the program is lowered from
    transform: Callable[[nn.Module, SchemeOptions, Calibration | None], nn.Module]
    quantized: bool = False  # every linear must then run as a backend's quantized kernel


def _to_fp32(model: nn.Module, options: SchemeOptions, calibration: Calibration | None) -> nn.Module:
    return model.float()


def _to_8da4w(model: nn.Module, options: SchemeOptions, calibration: Calibration | None) -> nn.Module:
    return _to_mobile(model, options, calibration, classifier_bits=8)


def _to_bf16(model: nn.Module, options: SchemeOptions, calibration: Calibration | None) -> nn.Module:
    return _to_16_bit(model, torch.bfloat16)


def _to_fp16(model: nn.Module, options: SchemeOptions, calibration: Calibration | None) -> nn.Module:
    return _to_16_bit(model, torch.float16)


def _to_8da4w_c4(model: nn.Module, options: SchemeOptions, calibration: Calibration | None) -> nn.Module:
    return _to_mobile(model, options, calibration, classifier_bits=4)


def _to_mobile(model: nn.Module, options: SchemeOptions, calibration: Calibration | None,
               classifier_bits: int) -> nn.Module:
    """8da4w; with a calibration, the block linears' integers from GPTQ on it (block by block, act order, float32),
    after the options' rotation."""
    int_weights, eight_bit = None, frozenset()
    if calibration is not None:
        model = rotate(model.float(), options.rotation)
        if options.budget_mb is not None:
            eight_bit = choose_eight_bit(model, calibration.sequences, options.group_size, classifier_bits,
                                         options.scale_rule, round(options.budget_mb * 1e6))
        # Act order: lower KL to float on SmolLM2 in 4 of 4 text/checkpoint pairs (scale_rules_smollm2.json).
        int_weights = sequential_gptq(model, calibration.sequences, options.group_size, GPTQ_BATCH, options.scale_rule,
                                      act_order=True, skip=eight_bit)
    return quantize_8da4w(model, options.group_size, classifier_bits, options.scale_rule, int_weights, eight_bit)


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


def apply_scheme(model: nn.Module, name: str, options: SchemeOptions = SchemeOptions(),
                 calibration: Calibration | None = None) -> nn.Module:
    """The eager model a scheme's `.pte` is exported from: its oracle."""
    return get_scheme(name).transform(model, options, calibration)


@dataclass(frozen=True)
class PreparedModel:
    model: nn.Module
    scheme: Scheme  # what to lower with
    label: str  # the scheme's name in reports and metadata (spinquant, qat-lora, ...)
    group_size: int | None
    quantization: dict | None = None  # how the 4-bit weights were rounded, for the .pte metadata


def prepare_model(checkpoint: Checkpoint, requested: str | None, options: SchemeOptions = SchemeOptions(), *,
                  max_seq_len: int, full_logits: bool, tokenizer=None) -> PreparedModel:
    """The eager model for a checkpoint under a scheme: what export lowers and eager runs check against.

    A pre-quantized checkpoint brings its own scheme; `requested` None means that one, else fp32. `tokenizer`
    reads `options.calib` (needed only then).
    """
    if checkpoint.prequantized:
        quant = checkpoint.args.quantization_args
        if requested not in (None, "8da4w"):
            raise HandheldError(
                f"{checkpoint.path} is pre-quantized ({checkpoint.kind}: 8da4w, group size {quant.group_size}, per "
                f"its params.json); it cannot be exported as --scheme {requested}: leave --scheme out"
            )
        model = build_prequantized_model(checkpoint.args, checkpoint.state, max_seq_len, full_logits)
        record = {"group_size": quant.group_size, "integers": f"from the {checkpoint.kind} checkpoint"}
        return PreparedModel(model, get_scheme("8da4w"), checkpoint.kind, quant.group_size, record)
    scheme = get_scheme(requested or "fp32")
    calibration = None
    if options.calib is not None:
        if tokenizer is None:
            raise HandheldError(f"{checkpoint.path} has no tokenizer to read --calib with: pass --tokenizer")
        calibration = read_calibration(options, tokenizer, max_seq_len)
    # The checkpoint's own dtype: each scheme widens or narrows (8da4w one weight at a time, so 3B fits).
    model = build_model(checkpoint, max_seq_len=max_seq_len, full_logits=full_logits, dtype=None)
    model = scheme.transform(model, options, calibration)
    if not scheme.quantized:
        return PreparedModel(model, scheme, scheme.name, None)
    record = {"group_size": options.group_size, "scale_rule": options.scale_rule,
              "calibration": calibration.record() if calibration else None}
    if rotated := rotation_record(options.rotation):
        record["rotation"] = rotated
    if options.budget_mb is not None:
        record.update(budget_mb=options.budget_mb, sensitivity="fisher", eight_bit_linears=eight_bit_linears(model))
    return PreparedModel(model, scheme, scheme.name, options.group_size, record)


def eight_bit_linears(model: nn.Module) -> list[str]:
    """Block linears a quantized model keeps at 8 bits, read from the model itself (what the program stores)."""
    return sorted(name for name, m in block_linears(model).items() if is_int_weight(m.weight) and int_bits(m.weight) == 8)


def prepare_checkpoint(path: Path, requested: str | None, *, max_seq_len: int, full_logits: bool,
                       group_size: int | None = None, tokenizer: Path | None = None, **flags) -> PreparedModel:
    """A checkpoint file's eager model under a scheme, its options validated (`flags`: scale_rule, calib,
    calib_tokens, budget_mb, rotation); the tokenizer (given, else the checkpoint's own) is read only for `calib`."""
    from handheld.core.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(path)
    options = scheme_options(requested, group_size, checkpoint, **flags)
    tokens = tokenizer or checkpoint.tokenizer_path
    reader = None
    if options.calib is not None and tokens is not None:
        from handheld.core.tokenizers.tokenizer import load_tokenizer

        reader = load_tokenizer(str(tokens))
    return prepare_model(checkpoint, requested, options, max_seq_len=max_seq_len, full_logits=full_logits,
                         tokenizer=reader)


def refuse_rounding_flags(flags: dict[str, object], why: str) -> None:
    """The one group-size rule: how 4-bit groups round (--group-size, --scale-rule, --calib, ...) is chosen only
    for xnnpack's 4-bit schemes. Any such flag given elsewhere is refused, `why` saying what the scheme is."""
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise HandheldError(f"{', '.join(given)} applies to xnnpack's 4-bit schemes; {why}")


def scheme_options(requested: str | None, group_size: int | None, checkpoint: Checkpoint, *,
                   scale_rule: str | None = None, calib: Path | None = None,
                   calib_tokens: int | None = None, budget_mb: float | None = None,
                   rotation: str | None = None) -> SchemeOptions:
    """Options for `requested` on this checkpoint, validated once; an option that would be ignored is refused."""
    given = {"--group-size": group_size, "--scale-rule": scale_rule, "--calib": calib, "--calib-tokens": calib_tokens,
             "--budget-mb": budget_mb, "--rotation": rotation}
    given = {flag: value for flag, value in given.items() if value is not None}
    if not given:
        return SchemeOptions()
    if checkpoint.prequantized:
        own = checkpoint.args.quantization_args.group_size
        if set(given) != {"--group-size"} or group_size != own:
            raise HandheldError(f"{checkpoint.path} is pre-quantized (group size {own}, its own integers); "
                                f"{', '.join(given)} cannot change it")
        return SchemeOptions(group_size=group_size)
    if not get_scheme(requested or "fp32").quantized:
        refuse_rounding_flags(given, f"scheme {requested or 'fp32'} has no groups")
    defaults = SchemeOptions()
    return SchemeOptions(group_size=group_size or defaults.group_size, scale_rule=scale_rule or defaults.scale_rule,
                         calib=calib, calib_tokens=calib_tokens or defaults.calib_tokens, budget_mb=budget_mb,
                         rotation=rotation or defaults.rotation)


def checkpoint_model(checkpoint: Checkpoint, max_seq_len: int, full_logits: bool = True) -> nn.Module:
    """Any checkpoint's own eager model: float as stored, or its pre-quantized scheme."""
    return prepare_model(checkpoint, None, max_seq_len=max_seq_len, full_logits=full_logits).model
