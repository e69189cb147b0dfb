"""The CI gate: today's bench medians against a committed baseline's, program by program.

A program regresses when its median decode or prefill rate falls, or its peak RSS rises, by more than
the allowed percentage; or, when both results carry one, when its deterministic work count (instructions
or emulated blocks executed, `bench --count-work`) rises by more than that. Programs are matched by name; a baseline program that was not measured fails too,
and so does one measured with different settings (the numbers would not be comparable).
"""

from __future__ import annotations

# metric -> whether a larger value is better
GATED_METRICS = {"decode_tok_s": True, "prefill_tok_s": True, "peak_rss_bytes": False}
# Settings that must match for two rows to be compared.
_SETTINGS = ("prompt_len", "gen_len", "threads", "runner", "target")


def _worse_pct(was: float, now: float, higher_is_better: bool) -> tuple[float, float]:
    change_pct = 100 * (now - was) / was
    return change_pct, -change_pct if higher_is_better else change_pct


def _format(metric: str, value: float) -> str:
    return f"{value / 2**20:.0f} MiB" if metric == "peak_rss_bytes" else f"{value:.2f} tok/s"


GATES = ("all", "work")  # every gated figure, or only the deterministic work count


def regressions(current: dict, baseline: dict, max_regression_pct: float, gate: str = "all") -> list[str]:
    """One line per failure, naming program and metric; empty when the gate passes.

    gate "work" checks only the deterministic work counts (for noisy or emulated machines), and requires them.
    """
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; known gates: {', '.join(GATES)}")
    if max_regression_pct < 0:
        raise ValueError(f"max regression must be 0 or more percent, got {max_regression_pct}")
    measured = {row["name"]: row for row in current["rows"]}
    failures = []
    for old in baseline["rows"]:
        name = old["name"]
        new = measured.get(name)
        if new is None:
            failures.append(f"{name}: in the baseline but not measured now")
            continue
        differing = [s for s in _SETTINGS if old.get(s) != new.get(s)]
        if differing:
            settings = ", ".join(f"{s} {old.get(s)} -> {new.get(s)}" for s in differing)
            failures.append(f"{name}: measured with different settings than the baseline ({settings})")
            continue
        for metric, higher_is_better in GATED_METRICS.items() if gate == "all" else ():
            was, now = old["stats"][metric]["median"], new["stats"][metric]["median"]
            change_pct, worse_pct = _worse_pct(was, now, higher_is_better)
            if worse_pct > max_regression_pct:
                failures.append(
                    f"{name}: {metric} median {_format(metric, was)} -> {_format(metric, now)} "
                    f"({change_pct:+.1f}%), beyond the allowed {max_regression_pct:g}%"
                )
        old_work, new_work = old.get("work"), new.get("work")
        if gate == "work" and not (old_work and new_work and old_work["metric"] == new_work["metric"]):
            failures.append(f"{name}: the work gate needs the same work metric in both results (bench --count-work)")
            continue
        if old_work and new_work and old_work["metric"] == new_work["metric"]:
            change_pct, worse_pct = _worse_pct(old_work["value"], new_work["value"], higher_is_better=False)
            if worse_pct > max_regression_pct:
                failures.append(f"{name}: {new_work['metric']} {old_work['value']:,} -> {new_work['value']:,} "
                                f"({change_pct:+.1f}%), beyond the allowed {max_regression_pct:g}%")
    return failures
