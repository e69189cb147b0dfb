"""`handheld eval`: perplexity of a `.pte` or a checkpoint on a text, and agreement with a float reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from handheld.cli._shared import add_group_size, add_npu_arguments
from handheld.core.defaults import KV_CACHE, KV_CACHES
from handheld.core.errors import HandheldError

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
    p.add_argument("--kv-cache", default=KV_CACHE, help=f"checkpoints only: {' or '.join(KV_CACHES)}; int8 scores "
                   "through ExecuTorch's quantized KV cache, as `handheld export --kv-cache int8` runs (default fp32)")
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
    from handheld import api
    from handheld.measure.quality_gate import check_quality, read_eval_result

    if (args.baseline is None) != (args.max_increase is None):
        raise HandheldError("--baseline and --max-increase go together")
    baseline = read_eval_result(Path(args.baseline)) if args.baseline else None  # a bad path fails before the work
    result = api.evaluate(
        args.model, args.text, tokenizer=args.tokenizer, context=args.context, stride=args.stride,
        max_tokens=args.max_tokens, reference=args.reference, scheme=args.scheme, group_size=args.group_size,
        backend=args.backend, soc=args.soc, calib=args.calib, calib_sequences=args.calib_sequences, target=args.target,
        kv_cache=args.kv_cache,
        log=lambda line: print(line, file=sys.stderr, flush=True))
    record = result.as_dict()
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
