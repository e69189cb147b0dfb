"""The `handheld` command line: one module per verb, each with `HELP`, `add_arguments(parser)` and `run(args)`.

Verb modules import only light things at the top (argparse, defaults, option dataclasses) and the heavy
floors (torch, ExecuTorch) inside `run`, so `handheld --help` answers at once. User errors
(`HandheldError`) print one line and exit 1; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from handheld import __version__
from handheld.cli._shared import quiet_library_noise
from handheld.core.errors import HandheldError

# verb -> module under handheld.cli, in the order `--help` lists them.
VERBS = {
    "demo": "demo",
    "fetch": "fetch",
    "init-random": "init_random",
    "inspect": "inspect",
    "quantize": "quantize",
    "export": "export",
    "generate": "generate",
    "chat": "chat",
    "guard": "guard",
    "eval": "evaluate",
    "spinquant": "spinquant",
    "qat": "qat",
    "bench": "bench",
    "report": "report",
    "build-runner": "build_runner",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handheld",
        description="Take Llama 3.2 class models onto phones and Arm boards: load a checkpoint, "
        "quantize it, lower it to an ExecuTorch .pte and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"handheld {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(f"handheld.cli.{module_name}")
        p = sub.add_parser(verb, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so every `finally` (partial outputs) runs as for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_library_noise()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args.func(args)
    except HandheldError as e:
        print(f"handheld: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("handheld: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("handheld: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
