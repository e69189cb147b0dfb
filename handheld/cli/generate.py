"""`handheld generate`: stream text from a `.pte` (ExecuTorch runtime) or a checkpoint (eager PyTorch)."""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

from handheld.cli._shared import add_group_size, add_guard_and_verbose_arguments, guard_from_args, optional_path
from handheld.core.defaults import DRAFT_TOKENS, MAX_SEQ_LEN
from handheld.core.errors import HandheldError

HELP = "generate text from a .pte (ExecuTorch runtime) or a checkpoint (eager PyTorch)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .pte program, or a checkpoint (directory or .gguf) to run in eager PyTorch")
    p.add_argument("--tokenizer", help="tokenizer.model (tiktoken), tokenizer.json or a .gguf file "
                   "(default for checkpoints: their own)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user turn in the model's chat template (Llama 3's for tiktoken)")
    p.add_argument("--system", help="with --chat: a system prompt (default: the template's own, if any)")
    p.add_argument("--scheme", help="checkpoints only: numeric scheme applied in eager PyTorch (default fp32)")
    add_group_size(p, "4-bit schemes (checkpoints only)")
    p.add_argument("--max-seq-len", type=int, default=MAX_SEQ_LEN, help="checkpoints only: KV cache length")
    p.add_argument("--draft", metavar="DRAFT.pte",
                   help="speculative decoding (greedy, lossless): a smaller program with the same tokenizer drafts, "
                   "MODEL (a .pte exported with --full-logits) verifies")
    p.add_argument("--draft-tokens", type=int, default=DRAFT_TOKENS, metavar="K",
                   help=f"with --draft: tokens drafted per target call (default {DRAFT_TOKENS})")
    add_guard_and_verbose_arguments(p, "(with --chat) the prompt, then the answer,")


def run(args: argparse.Namespace) -> None:
    from handheld.core.tokenizers.tokenizer import load_tokenizer, prompt_ids
    from handheld.decoding.text import GenerateOptions, generate_text, open_model, tokenizer_for

    if args.guard and not args.chat:
        raise HandheldError("--guard goes with --chat: the guard reads a user's message and the model's answer")
    options = GenerateOptions(max_new_tokens=args.max_new_tokens, chat=args.chat, system=args.system,
                              scheme=args.scheme, group_size=args.group_size, max_seq_len=args.max_seq_len,
                              draft=optional_path(args.draft), draft_tokens=args.draft_tokens, verbose=args.verbose)
    # The tokenizer before the model: a bad one fails at once.
    tokenizer = load_tokenizer(tokenizer_for(Path(args.model), optional_path(args.tokenizer)))
    prompt = prompt_ids(tokenizer, args.prompt, args.chat, args.system)
    guard = guard_from_args(args)
    if guard is not None:
        verdict = guard.check(args.prompt)
        if not verdict.safe:
            print(f"[guard] prompt withheld: {verdict.summary()}")
            return
    model = open_model(Path(args.model), options)
    # Byte-level BPE splits multi-byte characters across tokens: decode bytes incrementally.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    shown: list[int] = []

    def show(token: int) -> None:
        shown.append(token)
        if guard is None:  # a guarded answer is shown only once the guard has read all of it
            sys.stdout.write(decoder.decode(tokenizer.decode_bytes([token])))
            sys.stdout.flush()

    _, stats = generate_text(model, tokenizer, prompt, options, on_token=show)
    if guard is not None:
        verdict = guard.check(args.prompt, tokenizer.decode(shown))
        print(tokenizer.decode(shown) if verdict.safe else f"[guard] answer withheld: {verdict.summary()}")
    else:
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    print(f"{stats.line()} | {model.label}")
