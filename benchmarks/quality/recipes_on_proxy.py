"""The quantization recipes on the proxy model, side by side: float, 8da4w RTN, SpinQuant (+RTN, +GPTQ),
and QAT / QAT+LoRA against a float model fine-tuned on the same data for the same steps.

Every row is scored twice on the proxy's shipped test text (Python 3.11 docs, held out by file): in
eager PyTorch and through its exported XNNPACK `.pte`. Calibration and fine-tuning text is the proxy's
training split (Debian's python3.11-doc), never the test text.

    python benchmarks/quality/recipes_on_proxy.py --work /tmp/recipes [--sq-steps 100 --qat-steps 150]

Writes benchmarks/results/recipes_proxy.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "proxy"))

CONTEXT, STRIDE = 256, 128


def score(checkpoint: Path, scheme: str | None, pte: Path, test_ids: list[int]) -> dict:
    from handheld.core.checkpoints import read_checkpoint
    from handheld.measure.quality import eager_logits_fn, evaluate, pte_logits_fn
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program
    from handheld.quant.schemes import prepare_model
    from handheld.runtime_bindings.python.program import PteProgram

    prepared = prepare_model(read_checkpoint(checkpoint), scheme, max_seq_len=CONTEXT, full_logits=True)
    eager = evaluate(eager_logits_fn(prepared.model), test_ids, CONTEXT, STRIDE).perplexity
    if not pte.is_file():
        options = ExportOptions(scheme=scheme, max_seq_len=CONTEXT, full_logits=True)
        export_program(checkpoint, pte, options, log=lambda m: None)
    through_pte = evaluate(pte_logits_fn(PteProgram(pte)), test_ids, CONTEXT, STRIDE).perplexity
    print(f"  {pte.stem}: eager {eager:.3f} | .pte {through_pte:.3f}", flush=True)
    return {"eager_ppl": eager, "pte_ppl": through_pte, "file_bytes": pte.stat().st_size}


def timed(label: str, fn):
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.0f} s", flush=True)
    return result, seconds


def train_recipes(args: argparse.Namespace, proxy: Path, train_text: Path, work: Path) -> dict[str, float]:
    """Each recipe's checkpoint in `work` (kept: a rerun scores without training again); its seconds by name."""
    from handheld.training.distributed import Group
    from handheld.training.loop import TrainConfig
    from handheld.training.qat import QatOptions, run_qat
    from handheld.training.spinquant import SpinQuantOptions, run_spinquant

    times = {}
    for weight_quant in ("rtn", "gptq"):
        out = work / f"spinquant_{weight_quant}"
        if not out.exists():
            options = SpinQuantOptions(checkpoint=proxy, calib=train_text, output=out, steps=args.sq_steps, lr=args.sq_lr,
                                       samples=256, batch_size=4, weight_quant=weight_quant)
            result, times[f"spinquant_{weight_quant}"] = timed(f"SpinQuant+{weight_quant}", lambda: run_spinquant(options, Group()))
            print(f"  quantized loss {result.first_loss:.4f} -> {result.last_loss:.4f}")
    train = TrainConfig(steps=args.qat_steps, lr=3e-4, batch_size=16, grad_accum=1, warmup=10, eval_every=50, save_every=50)
    for phase in ("float", "qat", "both"):
        out = work / f"finetune_{phase}"
        if not out.exists():
            options = QatOptions(checkpoint=proxy, data=train_text, output=out, phase=phase, train=train, lora_lr=1e-3)
            results, times[f"finetune_{phase}"] = timed(f"fine-tune {phase}", lambda: run_qat(options, Group()))
            for r in results:
                print(f"  {r.phase}: loss {r.first_loss:.4f} -> {r.last_loss:.4f}, validation {r.validation[-1][1]:.4f}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sq-steps", type=int, default=100)
    parser.add_argument("--sq-lr", type=float, default=1.5)
    parser.add_argument("--qat-steps", type=int, default=150)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "recipes_proxy.json")
    args = parser.parse_args()

    from corpus import load_splits
    from handheld.core.fetch.catalog import proxy_dir
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    proxy = proxy_dir()
    train_text = work / "train.txt"
    if not train_text.is_file():
        train_text.write_text(load_splits()["train"], encoding="utf-8")
    test_ids = load_tokenizer(proxy / "tokenizer.model").encode((proxy / "test.txt").read_text(encoding="utf-8"))

    times = train_recipes(args, proxy, train_text, work)

    rows = {}
    plan = [
        ("float", proxy, "fp32"), ("8da4w RTN", proxy, "8da4w"),
        ("SpinQuant + RTN", work / "spinquant_rtn", None), ("SpinQuant + GPTQ", work / "spinquant_gptq", None),
        ("fine-tuned float", work / "finetune_float", "fp32"), ("fine-tuned float, 8da4w RTN", work / "finetune_float", "8da4w"),
        ("QAT", work / "finetune_qat", None), ("QAT + LoRA", work / "finetune_both", None),
    ]
    for label, checkpoint, scheme in plan:
        name = label.replace(" ", "_").replace(",", "").replace("+", "").replace("__", "_").lower()
        rows[label] = score(checkpoint, scheme, work / f"{name}.pte", test_ids)

    def recovered(base: str, rtn: str, method: str, key: str) -> float:
        gap = rows[rtn][key] - rows[base][key]
        return (rows[rtn][key] - rows[method][key]) / gap if gap else float("nan")

    summary = {
        f"{m} recovers (of RTN's gap), {key}": recovered(base, rtn, m, key)
        for base, rtn, methods in (("float", "8da4w RTN", ("SpinQuant + RTN", "SpinQuant + GPTQ")),
                                   ("fine-tuned float", "fine-tuned float, 8da4w RTN", ("QAT", "QAT + LoRA")))
        for m in methods for key in ("eager_ppl", "pte_ppl")
    }
    from handheld.measure.host import run_record

    report = {"made_by": run_record(), "model": "handheld proxy (handheld/proxy, trained on the Python 3.11 docs)",
              "test_text": "handheld/proxy/test.txt",
              "context": CONTEXT, "stride": STRIDE, "sq_steps": args.sq_steps, "sq_lr": args.sq_lr, "qat_steps": args.qat_steps,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "rows": rows, "recovered": summary, "seconds": times}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("\n| recipe | eager ppl | .pte ppl | file KiB |\n|---|---:|---:|---:|")
    for label, r in rows.items():
        print(f"| {label} | {r['eager_ppl']:.3f} | {r['pte_ppl']:.3f} | {r['file_bytes'] / 1024:.0f} |")
    for key, value in summary.items():
        print(f"{key}: {value:.0%}")


if __name__ == "__main__":
    main()
