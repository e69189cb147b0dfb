"""The quantization recipes judged on the real model, SmolLM2-135M-Instruct, with fair baselines and seeds.

Rows (`recipe`): float, rtn (8da4w round-to-nearest), gptq (GPTQ alone, no rotations), spinquant-rtn,
spinquant-gptq, float-ft (float fine-tuned for as many optimizer steps, tokens and data as QAT+LoRA's two
phases together: the fair baseline), float-ft-rtn (its RTN), qat (QAT alone, the same total steps), qat-lora
(QAT then LoRA, half the steps each). Trained rows run once per seed (data order, LoRA init, initial
Hadamards, calibration samples). Calibration and fine-tuning read the proxy's calib.txt (Debian's Python
docs); every row is scored on its test.txt (held out by file), the same tokens, context and stride.

Scored in eager PyTorch on the exact quantized model each recipe exports (its `.pte`'s oracle: the
parity tests hold every recipe's program within 0.25x of its quantization error from it); `--pte` also
exports and scores each recipe's first seed through its XNNPACK `.pte` (~2-4 min per export here).

    python benchmarks/quality/recipes_smollm2.py --work /tmp/recipes [--seeds 0 1 2] [--pte]

Rows are appended to benchmarks/results/recipes_smollm2.json as they finish (a rerun skips finished rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "recipes_smollm2.json"
CONTEXT, STRIDE, EVAL_TOKENS = 256, 128, 2048
SEQ_LEN, BATCH = 128, 4


@dataclass(frozen=True)
class Budget:
    ft_steps: int  # per fine-tuning phase of QAT+LoRA; the single-phase rows get twice as many
    sq_steps: int
    sq_batch: int
    sq_seq_len: int
    sq_samples: int


def smollm2() -> tuple[Path, Path, Path]:
    from handheld.core.fetch.catalog import cached_path, fetch, get_pretrained, proxy_dir

    entry = get_pretrained("smollm2-135m-instruct")
    path = cached_path(entry) if cached_path(entry).is_file() else fetch("smollm2-135m-instruct")
    return path, proxy_dir() / "calib.txt", proxy_dir() / "test.txt"


def perplexity(checkpoint: Path, scheme: str | None, test_ids: list[int]) -> float:
    from handheld.core.checkpoints import read_checkpoint
    from handheld.measure.quality import eager_logits_fn, evaluate
    from handheld.quant.schemes import prepare_model

    def model():
        return prepare_model(read_checkpoint(checkpoint), scheme, max_seq_len=CONTEXT, full_logits=True).model.eval()

    try:
        fast = float_equivalent(model(), check_ids=test_ids[:CONTEXT])
    except RuntimeError as e:  # not close enough on the check window: score with torchao's own eager model
        print(f"{e}: scoring with torchao's eager model instead", flush=True)
        fast = model()
    return evaluate(eager_logits_fn(fast), test_ids, CONTEXT, STRIDE, progress=False).perplexity


@torch.no_grad()
def float_equivalent(model: torch.nn.Module, check_ids: list[int]) -> torch.nn.Module:
    """The same quantized model with every quantized weight dequantized once and its 8-bit dynamic activations
    fake-quantized by a hook (the same grid as torchao's; one linear agrees exactly): several times faster than
    torchao's eager tensor subclass. Checked against it on one window: the window's loss within 0.2% and the mean
    |logit difference| under 0.1 of the logits' spread (measured on SmolLM2 RTN: 0.02% and 0.046; activations
    that round apart in one layer move every later layer's per-token scales, so logits differ more than losses)."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    from handheld.quant.fake_quant import fake_quantize_tokens_int8

    reference = model.forward_batch(torch.tensor([check_ids]))[0]
    for module in list(model.modules()):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, IntxUnpackedToInt8Tensor):
            continue
        module.weight = torch.nn.Parameter(weight.dequantize().float(), requires_grad=False)
        if weight.activation_quantization is not None:
            module.register_forward_pre_hook(lambda _, args: (fake_quantize_tokens_int8(args[0]), *args[1:]))
    fast = model.forward_batch(torch.tensor([check_ids]))[0]
    off = float((fast - reference).abs().mean() / reference.std())
    targets = torch.tensor(check_ids[1:])
    nll = [float(torch.nn.functional.cross_entropy(x[:-1].float(), targets)) for x in (reference, fast)]
    print(f"float equivalent: mean |diff| {off:.2e} of the spread, window NLL {nll[0]:.5f} vs {nll[1]:.5f}", flush=True)
    if off > 0.1 or abs(nll[0] - nll[1]) > 2e-3 * nll[0]:
        raise RuntimeError(f"the float equivalent is off by {off:.2e} of the logits' spread")
    return model


