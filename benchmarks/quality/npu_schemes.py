"""NPU schemes' quality, simulated on the CPU, against float and XNNPACK 8da4w, with and without SpinQuant.

Rows: float, XNNPACK 8da4w (eager torchao, what its `.pte` computes), QNN 16a4w / 16a8w / 8a8w and MediaTek
a16w4 / a16w8 / a8w8 (each calibrated on the proxy's calib.txt and run as its converted q/dq graph), each on
the float checkpoint and on a SpinQuant one (R1/R2 learned with `handheld spinquant --weight-quant float`,
folded into float weights; the same checkpoint feeds every scheme). All rows score the same tokens of the
proxy's test.txt (context 256, stride 128) against the float model: perplexity, top-1 agreement, mean KL.

    nice python benchmarks/quality/npu_schemes.py --work /tmp/npu-quality [--model proxy] [--workers 2]
    python benchmarks/quality/npu_schemes.py --render benchmarks/results/npu_schemes_smollm2-135m-instruct.json

Writes benchmarks/results/npu_schemes_<model>.json (self-describing: commit, machine, versions, settings) and
prints the Markdown table BENCHMARKS.md shows (`--render` prints it again from a results file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTEXT, STRIDE = 256, 128
CALIB_SEQUENCES = 16
SPINQUANT = {"steps": 8, "batch_size": 2, "seq_len": 128}  # the demo's brief run (`handheld demo`)
ROWS = [("float", "fp32"), ("xnnpack", "8da4w"), ("qnn", "16a4w"), ("qnn", "16a8w"), ("qnn", "8a8w"),
        ("mediatek", "a16w4"), ("mediatek", "a16w8"), ("mediatek", "a8w8")]
MODELS = {"smollm2-135m-instruct": 4096, "proxy": 4096}  # model -> evaluation tokens


def checkpoint_of(model: str) -> Path:
    from handheld.core.fetch.catalog import fetch, proxy_dir

    return proxy_dir() if model == "proxy" else fetch(model)


def spinquant_checkpoint(source: Path, work: Path) -> Path:
    from handheld.core.fetch.catalog import proxy_dir
    from handheld.training.distributed import process_group
    from handheld.training.options import SpinQuantOptions
    from handheld.training.spinquant import run_spinquant

    out = work / "spinquant-float"
    if not (out / "params.json").is_file():
        options = SpinQuantOptions(checkpoint=source, calib=proxy_dir() / "calib.txt", output=out,
                                   weight_quant="float", **SPINQUANT)
        with process_group() as group:
            run_spinquant(options, group, progress=False)
    return out


def score(job: tuple[str, str, str, bool, str, int]) -> dict:
    """One row, in a worker process with one thread."""
    import torch

    from handheld.core.fetch.catalog import proxy_dir
    from handheld.core.checkpoints import load_model, own_tokenizer_path
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.measure.quality import eager_logits_fn, evaluate

    torch.set_num_threads(1)
    backend, scheme, checkpoint, spinquant, reference, tokens = job
    tokenizer_path = own_tokenizer_path(Path(reference))
    tokenizer = load_tokenizer(tokenizer_path)
    ids = tokenizer.encode((proxy_dir() / "test.txt").read_text(encoding="utf-8"), bos=False)[:tokens]
    started = time.perf_counter()
    logits_fn = _logits_fn(backend, scheme, Path(checkpoint), tokenizer_path)
    reference_fn = eager_logits_fn(load_model(reference, max_seq_len=CONTEXT))
    result = evaluate(logits_fn, ids, CONTEXT, STRIDE, reference_fn=reference_fn, progress=False)
    row = {"backend": backend, "scheme": scheme, "spinquant": spinquant, **result.as_dict(),
           "seconds": round(time.perf_counter() - started, 1)}
    print(f"  {backend:8} {scheme:6} spinquant={spinquant!s:5} ppl {result.perplexity:.3f} "
          f"top-1 {result.top1_agreement:.2%} KL {result.mean_kl:.4f} ({row['seconds']:.0f} s)", flush=True)
    return row


def _logits_fn(backend: str, scheme: str, checkpoint: Path, tokenizer_path: Path):
    from handheld.core.fetch.catalog import proxy_dir
    from handheld.core.checkpoints import read_checkpoint
    from handheld.export.npu import NpuOptions, calibrate_checkpoint
    from handheld.measure.quality import eager_logits_fn
    from handheld.quant.schemes import prepare_model

    if backend in ("float", "xnnpack"):
        prepared = prepare_model(read_checkpoint(checkpoint), scheme, max_seq_len=CONTEXT, full_logits=True)
        return eager_logits_fn(prepared.model)
    quantized = calibrate_checkpoint(checkpoint, NpuOptions(backend, scheme, seq_len=CONTEXT), proxy_dir() / "calib.txt",
                                     tokenizer_path, CALIB_SEQUENCES, log=lambda _: None)
    return quantized.logits


def describe_run(model: str, checkpoint: Path, tokens: int) -> dict:
    import executorch  # noqa: F401
    import torch
    import torchao
    from importlib.metadata import version

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"model": model, "checkpoint": str(checkpoint), "commit": git("rev-parse", "HEAD") or os.environ.get("SOURCE_COMMIT"),
            "dirty": bool(git("status", "--porcelain")) if git("rev-parse", "HEAD") else os.environ.get("SOURCE_DIRTY") == "1", "machine": {"cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version()}, "versions": {"torch": torch.__version__, "torchao": torchao.__version__,
            "executorch": version("executorch")}, "eval": {"text": "handheld/proxy/test.txt", "tokens": tokens,
            "context": CONTEXT, "stride": STRIDE, "reference": "float checkpoint"},
            "calibration": {"text": "handheld/proxy/calib.txt", "sequences": CALIB_SEQUENCES, "tokens_each": CONTEXT},
            "spinquant": {**SPINQUANT, "weight_quant": "float (R1/R2 folded, R4 unfolded)", "calib": "handheld/proxy/calib.txt"}}


def markdown(results: dict) -> str:
    """One line per scheme: without and with SpinQuant side by side (perplexity, top-1 agreement, KL)."""
    rows = {(r["backend"], r["scheme"], r["spinquant"]): r for r in results["rows"]}
    lines = ["| backend | scheme | perplexity | top-1 vs float | KL nats | perplexity, SpinQuant | top-1, SpinQuant | KL, SpinQuant |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for backend, scheme in ROWS:
        cells = []
        for spinquant in (False, True):
            row = rows.get((backend, scheme, spinquant))
            cells += ([f"{row['perplexity']:.3f}", f"{row['top1_agreement']:.1%}", f"{row['mean_kl']:.4f}"] if row
                      else ["–", "–", "–"])
        lines.append(f"| {backend} | {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", type=Path, help="print the Markdown table of a results file and exit")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--model", default="smollm2-135m-instruct", choices=list(MODELS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    if args.work is None:
        parser.error("--work is required to run")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = checkpoint_of(args.model)
    rotated = spinquant_checkpoint(checkpoint, args.work)
    print(f"SpinQuant float checkpoint: {rotated} ({time.perf_counter() - started:.0f} s)", flush=True)
    tokens = MODELS[args.model]
    jobs = [(b, s, str(c), sq, str(checkpoint), tokens) for sq, c in ((False, checkpoint), (True, rotated))
            for b, s in ROWS if not (sq and b == "float")]
    out = ROOT / "benchmarks" / "results" / f"npu_schemes_{args.model}.json"
    from handheld.measure.host import run_record

    results = {"made_by": run_record(), **describe_run(args.model, checkpoint, tokens), "complete": False, "rows": []}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for future in as_completed([pool.submit(score, job) for job in jobs]):
            results["rows"].append(future.result())  # written row by row: a long run keeps what it measured
            results["wall_seconds"] = round(time.perf_counter() - started)
            results["complete"] = len(results["rows"]) == len(jobs)
            out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{markdown(results)}\nwrote {out}")


if __name__ == "__main__":
    main()
