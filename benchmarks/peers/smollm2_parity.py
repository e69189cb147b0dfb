"""Parity with an independent implementation: handheld and llama.cpp on the same SmolLM2-135M-Instruct weights.

The shipped Q4_1 GGUF is dequantized by handheld and written back as an F32 GGUF (the `gguf` writer, with
the original vocabulary and chat template), so both sides compute in float32 from identical weights.
Compared, on a few prompts: token ids (handheld's tokenizer vs llama.cpp's own), logits (handheld eager,
and the fp32 `.pte` when given, vs llama.cpp), and greedy continuations token by token.

    pip install -e '.[peers]'        # llama-cpp-python builds llama.cpp (minutes)
    python benchmarks/peers/smollm2_parity.py [--pte handheld-demo/fp32.pte] [--json benchmarks/results/smollm2_llama_cpp_parity.json]

Tolerance: float32 weights on both sides, but llama.cpp keeps its KV cache in f16 by default and both use
their own kernels and summation orders, through 30 layers. Logits are compared as max |diff| over the
logits' own standard deviation (scale-free): a real mismatch (wrong RoPE, norm, tokenizer or layout) is of
the order of the spread itself; measured here 0.3-0.6% of it, so the bound is 1%.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from handheld.core.fetch.catalog import fetch
from handheld.core.tokenizers.chat_template import Message
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.checkpoints.gguf import write_gguf
from handheld.core.tokenizers.tokenizer import load_tokenizer

PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,")
CHAT = "What is the capital of France?"
GREEDY_TOKENS = 40
LOGITS_TOLERANCE = 0.01  # max |diff| / std(logits)


def llama_cpp_run(path: Path, ids: list[int], new_tokens: int):
    """llama.cpp's logits for every prompt position, and its greedy continuation."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + new_tokens + 8, n_batch=512, n_threads=2,
                          logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    generated = []
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    for _ in range(new_tokens):
        generated.append(token)
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return logits, generated, llm


def handheld_greedy(step, ids: list[int], new_tokens: int) -> list[int]:
    from handheld.decoding.generation import generate

    generated, _ = generate(step, ids, new_tokens, stop_ids=[])
    return generated


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    diff = np.abs(reference - candidate)
    return {"max_abs_diff": float(diff.max()), "logits_std": float(reference.std()),
            "relative_max_diff": float(diff.max() / reference.std()),
            "top1_agreement": float((reference.argmax(-1) == candidate.argmax(-1)).mean())}


def matching_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run(pte: Path | None, work: Path) -> dict:
    from handheld.decoding.generation import EagerRunner

    source = fetch("smollm2-135m-instruct")
    checkpoint = read_checkpoint(source)
    f32 = work / "smollm2-135m-f32.gguf"
    if not f32.is_file():
        write_gguf(f32, checkpoint.args, checkpoint.state, "F32", tokenizer_from=source)
    tokenizer = load_tokenizer(source)
    model = build_model(checkpoint, max_seq_len=256)
    program = None
    if pte is not None:
        from handheld.runtime_bindings.python.program import PteProgram

        program = PteProgram(pte)
    texts = [(p, tokenizer.encode(p)) for p in PROMPTS]
    texts.append((f"chat: {CHAT}", tokenizer.encode_chat([Message("user", CHAT)])))
    rows = []
    for label, ids in texts:
        ref_logits, ref_tokens, llm = llama_cpp_run(f32, ids, GREEDY_TOKENS)
        row = {"prompt": label, "prompt_tokens": len(ids)}
        if not label.startswith("chat"):
            row["token_ids_equal"] = llm.tokenize(label.encode(), add_bos=False, special=False) == ids
        with torch.no_grad():
            eager = model.forward_batch(torch.tensor([ids]))[0].numpy()
        row["eager_vs_llama_cpp"] = compare(ref_logits, eager)
        eager_tokens = handheld_greedy(EagerRunner(model), ids, GREEDY_TOKENS)
        row["greedy_llama_cpp"] = tokenizer.decode(ref_tokens)
        row["greedy_match_eager"] = matching_prefix(ref_tokens, eager_tokens)
        if program is not None:
            pte_logits = program.forward(ids, 0).numpy()
            row["pte_vs_llama_cpp"] = compare(ref_logits, pte_logits)
            row["greedy_match_pte"] = matching_prefix(ref_tokens, handheld_greedy(program, ids, GREEDY_TOKENS))
        rows.append(row)
        print(json.dumps(row, indent=2), flush=True)
    return {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized, written back as F32 GGUF)",
            "greedy_tokens": GREEDY_TOKENS, "tolerance_relative_max_diff": LOGITS_TOLERANCE, "rows": rows,
            "llama_cpp_python": _version("llama-cpp-python"), "commit": _commit(),
            "cpu": platform.processor() or platform.machine()}


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pte", type=Path, help="handheld's fp32 .pte of the same model, exported with --full-logits")
    parser.add_argument("--work", type=Path, default=Path("parity-work"), help="folder for the F32 GGUF (540 MB)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args.pte, args.work)
    from handheld.measure.host import run_record

    result["made_by"] = run_record()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
