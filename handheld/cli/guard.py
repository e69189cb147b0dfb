"""`handheld guard`: classify a prompt, or a prompt's response, with a Llama Guard 3 program."""

from __future__ import annotations

import argparse

HELP = "classify a prompt (or its response) as safe or unsafe with a Llama Guard 3 .pte"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a Llama Guard 3 .pte program")
    p.add_argument("--tokenizer", required=True, help="the guard's tokenizer (Llama 3's tokenizer.model for Llama Guard 3)")
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--response", help="the model's answer to it: classify the answer instead of the prompt")


def load_guard(program_path: str, tokenizer_path: str):
    """A `Guard` over a `.pte`, its tokenizer checked against the program's vocabulary."""
    from handheld.core.errors import HandheldError
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.decoding.guard import Guard
    from handheld.runtime_bindings.python.program import PteProgram

    tokenizer = load_tokenizer(tokenizer_path)
    program = PteProgram(program_path)
    if tokenizer.vocab_size > program.vocab_size:
        raise HandheldError(f"guard tokenizer has {tokenizer.vocab_size} ids but {program_path} only {program.vocab_size}")
    return Guard(program, tokenizer, program.eos_ids)


def run(args: argparse.Namespace) -> None:
    verdict = load_guard(args.model, args.tokenizer).check(args.prompt, args.response)
    print("\n".join(verdict.lines()))