def pte_perplexity(checkpoint: Path, scheme: str | None, test_ids: list[int], pte: Path) -> float:
    from handheld.export.program import export_checkpoint
    from handheld.measure.quality import evaluate, pte_logits_fn
    from handheld.runtime_bindings.python.program import PteProgram

    if not pte.is_file():
        export_checkpoint(checkpoint, pte, scheme_name=scheme, backend_name="xnnpack", max_seq_len=CONTEXT,
                          full_logits=True, log=lambda m: None)
    return evaluate(pte_logits_fn(PteProgram(pte)), test_ids, CONTEXT, STRIDE, progress=False).perplexity


def spinquant_job(model: Path, calib: Path, out: Path, seed: int, budget: Budget, weight_quant: str, rotations: bool):
    from handheld.training.distributed import Group
    from handheld.training.options import SpinQuantOptions
    from handheld.training.spinquant import run_spinquant

    options = SpinQuantOptions(checkpoint=model, calib=calib, output=out, steps=budget.sq_steps if rotations else 0,
                               seq_len=budget.sq_seq_len, samples=budget.sq_samples, batch_size=budget.sq_batch,
                               weight_quant=weight_quant, rotations=rotations, seed=seed)
    run_spinquant(options, Group(), progress=False)
    steps = options.steps
    return steps, steps * budget.sq_batch * budget.sq_seq_len


