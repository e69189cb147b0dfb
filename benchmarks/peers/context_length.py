"""Decode and prefill at chat length: SmolLM2 8da4w programs by KV-cache design and capacity, against llama.cpp.

Four programs from the shipped GGUF, all 8da4w: a 128-slot indexed cache (the old default), a 2,048-slot
indexed cache (attention over every slot, filled or not), a 2,048-slot cache through ExecuTorch's LLM ops
(`update_cache` + `custom_sdpa`: attention over the filled slots only; the default now), and the same with
`--kv-cache int8` (ExecuTorch's quantized cache, `custom_quantized_sdpa`). Each runs on handheld's
native runner at prompt 64 and prompt 1,024 (where it fits), 64 generated tokens, and llama.cpp Q4_0 from the
same weights at the same lengths and threads; rows are measured in interleaved rounds (benchmarks/rounds.py).

    python benchmarks/peers/context_length.py --work /tmp/ctx      # ~20 min here: 4 exports, then the rounds

Writes benchmarks/results/context_length_smollm2.json. Needs the peers extra (llama-cpp-python built for this
CPU). Run it alone: two torch jobs on 2 cores slow each other many-fold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "context_length_smollm2.json"
# name: (cache slots, through ExecuTorch's LLM ops, what the cache stores)
PROGRAMS = {"8da4w ctx128 indexed": (128, False, "fp32"), "8da4w ctx2048 indexed": (2048, False, "fp32"),
            "8da4w ctx2048": (2048, True, "fp32"), "8da4w ctx2048 int8 cache": (2048, True, "int8")}
PROMPT_LENS = (64, 1024)


def log(message: str) -> None:
    print(message, flush=True)


def ensure_programs(gguf: Path, work: Path) -> tuple[dict[str, Path], list[dict]]:
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    paths, exports = {}, []
    for name, (slots, llm_ops, kv_cache) in PROGRAMS.items():
        pte = work / (name.replace(" ", "_") + ".pte")
        if not pte.exists():
            log(f"exporting {name}")
            options = ExportOptions(scheme="8da4w", max_seq_len=slots, llm_kv_ops=llm_ops, kv_cache=kv_cache)
            result = export_program(gguf, pte, options, log=lambda line: None)
            exports.append({"name": name, "seconds": round(result.seconds, 1), "file_bytes": result.file_bytes})
        paths[name] = pte
    return paths, exports


def rows_at(prompt_len: int, paths: dict[str, Path], q4_0: Path, args) -> list[dict]:
    from handheld.measure.bench import BenchConfig, run_bench

    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from llama_cpp_q4_0 import bench
    from rounds import measure_in_rounds

    fitting = [path for name, path in paths.items() if PROGRAMS[name][0] >= prompt_len + args.gen_len]
    config = BenchConfig(prompt_len=prompt_len, gen_len=args.gen_len, runs=args.runs, warmup=args.warmup,
                         threads=args.threads, runner="native")

    def native(once) -> list[dict]:
        return run_bench(fitting, once, progress=log)["rows"]

    def peer(once) -> list[dict]:
        row = bench(q4_0, prompt_len, args.gen_len, once.runs, once.warmup, args.threads)
        return [row | {"name": "llama.cpp Q4_0"}]

    return measure_in_rounds([native, peer], config, log)


def main() -> None:
    from handheld.export.provenance import export_provenance
    from handheld.measure.host import host_info

    sys.path.insert(0, str(HERE.parent / "quality"))
    sys.path.insert(0, str(HERE))
    from recipes_smollm2 import smollm2
    from smollm2_speed import ensure_ggufs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for programs and GGUF files (reused)")
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(HERE.parent.parent)})")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    gguf = smollm2()[0]
    paths, exports = ensure_programs(gguf, args.work)
    q4_0 = ensure_ggufs(gguf, args.work)["Q4_0"]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = [row | {"prompt_len": n} for n in PROMPT_LENS for row in rows_at(n, paths, q4_0, args)]
    results = {"producer": "benchmarks/peers/context_length.py", "arguments": sys.argv[1:], "started": started,
               "provenance": export_provenance(), "host": host_info(), "programs": {name: dataclasses.asdict(_Program(*spec)) for name, spec in PROGRAMS.items()},
               "exports": exports, "rows": rows}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for row in rows:
        stats = row["stats"]
        log(f"{row['name']:<24} prompt {row['prompt_len']:>5}: decode {stats['decode_tok_s']['median']:7.1f} tok/s, "
            f"prefill {stats['prefill_tok_s']['median']:7.1f} tok/s, peak RSS {stats['peak_rss_bytes']['median'] / 2**20:.0f} MiB")
    log(f"wrote {args.out}")


@dataclasses.dataclass
class _Program:
    cache_slots: int
    llm_kv_ops: bool
    kv_cache: str


if __name__ == "__main__":
    main()
