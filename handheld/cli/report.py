"""`handheld report`: Markdown report with charts from bench results; optional regression gate."""

from __future__ import annotations

import argparse
from pathlib import Path

from handheld.cli._shared import add_gate_arguments, apply_gate, read_baseline

HELP = "Markdown report with charts from bench results; optional regression gate"
DESCRIPTION = ("Compares programs side by side (ratios against the fastest unquantized program, share of the "
               "memory-bandwidth roofline) in DIR/report.md with PNG charts; --eval adds perplexity from "
               "`handheld eval --json`.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULTS.json", help="`handheld bench --json` output(s)")
    p.add_argument("-o", "--output", required=True, help="folder for report.md and the charts")
    p.add_argument("--eval", action="append", default=[], metavar="EVAL.json",
                   help="`handheld eval --json` output; matched to programs by scheme (repeatable)")
    p.add_argument("--base", help="program to compute ratios against (default: fastest fp32/bf16 program)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    add_gate_arguments(p)


def run(args: argparse.Namespace) -> None:
    from handheld.core.atomic import refuse_overwriting_inputs
    from handheld.measure.bench import load_results
    from handheld.measure.report import load_evals, write_report, written_files

    for output in written_files(Path(args.output)):
        refuse_overwriting_inputs(output, [*args.results, *args.eval, args.baseline])
    results = load_results([Path(p) for p in args.results])
    baseline = read_baseline(args)
    report = write_report(results, Path(args.output), evals=load_evals([Path(p) for p in args.eval]),
                          base_name=args.base, notes=args.note)
    print(f"wrote {report}")
    apply_gate(results, baseline, args.max_regression, args.gate)
