"""Where export time goes: export a random-weight Llama shape and report wall time per stage, XNNPACK
partition count and what was left undelegated.

    python benchmarks/export_time.py --dim 96 --layers 4 --scheme 8da4w [--profile out.prof] [--json out.json]

Run it alone (two torch jobs on 2 cores slow each other many-fold). Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from handheld.core.checkpoints import random_state, write_checkpoint
from handheld.core.llama.config import ModelArgs
from handheld.export.options import ExportOptions
from handheld.export.program import export_program
from handheld.measure.host import host_info, run_record

HERE = Path(__file__).resolve().parent


def shape(dim: int, layers: int) -> ModelArgs:
    heads = max(1, dim // 32)
    return ModelArgs(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=max(1, heads // 2), vocab_size=512,
                     hidden_dim=dim * 8 // 3 // 32 * 32)


def run(args: argparse.Namespace) -> dict:
    model_args = shape(args.dim, args.layers)
    stages: list[tuple[str, float]] = []
    started = time.perf_counter()

    def log(message: str) -> None:
        stages.append((message, time.perf_counter() - started))

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "ckpt"
        checkpoint.mkdir()
        write_checkpoint(checkpoint, model_args, random_state(model_args, seed=0, dtype=torch.float32), "meta")
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        options = ExportOptions(scheme=args.scheme, max_seq_len=args.max_seq_len)
        result = export_program(checkpoint, Path(tmp) / "m.pte", options, log=log)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
    spans = [(name, end - begin) for (name, begin), (_, end) in zip(stages, stages[1:] + [("end", result.seconds)])]
    counts = result.op_counts
    return {
        "shape": {"dim": args.dim, "layers": args.layers}, "scheme": args.scheme, "max_seq_len": args.max_seq_len,
        "seconds": result.seconds, "seconds_per_layer": result.seconds / args.layers,
        "stages": [{"stage": name, "seconds": round(sec, 2)} for name, sec in spans],
        "partitions": counts.get("partitions", {}),
        "undelegated_ops": counts["portable"], "file_bytes": result.file_bytes,
        "commit": _commit(), "host": host_info(), "python": platform.python_version(), "made_by": run_record(),
    }


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--scheme", default="8da4w")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--profile", help="write a cProfile file here")
    parser.add_argument("--json", type=Path, help="append the result to this JSON list")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result | {"host": "..."}, indent=2))
    if args.json:
        rows = json.loads(args.json.read_text()) if args.json.is_file() else []
        args.json.write_text(json.dumps(rows + [result], indent=2) + "\n")


if __name__ == "__main__":
    main()
