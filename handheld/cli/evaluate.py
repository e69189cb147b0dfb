"""`handheld eval`: perplexity of a `.pte` or a checkpoint on a text, and agreement with a float reference."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from handheld.cli._shared import (add_group_size, add_npu_arguments, eager_model, is_checkpoint_path, npu_quantized,
                                  refuse_checkpoint_flags)
from handheld.core.errors import HandheldError
from handheld.export.options import is_npu_artefact

HELP = "perplexity of a .pte or a checkpoint on a text, and agreement with a float reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .pte exported with --full-logits, a checkpoint (eager PyTorch), or a .pt2 from "
                   "`handheld quantize` (an NPU scheme, simulated on the CPU)")
    p.add_argument("--text", required=True, help="UTF-8 text file to score")
    p.add_argument("--tokenizer", required=True, help="tokenizer file (tiktoken tokenizer.model)")
    p.add_argument("--context", type=int, default=256, help="window length in tokens (default 256)")
    p.add_argument("--stride", type=int, default=128, help="window step; each window scores its last `stride` tokens")
    p.add_argument("--max-tokens", type=int, help="score only the text's first N tokens")
    p.add_argument("--reference", help="float checkpoint to compare with: top-1 agreement and mean KL divergence")
    p.add_argument("--scheme", help="checkpoints only: scheme applied in eager PyTorch (default fp32), or with "
                   "--backend qnn|mediatek that NPU's scheme, calibrated on --calib and simulated on the CPU")
    add_group_size(p, "4-bit schemes (checkpoints only)")
    p.add_argument("--backend", help="checkpoints only: qnn or mediatek, to score an NPU scheme (needs --calib)")
    add_npu_arguments(p)
    p.add_argument("--target", help="a .pte on handheld's native runner instead of ExecuTorch's Python runtime: host, "
                   "qemu-aarch64 or android-arm64 (the aarch64 runner under qemu), adb[:SERIAL] (a phone over adb); "
                   "the report adds the Python runtime's perplexity on this machine for the same windows, and the "
                   "difference")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--baseline", metavar="OLD.json", help="an earlier `handheld eval --json` result on the same text "
                   "and windows: the quality gate")
    p.add_argument("--max-increase", type=float, metavar="PCT", help="with --baseline: exit 1 naming the program when "
                   "its perplexity is more than PCT percent above the baseline's")


def run(args: argparse.Namespace) -> None:
    from handheld.core.checkpoints import load_model
    from handheld.measure.quality import eager_logits_fn, evaluate
    from handheld.measure.quality_gate import check_quality, read_eval_result

    if (args.baseline is None) != (args.max_increase is None):
        raise HandheldError("--baseline and --max-increase go together")
    baseline = read_eval_result(Path(args.baseline)) if args.baseline else None  # a bad path fails before the work
    ids = _text_ids(args)
    logits_fn, mode, scheme = _logits_fn(args)
    reference_fn = eager_logits_fn(load_model(args.reference, max_seq_len=args.context)) if args.reference else None
    result = evaluate(logits_fn, ids, args.context, args.stride, reference_fn=reference_fn)
    record = {"model": str(args.model), "mode": mode, "scheme": scheme, "text": str(args.text),
              "text_sha256": hashlib.sha256(Path(args.text).read_bytes()).hexdigest(), **result.as_dict()}
    if args.target:
        record.update(_against_host(args, ids, result.perplexity))
    print(json.dumps(record, indent=2) if args.json else _summary(record))
    if baseline is not None:  # the verdict goes to stderr under --json, so stdout stays one JSON document
        print(check_quality(record, baseline, Path(args.baseline), args.max_increase),
              file=sys.stderr if args.json else sys.stdout)


def _summary(record: dict) -> str:
    line = (f"{record['model']} ({record['mode']}, scheme {record['scheme']}): perplexity {record['perplexity']:.4f} over "
            f"{record['tokens_scored']} tokens (context {record['context']}, stride {record['stride']})")
    if record.get("target"):
        line += (f" | on {record['target']}; ExecuTorch's Python runtime here: {record['host_perplexity']:.4f} "
                 f"({record['difference_from_host_pct']:+.3f}%)")
    if record["top1_agreement"] is not None:
        line += f" | top-1 agreement {record['top1_agreement']:.2%} | mean KL {record['mean_kl']:.5f} nats"
    return line


def _against_host(args: argparse.Namespace, ids: list[int], perplexity: float) -> dict:
    """The same windows through ExecuTorch's Python runtime on this machine: what the target's number differs from."""
    from handheld.measure.quality import evaluate, pte_logits_fn
    from handheld.runtime_bindings.python.program import PteProgram

    host = evaluate(pte_logits_fn(PteProgram(args.model)), ids, args.context, args.stride).perplexity
    return {"target": args.target, "host_perplexity": host, "difference_from_host_pct": 100 * (perplexity / host - 1)}


def _native_logits_fn(args: argparse.Namespace, program):
    """Windows scored by handheld's C++ runner on --target (the aarch64 one under qemu)."""
    import torch

    from handheld.measure.bench import connect_device
    from handheld.measure.quality import pte_logits_fn
    from handheld.runtime_bindings.native.build import build_runner
    from handheld.runtime_bindings.native.run import score_native
    from handheld.runtime_bindings.native.targets import get_target

    target, pte = get_target(args.target), Path(args.model)
    pte_logits_fn(program)  # refuses a program without every position's logits
    device = connect_device(args.target)  # None off a device; connected first: a missing phone fails at once
    binary = build_runner(target.name, log=lambda line: print(line, file=sys.stderr))
    if device is None:
        return lambda window: torch.from_numpy(score_native(binary, target.name, pte, window))
    device.install_runner(binary)
    device.install_program(pte)
    return lambda window: torch.from_numpy(device.score(pte, window))



