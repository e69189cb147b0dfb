"""Speculative decoding on this machine: a target program alone, then with a draft program, in one run.

Each configuration runs in a fresh process per repeat (one warm-up generation, then the measured one),
on the same chat prompt and greedy budget; every row says which programs, K, machine, threads and
commit it ran with, and whether its tokens equal the target's own (they must: greedy speculative
decoding is lossless). The draft alone is measured too: the speed a perfect draft could not beat.

    handheld fetch    # SmolLM2-135M-Instruct's GGUF
    handheld export --checkpoint SmolLM2.gguf --scheme fp32 --full-logits --max-seq-len 256 -o target.pte
    handheld export --checkpoint SmolLM2.gguf --scheme 8da4w --max-seq-len 256 -o draft.pte
    OMP_NUM_THREADS=1 python benchmarks/speculative.py --target target.pte --draft draft.pte \\
        --tokenizer SmolLM2.gguf --label smollm2 -o benchmarks/results/speculative_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Explain in a few sentences why the sky is blue, and why sunsets are red."


def child(args: argparse.Namespace) -> None:
    """One measured generation in this process: prints one JSON row."""
    import torch

    from handheld.core.tokenizers.tokenizer import load_tokenizer, prompt_ids
    from handheld.decoding.generation import generate
    from handheld.runtime_bindings.python.program import PteProgram
    from handheld.decoding.speculative import check_compatible, speculative_generate

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.tokenizer)
    prompt = prompt_ids(tokenizer, PROMPT, chat=True)
    target = PteProgram(args.program)
    stops = sorted(set(target.eos_ids) | set(tokenizer.stop_ids))
    if args.with_draft:
        draft = PteProgram(args.with_draft)
        check_compatible(target.metadata, draft.metadata)
        run = lambda n: speculative_generate(target, draft, prompt, n, stops, args.k)  # noqa: E731
    else:
        run = lambda n: generate(target, prompt, n, stops)  # noqa: E731
    run(8)  # warm-up: first-call allocations, XNNPACK packing
    start = time.perf_counter()
    tokens, stats = run(args.max_new_tokens)
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens": tokens, "seconds": seconds, "end_to_end_tok_s": len(tokens) / seconds, **stats.as_dict()}))


def measure(program: Path, draft: Path | None, k: int, args: argparse.Namespace) -> list[dict]:
    command = [sys.executable, __file__, "--child", "--program", str(program), "--tokenizer", str(args.tokenizer),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads), "--k", str(k)]
    if draft:
        command += ["--with-draft", str(draft)]
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return runs


def summary(name: str, runs: list[dict], reference: list[int], k: int | None) -> dict:
    rates = [r["decode_tok_s"] for r in runs]
    e2e = [r["end_to_end_tok_s"] for r in runs]
    row = {"config": name, "draft_tokens": k, "decode_tok_s_median": statistics.median(rates), "decode_tok_s": rates,
           "end_to_end_tok_s_median": statistics.median(e2e), "generated_tokens": runs[0]["generated_tokens"],
           "identical_to_target": all(r["tokens"] == reference for r in runs)}
    if "acceptance_rate" in runs[0]:
        row |= {"acceptance_rate": runs[0]["acceptance_rate"], "tokens_per_target_call": runs[0]["tokens_per_target_call"]}
    return row


def describe(args: argparse.Namespace) -> dict:
    from handheld.export.provenance import export_provenance
    from handheld.core.pte_metadata import ProgramMetadata
    from handheld.measure.host import host_info
    from handheld.runtime_bindings.pte_file import read_pte_structure

    def program(path: Path) -> dict:
        meta = ProgramMetadata.from_constant_methods(read_pte_structure(path).constant_methods, str(path))
        return {"file": path.name, "bytes": path.stat().st_size, "scheme": meta.scheme, "full_logits": meta.full_logits,
                "model": meta.model, "export_commit": meta.provenance.get("commit")}

    provenance = export_provenance()
    from handheld.measure.host import run_record

    return {"made_by": run_record(), "label": args.label, "prompt": PROMPT, "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "repeats": args.repeats, "commit": provenance["commit"], "dirty": provenance["dirty"], "host": host_info(),
            "target": program(args.target), "draft": program(args.draft)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=Path)
    p.add_argument("--draft", type=Path)
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--label", default="")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--draft-tokens", default="2,4,6", help="K values to measure, comma-separated")
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--program", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--with-draft", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    alone = measure(args.target, None, 0, args)
    reference = alone[0]["tokens"]
    rows = [summary("target alone", alone, reference, None),
            summary("draft alone", measure(args.draft, None, 0, args), reference, None)]
    for k in (int(v) for v in args.draft_tokens.split(",")):
        rows.append(summary(f"target + draft, K={k}", measure(args.target, args.draft, k, args), reference, k))
        print(json.dumps(rows[-1]), flush=True)
    result = describe(args) | {"rows": rows}
    from handheld.core.atomic import atomic_path

    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
