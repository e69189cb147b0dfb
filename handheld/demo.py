"""`handheld demo`: the main job on the built-in default model, end to end, with a comparison report.

The default is the project's proxy model (`handheld/proxy/`: a ~2.4M-parameter Llama 3.2-architecture
model trained by `benchmarks/proxy/train_proxy.py` on the Python 3.11 documentation). Besides the plain
schemes, the demo runs both recipes briefly on the shipped calibration text (train split): SpinQuant
(learned rotations, RTN) and QAT+LoRA. Every row is exported to XNNPACK, scored on the shipped test
text through the `.pte` (perplexity, and top-1 agreement / KL against the float model), then measured
with `handheld bench` (fresh process per run) and compared with `handheld report`. Re-running reuses
built checkpoints and programs.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from handheld.atomic import atomic_path
from handheld.bench import BenchConfig, run_bench
from handheld.checkpoints import TOKENIZER, load_model
from handheld.evaluation import eager_logits_fn, evaluate, pte_logits_fn
from handheld.export.program import export_checkpoint
from handheld.host import measure_bandwidth_gbs
from handheld.report import write_report
from handheld.runtime_bindings.generation import generate
from handheld.runtime_bindings.pte import PteProgram
from handheld.tokenizer import Tokenizer

DEMO_SCHEMES = ("fp32", "bf16", "8da4w", "spinquant", "qat-lora")
RECIPES = ("spinquant", "qat-lora")  # rows made by a recipe's checkpoint, not by a scheme at export
SPINQUANT_STEPS = 30
QAT_STEPS = 30  # per phase: QAT, then LoRA
DEMO_PROMPT = "The dictionary type"
CONTEXT, STRIDE = 256, 128
NEW_TOKENS = 64
# Few runs: the demo shows the comparison; benchmarks/ holds the careful measurements.
DEMO_BENCH = BenchConfig(prompt_len=32, gen_len=64, runs=2, warmup=1)


def proxy_dir() -> Path:
    return Path(str(resources.files("handheld") / "proxy"))


def run_demo(out: Path, log=print) -> Path:
    started = time.perf_counter()
    checkpoint = proxy_dir()
    card = json.loads((checkpoint / "card.json").read_text())
    log(f"handheld demo: the proxy model ({card['parameters']:,} parameters, trained on {card['corpus']})")
    tokenizer = Tokenizer(checkpoint / TOKENIZER)
    test_ids = tokenizer.encode((checkpoint / "test.txt").read_text(encoding="utf-8"))
    reference = eager_logits_fn(load_model(checkpoint, max_seq_len=CONTEXT))
    prompt = tokenizer.encode(DEMO_PROMPT, bos=True)
    rows, ptes = [], []
    for i, scheme in enumerate(DEMO_SCHEMES, 1):
        pte = out / f"{scheme}.pte"
        source = _recipe_checkpoint(scheme, checkpoint, out, log) if scheme in RECIPES else checkpoint
        log(f"[{i}/{len(DEMO_SCHEMES)}] {scheme}: " + (f"reusing {pte}" if pte.is_file() else "exporting to XNNPACK"))
        if not pte.is_file():
            export_checkpoint(source, pte, scheme_name=None if scheme in RECIPES else scheme, backend_name="xnnpack",
                              max_seq_len=CONTEXT, full_logits=True, log=lambda m: log(f"    {m}"))
        program = PteProgram(pte)
        log("    evaluating on the test text through the .pte")
        quality = evaluate(pte_logits_fn(program), test_ids, CONTEXT, STRIDE, reference_fn=reference)
        ids, _ = generate(program, prompt, NEW_TOKENS, program.eos_ids)
        log(f"    perplexity {quality.perplexity:.3f} | sample: {DEMO_PROMPT + tokenizer.decode(ids)!r}")
        rows.append({"scheme": scheme, "backend": "xnnpack", "file_bytes": pte.stat().st_size,
                     **quality.as_dict(), "sample": DEMO_PROMPT + tokenizer.decode(ids)})
        ptes.append(pte)
    log(f"measuring every program with handheld bench ({DEMO_BENCH.runs} runs after {DEMO_BENCH.warmup} warm-up)")
    bench = run_bench(ptes, DEMO_BENCH, progress=lambda m: log(f"    {m}"),
                      bandwidth_gbs=measure_bandwidth_gbs(DEMO_BENCH.threads))
    for row, measured in zip(rows, bench["rows"]):
        row.update({metric: s["median"] for metric, s in measured["stats"].items()})
    report = out / "report.json"
    meta = {"model": "handheld proxy", "parameters": card["parameters"], "corpus": card["corpus"],
            "eval_text": "handheld/proxy/test.txt", "context": CONTEXT, "stride": STRIDE, "prompt": DEMO_PROMPT}
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps({**meta, "schemes": rows}, indent=2) + "\n")
    evals = [{"name": pte.stem, "perplexity": row["perplexity"]} for pte, row in zip(ptes, rows)]
    notes = [f"Model: the project's proxy model ({card['parameters']:,} parameters, trained on {card['corpus']}); "
             "perplexity on its shipped test text through each `.pte`"]
    markdown = write_report(bench, out, evals=evals, notes=notes, title="handheld demo: proxy model on XNNPACK",
                            sections=[_quality_markdown(rows)])
    log("\n" + markdown.read_text())
    log(f"report: {markdown} and {report} ({time.perf_counter() - started:.0f} s)")
    return report


def _recipe_checkpoint(recipe: str, checkpoint: Path, out: Path, log) -> Path:
    """The recipe's checkpoint, trained briefly on the shipped calibration text (reused when present)."""
    from handheld.distributed import Group

    target = out / f"{recipe}-checkpoint"
    if target.exists():
        return target
    calib = checkpoint / "calib.txt"
    started = time.perf_counter()
    if recipe == "spinquant":
        from handheld.recipes.spinquant import SpinQuantOptions, run_spinquant

        log(f"    SpinQuant: learning R1/R2 for {SPINQUANT_STEPS} steps on {calib.name}")
        run_spinquant(SpinQuantOptions(checkpoint=checkpoint, calib=calib, output=target, steps=SPINQUANT_STEPS,
                                       samples=128, batch_size=4), Group(), progress=False)
    else:
        from handheld.recipes.qat import QatOptions, run_qat
        from handheld.training import TrainConfig

        log(f"    QAT+LoRA: {QAT_STEPS} QAT steps, then {QAT_STEPS} LoRA steps on {calib.name}")
        # Small learning rates: a few steps on 300 KB should adapt to quantization, not drift to the sample.
        train = TrainConfig(steps=QAT_STEPS, lr=3e-5, batch_size=8, warmup=5, eval_every=QAT_STEPS, save_every=QAT_STEPS)
        run_qat(QatOptions(checkpoint=checkpoint, data=calib, output=target, phase="both", train=train, lora_lr=1e-4),
                Group(), progress=False)
    log(f"    trained in {time.perf_counter() - started:.0f} s")
    return target


def _quality_markdown(rows: list[dict]) -> str:
    lines = [
        "## Quality",
        "",
        f"On the shipped test text ({rows[0]['tokens_scored']} tokens, context {CONTEXT}, stride {STRIDE}), "
        "through each `.pte`; agreement and KL against the float model in eager PyTorch.",
        "",
        f"spinquant: R1/R2 learned for {SPINQUANT_STEPS} steps on the shipped calibration text (train split), RTN. "
        f"qat-lora: {QAT_STEPS} QAT steps then {QAT_STEPS} LoRA steps on the same text, so it also had extra "
        "training; `benchmarks/quality/recipes_on_proxy.py` compares it with a float model fine-tuned alike.",
        "",
        "| scheme | file (KiB) | perplexity | top-1 agreement | mean KL (nats) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['scheme']} | {r['file_bytes'] / 1024:.0f} | {r['perplexity']:.3f} | "
                     f"{r['top1_agreement']:.2%} | {r['mean_kl']:.4f} |")
    return "\n".join(lines)
