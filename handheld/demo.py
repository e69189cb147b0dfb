"""`handheld demo`: the main job on the built-in default model, end to end, with a comparison report.

Until the project's trained proxy model lands, the default is the random-weight `tiny` model: the
report compares file size and speed of every scheme; its text output is meaningless by design.
Re-running reuses the checkpoint and programs already in the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from handheld.atomic import atomic_dir, atomic_path
from handheld.checkpoints import TOKENIZER, random_state, write_checkpoint
from handheld.config import named_model_args
from handheld.export.program import export_checkpoint
from handheld.quant.schemes import SCHEMES
from handheld.runtime_bindings.generation import generate
from handheld.runtime_bindings.pte import PteProgram
from handheld.tokenizer import Tokenizer, write_byte_tokenizer

DEMO_MODEL = "tiny"
DEMO_PROMPT = "Once upon a time, on a small phone,"
MAX_SEQ_LEN = 128
NEW_TOKENS = 48


def run_demo(out: Path, log=print) -> Path:
    started = time.perf_counter()
    log(f"handheld demo: model '{DEMO_MODEL}' with RANDOM weights (no trained default model yet): "
        "sizes and speeds are real, generated text is noise")
    checkpoint = _ensure_checkpoint(out / "checkpoint")
    tokenizer = Tokenizer(checkpoint / TOKENIZER)
    prompt = tokenizer.encode(DEMO_PROMPT, bos=True)
    rows = []
    for i, scheme in enumerate(SCHEMES, 1):
        pte = out / f"{scheme}.pte"
        log(f"[{i}/{len(SCHEMES)}] {scheme}: " + ("reusing " + str(pte) if pte.is_file() else "exporting"))
        if not pte.is_file():
            export_checkpoint(checkpoint, pte, scheme_name=scheme, backend_name="xnnpack", max_seq_len=MAX_SEQ_LEN,
                              log=lambda m: log(f"    {m}"))
        program = PteProgram(pte)
        ids, stats = generate(program, prompt, NEW_TOKENS, program.eos_ids)
        log(f"    {stats.line()}")
        rows.append({"scheme": scheme, "backend": "xnnpack", "file_bytes": pte.stat().st_size,
                     "perplexity": None, **stats.as_dict(), "sample": tokenizer.decode(ids)})
    report = out / "report.json"
    with atomic_path(report) as tmp:
        tmp.write_text(json.dumps({"model": DEMO_MODEL, "weights": "random", "prompt": DEMO_PROMPT,
                                   "schemes": rows}, indent=2) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(rows))
    log(f"\nreport: {report} and {out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    log(_markdown(rows))
    return report


def _ensure_checkpoint(directory: Path) -> Path:
    if not directory.is_dir():
        args = named_model_args(DEMO_MODEL)
        with atomic_dir(directory) as tmp:
            write_checkpoint(tmp, args, random_state(args, seed=0), "meta")
            write_byte_tokenizer(tmp / TOKENIZER)
    return directory


def _markdown(rows: list[dict]) -> str:
    lines = [
        f"# handheld demo: {DEMO_MODEL} (random weights), XNNPACK, {len(rows)} schemes",
        "",
        "| scheme | file (KiB) | TTFT (ms) | prefill tok/s | decode tok/s | perplexity |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ppl = "n/a (random weights)" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        lines.append(f"| {r['scheme']} | {r['file_bytes'] / 1024:.0f} | {r['ttft_s'] * 1000:.1f} | "
                     f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.0f} | {ppl} |")
    return "\n".join(lines) + "\n"
