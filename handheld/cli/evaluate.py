"""`handheld eval`: perplexity of a `.pte` or a checkpoint on a text, and agreement with a float reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from handheld.cli._shared import add_group_size, eager_model, is_checkpoint_path, refuse_checkpoint_flags
from handheld.core.errors import HandheldError

HELP = "perplexity of a .pte or a checkpoint on a text, and agreement with a float reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .pte exported with --full-logits, or a checkpoint (eager PyTorch)")
    p.add_argument("--text", required=True, help="UTF-8 text file to score")
    p.add_argument("--tokenizer", required=True, help="tokenizer file (tiktoken tokenizer.model)")
    p.add_argument("--context", type=int, default=256, help="window length in tokens (default 256)")
    p.add_argument("--stride", type=int, default=128, help="window step; each window scores its last `stride` tokens")
    p.add_argument("--max-tokens", type=int, help="score only the text's first N tokens")
    p.add_argument("--reference", help="float checkpoint to compare with: top-1 agreement and mean KL divergence")
    p.add_argument("--scheme", help="checkpoints only: scheme applied in eager PyTorch (default fp32)")
    add_group_size(p, "4-bit schemes (checkpoints only)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> None:
    from handheld.core.checkpoints import load_model
    from handheld.measure.quality import eager_logits_fn, evaluate

    ids = _text_ids(args)
    logits_fn, mode, scheme = _logits_fn(args)
    reference_fn = eager_logits_fn(load_model(args.reference, max_seq_len=args.context)) if args.reference else None
    result = evaluate(logits_fn, ids, args.context, args.stride, reference_fn=reference_fn)
    if args.json:
        print(json.dumps({"model": str(args.model), "mode": mode, "scheme": scheme, "text": str(args.text),
                          **result.as_dict()}, indent=2))
        return
    line = f"{args.model} ({mode}, scheme {scheme}): perplexity {result.perplexity:.4f} over {result.tokens_scored} " \
           f"tokens (context {result.context}, stride {result.stride})"
    if result.top1_agreement is not None:
        line += f" | top-1 agreement {result.top1_agreement:.2%} | mean KL {result.mean_kl:.5f} nats"
    print(line)


def _text_ids(args: argparse.Namespace) -> list[int]:
    from handheld.core.tokenizer import load_tokenizer

    text_path = Path(args.text)
    if not text_path.is_file():
        raise HandheldError(f"text file {text_path} not found")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise HandheldError(f"--max-tokens must be at least 2 (a token and its successor), got {args.max_tokens}")
    ids = load_tokenizer(args.tokenizer).encode(text_path.read_text(encoding="utf-8"), bos=False)
    return ids[: args.max_tokens] if args.max_tokens else ids


def _logits_fn(args: argparse.Namespace):
    from handheld.measure.quality import eager_logits_fn, pte_logits_fn

    if is_checkpoint_path(args.model):
        prepared, _ = eager_model(args, max_seq_len=args.context, full_logits=True)
        return eager_logits_fn(prepared.model), "eager", prepared.label
    from handheld.runtime_bindings.python.program import PteProgram

    refuse_checkpoint_flags(args, "a .pte")
    program = PteProgram(args.model)
    if args.context > program.max_seq_len:
        raise HandheldError(f"--context {args.context} exceeds {args.model}'s max sequence length {program.max_seq_len}")
    return pte_logits_fn(program), ".pte", program.metadata.scheme
