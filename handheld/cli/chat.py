"""`handheld chat`: talk to a `.pte` in the terminal, turn after turn, in the model's own chat template.

Each line read is a user turn; the answer streams as it is generated. /reset forgets the conversation, /quit (or
end of input) ends the chat, Ctrl-C stops an answer without ending the chat. The conversation stays within the
program's context: the oldest exchanges are dropped when the next one would not fit (said once). Reads a pipe too
(no prompt shown), so scripts and tests can chat; there a message that cannot fit is an error (exit 1).
"""

from __future__ import annotations

import argparse
import codecs
import sys

from handheld.cli._shared import add_guard_and_verbose_arguments, guard_from_args
from handheld.core.errors import HandheldError

HELP = "chat with a .pte in the terminal (multi-turn, the model's chat template, streamed)"
DEFAULT_REPLY_TOKENS = 256


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .pte program")
    p.add_argument("--tokenizer", required=True, help="tokenizer.model (tiktoken), tokenizer.json or a .gguf file")
    p.add_argument("--system", help="a system prompt (default: the template's own, if any)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_REPLY_TOKENS,
                   help=f"tokens per answer at most (default {DEFAULT_REPLY_TOKENS})")
    add_guard_and_verbose_arguments(p, "each message, then each answer,")


def run(args: argparse.Namespace) -> None:
    from handheld import api

    guard = guard_from_args(args)
    session = api.chat(args.model, args.tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                       quiet=not args.verbose)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} ({session.model.max_seq_len}-token context); /reset, /quit, "
              "Ctrl-C stops an answer")
    _loop(session, guard, interactive)


def _loop(session, guard, interactive: bool) -> None:
    told_dropped = False
    while True:
        line = _read_line(interactive)
        if line is None or line.strip() == "/quit":
            return
        message = line.strip()
        if message == "/reset":
            session.reset()
            print("[conversation reset]")
            continue
        if not message:
            continue
        try:
            reply = _turn(session, guard, message)
        except HandheldError as e:
            if not interactive:
                raise
            print(f"[{e}]")
            continue
        if reply is not None and reply.dropped_turns and not told_dropped:
            print(f"[older turns are being dropped to stay within the program's {session.model.max_seq_len}-token context]")
            told_dropped = True


def _read_line(interactive: bool) -> str | None:
    """The next message, or None at end of input. Ctrl-C at the prompt only clears the line."""
    while True:
        try:
            return input("> ") if interactive else _piped_line()
        except EOFError:
            return None
        except KeyboardInterrupt:
            print()


def _piped_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def _turn(session, guard, message: str):
    """One exchange: the guard's check of the message, the streamed (or, guarded, withheld) answer."""
    if guard is not None:
        verdict = guard.check(message)
        if not verdict.safe:
            print(f"[guard] message withheld: {verdict.summary()}")
            return None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def show(token: int) -> None:
        if guard is None:  # a guarded answer is shown only once the guard has read all of it
            sys.stdout.write(decoder.decode(session.tokenizer.decode_bytes([token])))
            sys.stdout.flush()

    reply = session.reply(message, show)
    if guard is not None:
        verdict = guard.check(message, reply.text)
        print(reply.text if verdict.safe else f"[guard] answer withheld: {verdict.summary()}")
    else:
        print(decoder.decode(b"", final=True) + (" [stopped]" if reply.interrupted else ""))
    return reply