def finetune_job(model: Path, data: Path, out: Path, seed: int, budget: Budget, phase: str):
    from handheld.training.distributed import Group
    from handheld.training.options import QatOptions, TrainConfig

    per_phase = budget.ft_steps if phase == "both" else 2 * budget.ft_steps  # equal totals
    train = TrainConfig(steps=per_phase, lr=2e-4, batch_size=BATCH, warmup=max(1, per_phase // 10),
                        eval_every=10**6, save_every=10**6, seed=seed)
    from handheld.training.qat import run_qat

    run_qat(QatOptions(checkpoint=model, data=data, output=out, phase=phase, train=train, seq_len=SEQ_LEN), Group(),
            progress=False)
    steps = 2 * budget.ft_steps
    return steps, steps * BATCH * SEQ_LEN


def plan(seeds: list[int], budget: Budget, model: Path, calib: Path, work: Path):
    """(recipe, seed, job producing a checkpoint or None, checkpoint to score, scheme to score it under)."""
    rows = [("float", 0, None, model, "fp32"), ("rtn", 0, None, model, "8da4w")]
    for seed in seeds:  # every recipe for one seed before the next seed: a cut-short run still compares them all
        sq = lambda wq, rot, out, s=seed: (lambda: spinquant_job(model, calib, out, s, budget, wq, rot))  # noqa: E731
        ft = lambda phase, out, s=seed: (lambda: finetune_job(model, calib, out, s, budget, phase))  # noqa: E731
        rows += [
            ("float-ft", seed, ft("float", work / f"ft_{seed}"), work / f"ft_{seed}", "fp32"),
            ("float-ft-rtn", seed, ft("float", work / f"ft_{seed}"), work / f"ft_{seed}", "8da4w"),
            ("qat-lora", seed, ft("both", work / f"qat_lora_{seed}"), work / f"qat_lora_{seed}", None),
            ("gptq", seed, sq("gptq", False, work / f"gptq_{seed}"), work / f"gptq_{seed}", None),
            ("spinquant-rtn", seed, sq("rtn", True, work / f"sq_rtn_{seed}"), work / f"sq_rtn_{seed}", None),
            ("spinquant-gptq", seed, sq("gptq", True, work / f"sq_gptq_{seed}"), work / f"sq_gptq_{seed}", None),
            ("qat", seed, ft("qat", work / f"qat_{seed}"), work / f"qat_{seed}", None),
        ]
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean and spread per recipe, and the recovery goals: SpinQuant of RTN's gap to float, QAT+LoRA of the
    fair baseline's RTN gap to the fine-tuned float."""
    by_recipe: dict[str, list[float]] = {}
    for row in rows:
        by_recipe.setdefault(row["recipe"], []).append(row["perplexity"])
    stats = {name: {"mean": statistics.fmean(v), "stdev": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
             for name, v in by_recipe.items()}
    mean = {name: s["mean"] for name, s in stats.items()}

    def recovered(base: str, rtn: str, method: str) -> float | None:
        if not {base, rtn, method} <= set(mean) or mean[rtn] == mean[base]:
            return None
        return (mean[rtn] - mean[method]) / (mean[rtn] - mean[base])

    recovery = {m: recovered("float", "rtn", m) for m in ("gptq", "spinquant-rtn", "spinquant-gptq")}
    recovery.update({m: recovered("float-ft", "float-ft-rtn", m) for m in ("qat", "qat-lora")})
    return {"stats": stats, "recovery": recovery}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ft-steps", type=int, default=10, help="steps per QAT+LoRA phase (others: twice this)")
    parser.add_argument("--sq-steps", type=int, default=4)
    parser.add_argument("--sq-batch", type=int, default=1)
    parser.add_argument("--sq-seq-len", type=int, default=128)
    parser.add_argument("--sq-samples", type=int, default=32)
    parser.add_argument("--pte", action="store_true", help="also score each recipe's first seed through its .pte")
    args = parser.parse_args()
    budget = Budget(args.ft_steps, args.sq_steps, args.sq_batch, args.sq_seq_len, args.sq_samples)
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.export.provenance import export_provenance
    from handheld.measure.host import host_info

    model, calib, test = smollm2()
    test_ids = load_tokenizer(model).encode(test.read_text(encoding="utf-8"), bos=False)[:EVAL_TOKENS]
    args.work.mkdir(parents=True, exist_ok=True)
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    report.pop("commit", None)  # recorded per row
    report.update({"model": model.name, "eval_text": "handheld/proxy/test.txt", "eval_tokens": len(test_ids),
                   "context": CONTEXT, "stride": STRIDE, "train_text": "handheld/proxy/calib.txt",
                   "budget": budget.__dict__, "ft_batch": BATCH, "ft_seq_len": SEQ_LEN, "host": host_info(),
                   "torch_threads": torch.get_num_threads()})
    provenance = export_provenance()  # per row: a table resumed across commits says so row by row
    rows = {(r["recipe"], r["seed"]): r for r in report["rows"]}
    for recipe, seed, job, checkpoint, scheme in plan(args.seeds, budget, model, calib, args.work):
        row = rows.get((recipe, seed))
        fresh = row is None
        if fresh:
            seconds, steps, tokens = run_job(job, checkpoint) if job is not None else (0.0, 0, 0)
            started = time.perf_counter()
            row = {"recipe": recipe, "seed": seed, "perplexity": perplexity(checkpoint, scheme, test_ids),
                   "steps": steps, "tokens": tokens, "seconds": seconds, "eval_seconds": time.perf_counter() - started,
                   "commit": provenance["commit"], "dirty": provenance["dirty"]}
            report["rows"].append(row)
        # The .pte's own figure, also for rows scored earlier whose checkpoint is still in --work.
        wants_pte = args.pte and seed == args.seeds[0] and "pte_perplexity" not in row and checkpoint.exists()
        if not (fresh or wants_pte):
            continue
        if wants_pte:
            row["pte_perplexity"] = pte_perplexity(checkpoint, scheme, test_ids, args.work / f"{recipe}.pte")
            row["pte_commit"] = provenance["commit"]
        print(json.dumps(row), flush=True)
        report["summary"] = summary(report["rows"])
        _write(report)
    print(json.dumps(report["summary"], indent=1))


def run_job(job, checkpoint: Path) -> tuple[float, int, int]:
    """Train once per output folder; its cost is kept beside it for rows that score it again."""
    record = checkpoint.with_name(checkpoint.name + ".job.json")
    if not (checkpoint.exists() and record.is_file()):
        started = time.perf_counter()
        steps, tokens = job()
        record.write_text(json.dumps([time.perf_counter() - started, steps, tokens]))
    seconds, steps, tokens = json.loads(record.read_text())
    return seconds, steps, tokens


def _write(report: dict) -> None:
    from handheld.core.atomic import atomic_path

    with atomic_path(RESULTS) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
