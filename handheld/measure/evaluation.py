"""`handheld eval` as a typed request and a result: perplexity of any model kind on a text, optionally against a
float reference (top-1 agreement, KL) and on another target's runner.

Model kinds: a `.pte` (ExecuTorch's Python runtime, or handheld's native runner on `target`), a checkpoint (eager
PyTorch under `scheme`), an NPU scheme simulated on the CPU (a `.pt2` from `handheld quantize`, or a checkpoint
with `backend` qnn|mediatek, calibrated here on `calib`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from handheld.core.defaults import KV_CACHE, KV_CACHES, NPU_CALIB_SEQUENCES
from handheld.core.errors import HandheldError
from handheld.decoding.text import is_checkpoint_path
from handheld.export.options import is_npu_artefact


@dataclass(frozen=True)
class EvalOptions:
    context: int = 256
    stride: int = 128
    max_tokens: int | None = None  # score only the text's first N tokens
    reference: Path | None = None  # a float checkpoint: top-1 agreement and mean KL against it
    scheme: str | None = None  # checkpoints: the eager scheme, or with `backend` that NPU's scheme
    group_size: int | None = None
    backend: str | None = None  # qnn | mediatek: simulate that NPU's scheme (needs `calib`)
    soc: str | None = None
    calib: Path | None = None
    calib_sequences: int = NPU_CALIB_SEQUENCES
    target: str | None = None  # a .pte on handheld's native runner there (host, qemu-aarch64, adb[:SERIAL], ...)
    kv_cache: str = KV_CACHE  # checkpoints: int8 scores through ExecuTorch's quantized KV cache, as exported

    def __post_init__(self) -> None:
        if self.kv_cache not in KV_CACHES:
            raise HandheldError(f"unknown --kv-cache {self.kv_cache!r}; known: {', '.join(KV_CACHES)}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise HandheldError(f"--max-tokens must be at least 2 (a token and its successor), got {self.max_tokens}")


@dataclass(frozen=True)
class Evaluation:
    model: str
    mode: str  # eager, .pte, .pte on TARGET, simulated
    scheme: str
    text: str
    text_sha256: str
    perplexity: float
    tokens_scored: int
    context: int
    stride: int
    top1_agreement: float | None = None
    mean_kl: float | None = None
    target: str | None = None
    host_perplexity: float | None = None  # with `target`: the same windows through ExecuTorch's runtime here
    difference_from_host_pct: float | None = None

    def as_dict(self) -> dict:
        record = asdict(self)
        if self.target is None:  # the keys `handheld eval --json` has always written, and only those
            for key in ("target", "host_perplexity", "difference_from_host_pct"):
                record.pop(key)
        return record


def evaluate_model(model: Path, text: Path, tokenizer: Path, options: EvalOptions = EvalOptions(),
                   log: Callable[[str], None] = lambda _: None) -> Evaluation:
    from handheld.core.checkpoints import load_model
    from handheld.measure.quality import eager_logits_fn, evaluate

    ids = text_ids(text, tokenizer, options.max_tokens)
    logits_fn, mode, scheme = _logits_fn(model, tokenizer, options, log)
    reference = options.reference
    reference_fn = eager_logits_fn(load_model(reference, max_seq_len=options.context)) if reference else None
    result = evaluate(logits_fn, ids, options.context, options.stride, reference_fn=reference_fn)
    host = {}
    if options.target:
        host = _against_host(model, ids, options, result.perplexity)
    return Evaluation(str(model), mode, scheme, str(text), hashlib.sha256(text.read_bytes()).hexdigest(),
                      **result.as_dict(), **host)


def text_ids(text: Path, tokenizer: Path, max_tokens: int | None) -> list[int]:
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    if not text.is_file():
        raise HandheldError(f"text file {text} not found")
    ids = load_tokenizer(tokenizer).encode(text.read_text(encoding="utf-8"), bos=False)
    return ids[:max_tokens] if max_tokens else ids


def _logits_fn(model: Path, tokenizer: Path, options: EvalOptions, log):
    from handheld.measure.quality import eager_logits_fn, pte_logits_fn

    if options.target and (is_npu_artefact(model) or options.backend or is_checkpoint_path(model)):
        raise HandheldError(f"--target runs a .pte on handheld's native runner; {model} is not a .pte")
    if is_npu_artefact(model) or options.backend:
        return _simulated_logits_fn(model, tokenizer, options, log)
    if is_checkpoint_path(model):
        prepared = _eager(model, options)
        return eager_logits_fn(prepared.model), "eager", _with_cache(prepared.label, options.kv_cache)
    from handheld.runtime_bindings.python.program import PteProgram

    given = {"--scheme": options.scheme, "--group-size": options.group_size,
             "--kv-cache": None if options.kv_cache == KV_CACHE else options.kv_cache}
    for flag, value in given.items():
        if value is not None:
            raise HandheldError(f"{flag} applies to checkpoints; {model} already has its scheme")
    program = PteProgram(model)
    if options.context > program.max_seq_len:
        raise HandheldError(f"--context {options.context} exceeds {model}'s max sequence length {program.max_seq_len}")
    scheme = _with_cache(program.metadata.scheme, program.metadata.kv_cache)
    if options.target:
        return _native_logits_fn(model, program, options.target, log), f".pte on {options.target}", scheme
    return pte_logits_fn(program), ".pte", scheme


def _with_cache(scheme: str, kv_cache: str) -> str:
    return scheme if kv_cache == "fp32" else f"{scheme}, {kv_cache} KV cache"


def _eager(model: Path, options: EvalOptions):
    from handheld.quant.schemes import prepare_checkpoint

    prepared = prepare_checkpoint(model, options.scheme, group_size=options.group_size, max_seq_len=options.context,
                                  full_logits=True)
    if options.kv_cache != "fp32":
        from handheld.export.program import with_llm_kv_ops

        with_llm_kv_ops(prepared.model, options.kv_cache)
    return prepared


def _simulated_logits_fn(model: Path, tokenizer: Path, options: EvalOptions, log):
    """An NPU scheme's converted graph run on the CPU: from a .pt2, or quantized here from a checkpoint."""
    from handheld.export.npu import NpuOptions, calibrate_checkpoint, load_quantized

    if options.kv_cache != KV_CACHE:
        raise HandheldError(f"--kv-cache {options.kv_cache} is for CPU programs; NPU schemes fix their cache")

    if is_npu_artefact(model):
        given = {"scheme": options.scheme, "backend": options.backend, "soc": options.soc, "calib": options.calib,
                 "group-size": options.group_size}
        for flag, value in given.items():
            if value is not None:
                raise HandheldError(f"--{flag} does not apply to {model}: it is already quantized")
        quantized = load_quantized(model)
        if options.context > quantized.options.seq_len:
            raise HandheldError(f"--context {options.context} exceeds {model}'s {quantized.options.seq_len} tokens per call")
    else:
        from handheld.quant.schemes import refuse_rounding_flags

        refuse_rounding_flags({"--group-size": options.group_size}, f"{options.backend}'s schemes fix their own")
        npu = NpuOptions(options.backend, options.scheme, options.soc, seq_len=options.context)
        npu.resolve()
        quantized = calibrate_checkpoint(model, npu, options.calib, tokenizer, options.calib_sequences, log=log)
    return quantized.logits, "simulated", f"{quantized.options.backend} {quantized.options.scheme}"


