"""`handheld generate`: stream text from a `.pte` (ExecuTorch runtime) or a checkpoint (eager PyTorch)."""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

from handheld.cli._shared import (add_group_size, add_guard_and_verbose_arguments, eager_model, guard_from_args,
                                  refuse_checkpoint_flags)
from handheld.measure.evaluation import is_checkpoint_path
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

    _check_flags(args)
    tokenizer = load_tokenizer(_tokenizer_path(args))  # before the model: a bad tokenizer fails at once
    prompt = prompt_ids(tokenizer, args.prompt, args.chat, args.system)
    guard = guard_from_args(args)
    if guard is not None:
        verdict = guard.check(args.prompt)
        if not verdict.safe:
            print(f"[guard] prompt withheld: {verdict.summary()}")
            return
    runner, stop_ids, vocab_size, label = _step_model(args)
    if tokenizer.vocab_size > vocab_size:
        raise HandheldError(f"tokenizer has {tokenizer.vocab_size} ids but {args.model} only {vocab_size}")
    # Byte-level BPE splits multi-byte characters across tokens: decode bytes incrementally.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    shown: list[int] = []

    def show(token: int) -> None:
        shown.append(token)
        if guard is None:  # a guarded answer is shown only once the guard has read all of it
            sys.stdout.write(decoder.decode(tokenizer.decode_bytes([token])))
            sys.stdout.flush()

    stops = sorted(set(stop_ids) | set(tokenizer.stop_ids))
    stats = _decode(args, runner, prompt, stops, show)
    if guard is not None:
        _show_guarded(guard, args.prompt, tokenizer.decode(shown))
    else:
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    print(f"{stats.line()} | {label}")


def _check_flags(args: argparse.Namespace) -> None:
    if args.system is not None and not args.chat:
        raise HandheldError("--system goes with --chat")
    if args.guard and not args.chat:
        raise HandheldError("--guard goes with --chat: the guard reads a user's message and the model's answer")
    if args.draft and (is_checkpoint_path(args.model) or is_checkpoint_path(args.draft)):
        raise HandheldError("--draft takes .pte programs: export the target (with --full-logits) and the draft first")


def _show_guarded(guard, prompt: str, answer: str) -> None:
    verdict = guard.check(prompt, answer)
    print(answer if verdict.safe else f"[guard] answer withheld: {verdict.summary()}")


def _decode(args: argparse.Namespace, runner, prompt: list[int], stops: list[int], show):
    """Plain greedy decoding, or speculative with --draft (the same tokens, fewer target calls)."""
    from handheld.decoding.generation import generate

    if not args.draft:
        return generate(runner, prompt, args.max_new_tokens, stops, on_token=show)[1]
    from handheld.runtime_bindings.python.program import PteProgram
    from handheld.decoding.speculative import check_compatible, speculative_generate

    draft = PteProgram(args.draft, quiet=not args.verbose)
    check_compatible(runner.metadata, draft.metadata)
    return speculative_generate(runner, draft, prompt, args.max_new_tokens, stops, args.draft_tokens, on_token=show)[1]


def _tokenizer_path(args: argparse.Namespace) -> str:
    from handheld.core.checkpoints import own_tokenizer_path

    if args.tokenizer:
        return args.tokenizer
    own = own_tokenizer_path(Path(args.model)) if is_checkpoint_path(args.model) else None
    if own is None:
        raise HandheldError(f"{args.model} carries no tokenizer: pass --tokenizer")
    return str(own)


def _step_model(args: argparse.Namespace):
    """A `.pte` through ExecuTorch, or a checkpoint in eager PyTorch under a scheme."""
    from handheld.decoding.generation import EagerRunner

    if not is_checkpoint_path(args.model):
        from handheld.runtime_bindings.python.program import PteProgram

        refuse_checkpoint_flags(args, "a .pte")
        program = PteProgram(args.model, quiet=not args.verbose)
        return program, program.eos_ids, program.vocab_size, f"ExecuTorch, {program.metadata.scheme}"
    prepared, _ = eager_model(args, max_seq_len=args.max_seq_len, full_logits=False)
    return EagerRunner(prepared.model), [], prepared.model.args.vocab_size, f"eager PyTorch, {prepared.label}"
