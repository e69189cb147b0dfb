"""Where one `handheld export` spends its time: wall seconds per stage (read, quantize, trace, each decomposition,
edge conversion, lowering, emission) and per ExecuTorch pass (summed over partitions), one export in this process.

    python benchmarks/export_stages.py --label 8da4w -- --checkpoint SmolLM2.gguf --scheme 8da4w -o /tmp/s.pte

Everything after `--` is `handheld export`'s own arguments. The row (label, stages, passes, wall, commit, machine)
is appended to benchmarks/results/export_stages.json. Run it alone: two torch jobs on 2 cores slow each other.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from handheld.export.provenance import export_provenance
from handheld.measure.host import host_info

RESULTS = Path(__file__).resolve().parent / "results" / "export_stages.json"


@contextlib.contextmanager
def timed(owner: object, name: str, stages: list) -> Iterator[None]:
    """`owner.name` timed on every call (appended to `stages` as [name, seconds]) while active."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            stages.append([name, round(time.perf_counter() - start, 2)])

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def pass_times(totals: dict) -> Iterator[None]:
    """Seconds per pass class (outermost calls only), summed: `totals[name] = [calls, seconds]`."""
    from torch.fx.passes.infra.pass_base import PassBase

    original, depth = PassBase.__call__, [0]

    def call(self, graph_module):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return original(self, graph_module)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                entry = totals.setdefault(type(self).__name__, [0, 0.0])
                entry[0], entry[1] = entry[0] + 1, round(entry[1] + time.perf_counter() - start, 2)

    PassBase.__call__ = call
    try:
        yield
    finally:
        PassBase.__call__ = original


def measure(export_args: list[str]) -> dict:
    import executorch.exir.program._program as edge
    import torch
    from torch.export import ExportedProgram

    import handheld.export.program as program
    from handheld.cli import main

    stages: list = []
    passes: dict = collections.OrderedDict()
    hooks = [(program, "prepare_model"), (torch.export, "export"), (ExportedProgram, "run_decompositions"),
             (edge, "_generate_edge_program"), (edge.EdgeProgramManager, "to_backend"), (program, "write_program")]
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for owner, name in hooks:
            stack.enter_context(timed(owner, name, stages))
        stack.enter_context(pass_times(passes))
        status = main(["export", *export_args])
    wall = time.perf_counter() - start
    ranked = dict(sorted(passes.items(), key=lambda item: -item[1][1]))
    return {"status": status, "wall_s": round(wall, 1), "stages": stages, "passes": ranked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names the row (e.g. the scheme and what changed)")
    parser.add_argument("export_args", nargs=argparse.REMAINDER, help="-- then handheld export's arguments")
    args = parser.parse_args()
    export_args = args.export_args[1:] if args.export_args[:1] == ["--"] else args.export_args
    row = {"producer": "benchmarks/export_stages.py", "arguments": sys.argv[1:], "label": args.label,
           **measure(export_args), "provenance": export_provenance(), "host": host_info()}
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*rows, row], indent=2) + "\n")
    print(json.dumps({key: row[key] for key in ("label", "wall_s", "stages")}, indent=1))


if __name__ == "__main__":
    main()