def _native_logits_fn(pte: Path, program, target_name: str, log):
    """Windows scored by handheld's C++ runner on the target (the aarch64 one under qemu, or a phone)."""
    import torch

    from handheld.measure.bench import connect_device
    from handheld.measure.quality import pte_logits_fn
    from handheld.runtime_bindings.native.build import build_runner
    from handheld.runtime_bindings.native.run import score_native
    from handheld.runtime_bindings.native.targets import get_target

    target = get_target(target_name)
    pte_logits_fn(program)  # refuses a program without every position's logits
    device = connect_device(target_name)  # None off a device; connected first: a missing phone fails at once
    binary = build_runner(target.name, log=log)
    if device is None:
        return lambda window: torch.from_numpy(score_native(binary, target.name, pte, window))
    device.install_runner(binary)
    device.install_program(pte)
    return lambda window: torch.from_numpy(device.score(pte, window))


def _against_host(pte: Path, ids: list[int], options: EvalOptions, perplexity: float) -> dict:
    """The same windows through ExecuTorch's Python runtime on this machine: what the target's number differs from."""
    from handheld.measure.quality import evaluate, pte_logits_fn
    from handheld.runtime_bindings.python.program import PteProgram

    host = evaluate(pte_logits_fn(PteProgram(pte)), ids, options.context, options.stride).perplexity
    return {"target": options.target, "host_perplexity": host, "difference_from_host_pct": 100 * (perplexity / host - 1)}
