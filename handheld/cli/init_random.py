"""`handheld init-random`: a checkpoint with random weights in a named shape (for speed, which ignores values)."""

from __future__ import annotations

import argparse

from handheld.core.llama.config import known_model_names

HELP = "write a checkpoint with random weights (for benchmarks and tests)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"named shape: {', '.join(known_model_names())}")
    p.add_argument("--format", default="meta", help="meta (consolidated.00.pth + params.json) or hf (safetensors + config.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="directory to create (must not exist or be empty)")


def run(args: argparse.Namespace) -> None:
    from handheld.core.atomic import atomic_dir
    from handheld.core.checkpoints import FORMATS, TOKENIZER, random_state, write_checkpoint
    from handheld.core.llama.config import named_model_args
    from handheld.core.errors import HandheldError
    from handheld.core.tokenizers.tokenizer import write_byte_tokenizer

    if args.format not in FORMATS:
        raise HandheldError(f"unknown format {args.format!r}; known formats: {', '.join(FORMATS)}")
    model_args = named_model_args(args.model)
    state = random_state(model_args, seed=args.seed)
    with atomic_dir(args.output) as tmp:
        write_checkpoint(tmp, model_args, state, args.format)
        if model_args.vocab_size == 512:  # exactly a byte-level tokenizer's 256 ranks + 256 specials
            write_byte_tokenizer(tmp / TOKENIZER)
    print(f"wrote random-weight {args.model} checkpoint ({args.format} format) to {args.output}")
