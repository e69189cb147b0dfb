"""`handheld generate`: stream text from a `.pte` (ExecuTorch runtime) or a checkpoint (eager PyTorch)."""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

from handheld.cli._shared import add_group_size, eager_model, is_checkpoint_path, refuse_checkpoint_flags
from handheld.core.defaults import MAX_SEQ_LEN
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


def run(args: argparse.Namespace) -> None:
    from handheld.core.tokenizer import load_tokenizer
    from handheld.runtime_bindings.generation import generate

    if args.system is not None and not args.chat:
        raise HandheldError("--system goes with --chat")
    tokenizer = load_tokenizer(_tokenizer_path(args))  # before the model: a bad tokenizer fails at once
    prompt = _prompt(args, tokenizer)
    runner, stop_ids, vocab_size, label = _step_model(args)
    if tokenizer.vocab_size > vocab_size:
        raise HandheldError(f"tokenizer has {tokenizer.vocab_size} ids but {args.model} only {vocab_size}")
    # Byte-level BPE splits multi-byte characters across tokens: decode bytes incrementally.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def show(token: int) -> None:
        sys.stdout.write(decoder.decode(tokenizer.decode_bytes([token])))
        sys.stdout.flush()

    stops = sorted(set(stop_ids) | set(tokenizer.stop_ids))
    _, stats = generate(runner, prompt, args.max_new_tokens, stops, on_token=show)
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    print(f"{stats.line()} | {label}")


def _tokenizer_path(args: argparse.Namespace) -> str:
    from handheld.core.checkpoints import own_tokenizer_path

    if args.tokenizer:
        return args.tokenizer
    own = own_tokenizer_path(Path(args.model)) if is_checkpoint_path(args.model) else None
    if own is None:
        raise HandheldError(f"{args.model} carries no tokenizer: pass --tokenizer")
    return str(own)


def _prompt(args: argparse.Namespace, tokenizer) -> list[int]:
    from handheld.core.chat_template import Message

    if not args.chat:
        return tokenizer.encode(args.prompt, bos=tokenizer.add_bos)
    system = [Message("system", args.system)] if args.system is not None else []
    return tokenizer.encode_chat(system + [Message("user", args.prompt)])


def _step_model(args: argparse.Namespace):
    """A `.pte` through ExecuTorch, or a checkpoint in eager PyTorch under a scheme."""
    from handheld.runtime_bindings.generation import EagerRunner

    if not is_checkpoint_path(args.model):
        from handheld.runtime_bindings.python.program import PteProgram

        refuse_checkpoint_flags(args, "a .pte")
        program = PteProgram(args.model)
        return program, program.eos_ids, program.vocab_size, f"ExecuTorch, {program.metadata.scheme}"
    prepared, _ = eager_model(args, max_seq_len=args.max_seq_len, full_logits=False)
    return EagerRunner(prepared.model), [], prepared.model.args.vocab_size, f"eager PyTorch, {prepared.label}"
