"""The Llama 3.2 1B shape on this machine: handheld's programs and the peers, in one run, one report.

Random weights (speed does not depend on values) in the exact 1B shape. Programs, all XNNPACK:
fp32, bf16, fp16 (stays 16-bit on x86), 8da4w (Llama 3.2 mobile scheme), 8da4w-c4 (its 4-bit classifier), the
SpinQuant layout (8da4w + online R4 Hadamard) and the QLoRA layout (8da4w + unmerged rank-16 adapters); peers on the
same checkpoint and threads: ExecuTorch's own `export_llm` recipe (8da4w g32 with a 4-bit classifier, 8-bit
embedding, custom SDPA and KV-cache ops) and llama.cpp Q4_0 and F16 (via llama-cpp-python; skipped with a message
when it is not installed). Each program is exported in a fresh process under `/usr/bin/time -v` (export wall time
and peak RSS join the report) and measured by `handheld bench`'s machinery (fresh process per run) plus the host's
memory bandwidth for the roofline; 8da4w and 8da4w-c4 run a second time on handheld's native C++ runner.

    python benchmarks/llama_1b_shape.py --work /tmp/1b-bench          # builds what is missing (~50 min), then measures

Programs made by other code (another export-code digest) are re-exported, never mixed into the table.
Writes the report (report.md, charts, results.json) in benchmarks/results/llama_1b_shape/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
SCHEMES = ("fp32", "bf16", "fp16", "8da4w", "8da4w-c4")
LAYOUTS = ("spinquant", "qlora")
NATIVE_ROWS = ("8da4w", "8da4w-c4")  # also measured on handheld's C++ runner
ET_RECIPE = "executorch_recipe"
LLAMA_CPP = HERE / "peers" / "llama_cpp_q4_0.py"
EXPORTS = "exports.json"  # in the work folder: each program's export cost


def log(message: str) -> None:
    print(message, flush=True)


def ensure_checkpoint(work: Path) -> Path:
    checkpoint = work / "checkpoint"
    if not checkpoint.exists():
        subprocess.run(["handheld", "init-random", "--model", "llama3.2-1b", "-o", str(checkpoint)], check=True)
    return checkpoint


def made_by_this_code(pte: Path) -> bool:
    """A program exported by other code (another commit's digest) is re-exported, never mixed into the table."""
    from handheld.core.pte_metadata import ProgramMetadata
    from handheld.export.provenance import export_provenance
    from handheld.runtime_bindings.pte_file import read_pte_structure

    if not pte.exists():
        return False
    recorded = ProgramMetadata.from_constant_methods(read_pte_structure(pte).constant_methods, str(pte)).provenance
    if recorded.get("code_digest") == export_provenance()["code_digest"]:
        return True
    log(f"{pte.name} was exported by other code ({recorded.get('commit', 'unknown')[:10]}): re-exporting")
    return False


def timed_export(command: list[str], pte: Path, exports: dict) -> None:
    """Run one export in a fresh process under /usr/bin/time -v; its wall time and peak RSS join the report."""
    from export_memory import time_v

    seconds, peak = time_v(command)
    exports[pte.stem] = {"export_wall_s": round(seconds, 1), "export_peak_rss_bytes": peak}
    pte.with_name(EXPORTS).write_text(json.dumps(exports, indent=2) + "\n")  # kept even if a later step fails
    log(f"  {pte.stem}: exported in {seconds:.0f} s, peak RSS {peak / 2**30:.2f} GiB")


def ensure_handheld_programs(checkpoint: Path, work: Path, max_seq_len: int, exports: dict) -> list[Path]:
    from layout_decode_cost import write_layout_checkpoint

    programs = []
    for name in SCHEMES + LAYOUTS:
        pte = work / f"{name}.pte"
        if not made_by_this_code(pte):
            source, scheme = checkpoint, ["--scheme", name]
            if name in LAYOUTS:  # pre-quantized checkpoints bring their own scheme
                source, scheme = work / f"{name}_checkpoint", []
                if not source.exists():
                    write_layout_checkpoint(checkpoint, source, name)
            log(f"exporting {name}")
            timed_export(["handheld", "export", "--checkpoint", str(source), *scheme, "--backend", "xnnpack",
                          "--max-seq-len", str(max_seq_len), "-o", str(pte)], pte, exports)
        programs.append(pte)
    return programs


def ensure_executorch_recipe(checkpoint: Path, work: Path, max_seq_len: int, exports: dict) -> Path:
    """ExecuTorch's own LLM export, as its docs give it for Llama 3.2 on XNNPACK."""
    pte = work / f"{ET_RECIPE}.pte"
    if pte.exists():
        return pte
    et_checkpoint = work / "checkpoint_for_executorch"
    if not et_checkpoint.exists():
        # Its loader insists on a stored classifier; handheld writes tied checkpoints without one.
        et_checkpoint.mkdir()
        state = torch.load(checkpoint / "consolidated.00.pth", weights_only=True, mmap=True)
        torch.save({**state, "output.weight": state["tok_embeddings.weight"]}, et_checkpoint / "consolidated.00.pth")
        (et_checkpoint / "params.json").write_text((checkpoint / "params.json").read_text())
    log("exporting ExecuTorch's recipe (~12 min)")
    timed_export([
        sys.executable, "-m", "executorch.extension.llm.export.export_llm",
        f"base.checkpoint={et_checkpoint / 'consolidated.00.pth'}", f"base.params={et_checkpoint / 'params.json'}",
        "model.use_kv_cache=True", "model.use_sdpa_with_kv_cache=True", "model.enable_dynamic_shape=True",
        "quantization.qmode=8da4w", "quantization.group_size=32", "quantization.embedding_quantize='8,0'",
        "backend.xnnpack.enabled=True", "backend.xnnpack.extended_ops=True",
        f"export.max_seq_length={max_seq_len}", f"export.max_context_length={max_seq_len}", f"export.output_name={pte}",
    ], pte, exports)
    return pte


def executorch_recipe_bytes_per_token(row: dict, checkpoint: Path) -> int:
    """Its file, less all but one row of its 8-bit embedding table (int8 values, one fp32 scale per row)."""
    from handheld.core.checkpoints import read_checkpoint

    args = read_checkpoint(checkpoint).args
    table = args.vocab_size * (args.dim + 4)
    return row["file_bytes"] - table + table // args.vocab_size


def llama_cpp_ggufs(checkpoint: Path, work: Path) -> list[Path]:
    """llama.cpp's files for the same checkpoint: Q4_0 (its 4-bit peer) and F16 (its 16-bit peer; x86 has no BF16
    GEMMs there); none when llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        log("llama-cpp-python is not installed: skipping the llama.cpp peer (pip install -e '.[peers]')")
        return []
    gguf_dir = work / "gguf"
    subprocess.run([sys.executable, str(LLAMA_CPP), "convert", "--checkpoint", str(checkpoint), "--out", str(gguf_dir)],
                   check=True)
    return [gguf_dir / "model-q4_0.gguf", gguf_dir / "model-f16.gguf"]


def llama_cpp_row(gguf: Path, work: Path, config) -> dict:
    out = work / f"llama_cpp_{gguf.stem}.json"
    subprocess.run([sys.executable, str(LLAMA_CPP), "bench", str(gguf), "--prompt-len", str(config.prompt_len),
                    "--gen-len", str(config.gen_len), "--runs", str(config.runs), "--warmup", str(config.warmup),
                    "--threads", str(config.threads), "--json", str(out)], check=True)
    return json.loads(out.read_text())["rows"][0]


def measure_1b_rows(programs: list[Path], native: list[Path], ggufs: list[Path], work: Path, config) -> list[dict]:
    """Every row's runs interleaved (benchmarks/rounds.py): handheld's programs, the native runner, llama.cpp."""
    from rounds import handheld_measurers, measure_in_rounds

    llama_cpp = [lambda once: [llama_cpp_row(gguf, work, once) for gguf in ggufs]]
    return measure_in_rounds(handheld_measurers(programs, native, log) + llama_cpp, config, log)


def main() -> None:
    from handheld.measure.bench import SCHEMA, BenchConfig
    from handheld.measure.host import host_info, measure_bandwidth_gbs
    from handheld.measure.report import write_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the checkpoint and programs (reused)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--gen-len", type=int, default=96)
    parser.add_argument("--max-seq-len", type=int, default=128, help="KV cache length of every program")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true", help="only handheld's programs")
    parser.add_argument("--out", type=Path, default=RESULTS / "llama_1b_shape", help="report folder")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs, warmup=args.warmup,
                         threads=args.threads)
    checkpoint = ensure_checkpoint(args.work)
    exports_file = args.work / EXPORTS  # export costs survive a rerun that reuses the programs
    exports = json.loads(exports_file.read_text()) if exports_file.exists() else {}
    programs = ensure_handheld_programs(checkpoint, args.work, args.max_seq_len, exports)
    if not args.no_peers:
        programs.append(ensure_executorch_recipe(checkpoint, args.work, args.max_seq_len, exports))
    bandwidth = measure_bandwidth_gbs(args.threads)
    log(f"memory bandwidth (triad, {args.threads} threads): {bandwidth:.1f} GB/s")
    ggufs = [] if args.no_peers else llama_cpp_ggufs(checkpoint, args.work)
    rows = measure_1b_rows(programs, [args.work / f"{name}.pte" for name in NATIVE_ROWS], ggufs, args.work, config)
    from handheld.measure.host import run_record

    results = {"schema": SCHEMA, "made_by": run_record(), "host": host_info(), "memory_bandwidth_gbs": bandwidth,
               "bandwidth_threads": args.threads, "rows": rows}
    for row in results["rows"]:
        row.update(exports.get(row["name"].removesuffix(" [native runner]"), {}))
        if row["name"] == ET_RECIPE:
            row.update(scheme="8da4w (ExecuTorch recipe)", backend="xnnpack",
                       bytes_per_token=executorch_recipe_bytes_per_token(row, checkpoint))
    notes = ["Model: Llama 3.2 1B shape with random weights (speed does not depend on values; no quality here)",
             "Runs interleaved: each round runs every program and peer once, in the table's order",
             f"Programs: max sequence length {args.max_seq_len}; peers on the same checkpoint and threads"]
    report = write_report(results, args.out, notes=notes, title="Llama 3.2 1B shape: handheld and peers",
                          sections=[export_section(exports)])
    log(report.read_text())
    log(native_runner_note(args.work / f"{ET_RECIPE}.pte") if not args.no_peers else "")


def export_section(exports: dict) -> str:
    """Export cost of every program in this run, each a fresh process under /usr/bin/time -v."""
    lines = ["Export cost (each program exported in a fresh process under `/usr/bin/time -v`, this run):", "",
             "| program | export wall s | export peak RSS GiB |", "|---|---:|---:|"]
    lines += [f"| {name} | {cost['export_wall_s']:.0f} | {cost['export_peak_rss_bytes'] / 2**30:.2f} |"
              for name, cost in exports.items()]
    return "\n".join(lines)


def native_runner_note(et_recipe: Path) -> str:
    """Whether ExecuTorch's own recipe runs on the wheel's C++ runtime (it needs its llama:: kernels)."""
    from handheld.core.errors import HandheldError
    from handheld.decoding.generation import synthetic_prompt
    from handheld.runtime_bindings.native.build import build_runner
    from handheld.runtime_bindings.native.run import run_native

    try:
        run_native(build_runner("host", log=log), "host", et_recipe, synthetic_prompt(4), 2, threads=1)
    except HandheldError as e:
        return f"ExecuTorch's recipe on the native runner: {e}"
    return "ExecuTorch's recipe on the native runner: runs"


if __name__ == "__main__":
    main()