def _text_ids(args: argparse.Namespace) -> list[int]:
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    text_path = Path(args.text)
    if not text_path.is_file():
        raise HandheldError(f"text file {text_path} not found")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise HandheldError(f"--max-tokens must be at least 2 (a token and its successor), got {args.max_tokens}")
    ids = load_tokenizer(args.tokenizer).encode(text_path.read_text(encoding="utf-8"), bos=False)
    return ids[: args.max_tokens] if args.max_tokens else ids


def _logits_fn(args: argparse.Namespace):
    from handheld.measure.quality import eager_logits_fn, pte_logits_fn

    if args.target and (is_npu_artefact(args.model) or args.backend or is_checkpoint_path(args.model)):
        raise HandheldError(f"--target runs a .pte on handheld's native runner; {args.model} is not a .pte")
    if is_npu_artefact(args.model) or args.backend:
        return _simulated_logits_fn(args)
    if is_checkpoint_path(args.model):
        prepared, _ = eager_model(args, max_seq_len=args.context, full_logits=True)
        return eager_logits_fn(prepared.model), "eager", prepared.label
    from handheld.runtime_bindings.python.program import PteProgram

    refuse_checkpoint_flags(args, "a .pte")
    program = PteProgram(args.model)
    if args.context > program.max_seq_len:
        raise HandheldError(f"--context {args.context} exceeds {args.model}'s max sequence length {program.max_seq_len}")
    if args.target:
        return _native_logits_fn(args, program), f".pte on {args.target}", program.metadata.scheme
    return pte_logits_fn(program), ".pte", program.metadata.scheme


def _simulated_logits_fn(args: argparse.Namespace):
    """An NPU scheme's converted graph run on the CPU: from a .pt2, or quantized here from a checkpoint."""
    from handheld.export.npu import NpuOptions, load_quantized

    if is_npu_artefact(args.model):
        for flag in ("scheme", "backend", "soc", "calib", "group_size"):
            if getattr(args, flag) is not None:
                raise HandheldError(f"--{flag.replace('_', '-')} does not apply to {args.model}: it is already quantized")
        quantized = load_quantized(Path(args.model))
        if args.context > quantized.options.seq_len:
            raise HandheldError(f"--context {args.context} exceeds {args.model}'s {quantized.options.seq_len} tokens per call")
    else:
        if args.group_size is not None:
            raise HandheldError(f"--group-size applies to xnnpack's 4-bit schemes, not --backend {args.backend}")
        options = NpuOptions(args.backend, args.scheme, args.soc, seq_len=args.context)
        options.resolve()
        quantized = npu_quantized(args, Path(args.model), options)
    return quantized.logits, "simulated", f"{quantized.options.backend} {quantized.options.scheme}"
