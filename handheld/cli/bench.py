"""`handheld bench`: measure `.pte` programs (load, TTFT, prefill/decode tok/s, peak RSS), optionally gated."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from handheld.cli._shared import add_gate_arguments, apply_gate, read_baseline
from handheld.measure.bench import RUNNERS, BenchConfig

HELP = "measure .pte programs: load, TTFT, prefill and decode tok/s, peak RSS, file size"
DESCRIPTION = ("Runs each program --warmup + --runs times, each run in a fresh process (so peak RSS is that program's "
               "own), on a synthetic prompt (no tokenizer needed), generating exactly --gen-len tokens greedily. Rates "
               "follow ExecuTorch's LLM runner: prefill = prompt tokens / prefill time, decode = decode steps / decode "
               "time. Prints median, min, max and coefficient of variation; --json writes self-describing rows. --target adb "
               "runs on an Android phone over adb (see README: tested against a fake adb only).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig
    p.add_argument("models", nargs="+", metavar="MODEL.pte")
    p.add_argument("--prompt-len", type=int, default=d.prompt_len, help=f"prompt tokens (default {d.prompt_len})")
    p.add_argument("--gen-len", type=int, default=d.gen_len, help=f"generated tokens (default {d.gen_len})")
    p.add_argument("--runs", type=int, default=d.runs, help=f"measured runs per program (default {d.runs})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"unmeasured runs first (default {d.warmup})")
    p.add_argument("--threads", type=int, help="runtime threads (default: the cores this process may use; on a "
                   "device, its big cores)")
    p.add_argument("--runner", help=f"{' or '.join(RUNNERS)}: ExecuTorch's Python runtime, or handheld's C++ runner "
                   "(built on first use; default: python on host, native elsewhere)")
    p.add_argument("--target", default=d.target,
                   help="host (this machine); qemu-aarch64 or android-arm64 (the aarch64 runner, or its self-contained "
                   "Android bundle, under qemu user-mode emulation: figures are labelled emulated); adb[:SERIAL] "
                   "(an Android device over adb, threads pinned to its big cores)")
    p.add_argument("--cool-down", type=float, default=d.cool_down_s, metavar="SECONDS",
                   help="wait this long before each run after the first (default 0)")
    p.add_argument("--count-work", action="store_true",
                   help="native runner: one more run counting instructions (valgrind) or emulated blocks (qemu), "
                   "a deterministic figure the regression gate also checks")
    p.add_argument("--no-bandwidth", action="store_true", help="skip measuring memory bandwidth (no roofline)")
    p.add_argument("--json", type=Path, help="write the results here")
    add_gate_arguments(p)


def run(args: argparse.Namespace) -> None:
    from handheld import api
    from handheld.core.atomic import atomic_path, refuse_overwriting_inputs

    if args.json:  # before any work: --json must not overwrite the baseline or a program it measures
        refuse_overwriting_inputs(args.json, [args.baseline, *args.models])
    baseline = read_baseline(args)
    results = api.bench_report(args.models, prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs,
                               warmup=args.warmup, threads=args.threads, runner=args.runner, target=args.target,
                               count_work=args.count_work, cool_down_s=args.cool_down, bandwidth=not args.no_bandwidth,
                               log=print)
    print(summary_lines(results))
    if args.json:
        from handheld.measure.host import run_record

        with atomic_path(args.json) as tmp:  # the command line and commit too: a results file says how it was made
            tmp.write_text(json.dumps(results | {"made_by": run_record()}, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    apply_gate(results, baseline, args.max_regression, args.gate)


def summary_lines(results: dict) -> str:
    lines = []
    for row in results["rows"]:
        s = row["stats"]
        lines.append(f"{row['name']} ({row['scheme']}, {row['backend']}): decode {s['decode_tok_s']['median']:.2f} tok/s "
                     f"(cv {s['decode_tok_s']['cv']:.1%}), prefill {s['prefill_tok_s']['median']:.1f} tok/s, "
                     f"TTFT {s['ttft_s']['median']:.3f} s, peak RSS {s['peak_rss_bytes']['median'] / 2**20:.0f} MiB, "
                     f"load {s['load_s']['median']:.2f} s, file {row['file_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)
