"""Export cost at the real Llama 3.2 sizes: wall time and peak RSS of `handheld export` (under
`/usr/bin/time -v`, a fresh process) for the 1B and 3B shapes, then the program's own decode rate and RSS.

Random weights in the exact shapes (speed and memory do not depend on values), or a real checkpoint by path.

    python benchmarks/export_memory.py --work /tmp/export-memory --run llama3.2-1b:8da4w llama3.2-3b:8da4w
    python benchmarks/export_memory.py --work /tmp/export-memory --run ~/.cache/handheld/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf:8da4w

Appends one row per export to benchmarks/results/export_memory.json (commit, host and CPU flags in each row).
Run it alone: a second torch job on 2 cores slows both many-fold.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "export_memory.json"


def time_v(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child run under /usr/bin/time -v."""
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) * 1024


def checkpoint_bytes(checkpoint: Path) -> int:
    return checkpoint.stat().st_size if checkpoint.is_file() else sum(f.stat().st_size for f in checkpoint.iterdir())


def export_row(work: Path, model: str, scheme: str, max_seq_len: int, bench_runs: int) -> dict:
    from handheld.export.provenance import export_provenance
    from handheld.measure.host import host_info, run_record

    checkpoint = Path(model).expanduser()
    if checkpoint.exists():  # a real checkpoint (a directory or a .gguf file): named by its file name
        model = checkpoint.stem
    else:  # a catalog shape with random weights
        checkpoint = work / f"{model}-checkpoint"
        if not checkpoint.exists():
            subprocess.run(["handheld", "init-random", "--model", model, "-o", str(checkpoint)], check=True)
    pte = work / f"{model}-{scheme}.pte"
    pte.unlink(missing_ok=True)
    seconds, peak = time_v(["handheld", "export", "--checkpoint", str(checkpoint), "--scheme", scheme,
                            "--max-seq-len", str(max_seq_len), "-o", str(pte)])
    row = {"model": model, "scheme": scheme, "max_seq_len": max_seq_len, "export_wall_s": seconds,
           "export_peak_rss_bytes": peak, "checkpoint_bytes": checkpoint_bytes(checkpoint),
           "file_bytes": pte.stat().st_size, "provenance": export_provenance(), "host": host_info(),
           "made_by": run_record()}
    print(f"{model} {scheme}: export {seconds:.0f} s, peak RSS {peak / 2**30:.2f} GiB", flush=True)
    if bench_runs:
        out = work / f"{model}-{scheme}.bench.json"
        subprocess.run(["handheld", "bench", str(pte), "--runner", "native", "--prompt-len", "32", "--gen-len", "64",
                        "--runs", str(bench_runs), "--warmup", "1", "--threads", "2", "--json", str(out)], check=True)
        stats = json.loads(out.read_text())["rows"][0]["stats"]
        row["bench"] = {"runner": "native", "prompt_len": 32, "gen_len": 64, "threads": 2,
                        **{m: stats[m] for m in ("decode_tok_s", "prefill_tok_s", "ttft_s", "peak_rss_bytes")}}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for checkpoints and programs (reused)")
    parser.add_argument("--run", nargs="+", required=True, metavar="MODEL:SCHEME")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--bench-runs", type=int, default=3, help="native-runner runs of each program (0: none)")
    args = parser.parse_args()
    from handheld.core.atomic import atomic_path

    args.work.mkdir(parents=True, exist_ok=True)
    for item in args.run:
        model, _, scheme = item.partition(":")
        row = export_row(args.work, model, scheme or "8da4w", args.max_seq_len, args.bench_runs)
        report = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
        report["rows"].append(row)
        with atomic_path(RESULTS) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
