"""Interleaved measurement for the benchmark tables: each round runs every row once.

This VM is shared and its speed drifts by 20% within minutes; measuring one row's runs back to back puts a
slow spell on whichever row ran then. In rounds, every row sees the same spells, so ratios between rows hold.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


def measure_in_rounds(measurers: list[Callable[..., list[dict]]], config,
                      log: Callable[[str], None] = print) -> list[dict]:
    """`config.runs` rounds; in each, every measurer is called with a one-run copy of `config` (the warm-ups only in
    the first round) and returns rows in `handheld bench`'s format. Rows with the same name pool their samples."""
    from handheld.measure.bench import METRICS, summarize

    rows: dict[str, dict] = {}
    for round_index in range(config.runs):
        once = dataclasses.replace(config, runs=1, warmup=config.warmup if round_index == 0 else 0)
        log(f"round {round_index + 1} of {config.runs}")
        for measure in measurers:
            for row in measure(once):
                rows.setdefault(row["name"], row | {"samples": []})["samples"] += row["samples"]
    for row in rows.values():
        row.update(runs=config.runs, warmup=config.warmup, interleaved=True,
                   stats={metric: summarize([sample[metric] for sample in row["samples"]]) for metric in METRICS})
    return list(rows.values())


def handheld_measurers(programs: list, native: list,
                       log: Callable[[str], None] = print) -> list[Callable[..., list[dict]]]:
    """The two measurers every speed table has: the programs on ExecuTorch's Python runtime, and `native` on
    handheld's C++ runner (rows named "... [native runner]")."""
    from handheld.measure.bench import run_bench

    def native_rows(once) -> list[dict]:
        rows = run_bench(native, dataclasses.replace(once, runner="native"), progress=log)["rows"]
        return [row | {"name": f"{row['name']} [native runner]"} for row in rows]

    return [lambda once: run_bench(programs, once, progress=log)["rows"], native_rows]
