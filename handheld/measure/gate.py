"""The CI gate: today's bench medians against a committed baseline's, program by program.

A program regresses when its median decode or prefill rate falls, or its peak RSS rises, by more than
the allowed percentage; or, when both results carry one, when its deterministic work count (instructions
or emulated blocks executed, `bench --count-work`) rises by more than that. Programs are matched by name; a baseline program that was not measured fails too,
and so does one measured with different settings (the numbers would not be comparable).
"""

from __future__ import annotations

# metric -> whether a larger value is better
GATED_METRICS = {"decode_tok_s": True, "prefill_tok_s": True, "peak_rss_bytes": False}
# Settings that must match for two rows to be compared; the work count runs single-threaded, so the
# work gate ignores the thread count, but not the toolchain that built and emulates the runner.
_SETTINGS = ("prompt_len", "gen_len", "threads", "runner", "target", "toolchain")
_WORK_SETTINGS = ("prompt_len", "gen_len", "runner", "target", "toolchain")


def _worse_pct(was: float, now: float, higher_is_better: bool) -> tuple[float, float]:
    if was <= 0:
        raise ValueError("a baseline figure of zero or less cannot be compared")
    change_pct = 100 * (now - was) / was
    return change_pct, -change_pct if higher_is_better else change_pct


def _format(metric: str, value: float) -> str:
    if metric.startswith("peak_rss_bytes"):
        return f"{value / 2**20:.0f} MiB"
    return f"{value:.2f} tok/s" if "tok_s" in metric else f"{value:,}"


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
    known = {row["name"] for row in baseline["rows"]}
    failures = [f"{name}: measured now but not in the baseline (add it to the baseline to gate it)"
                for name in measured if name not in known]
    for old in baseline["rows"]:
        new = measured.get(old["name"])
        if new is None:
            failures.append(f"{old['name']}: in the baseline but not measured now")
            continue
        failures += _row_failures(old, new, max_regression_pct, gate)
    return failures


def _row_failures(old: dict, new: dict, max_pct: float, gate: str) -> list[str]:
    name = old["name"]
    settings = _WORK_SETTINGS if gate == "work" else _SETTINGS
    differing = [s for s in settings if old.get(s) != new.get(s)]
    if differing:
        detail = ", ".join(f"{s} {old.get(s)} -> {new.get(s)}" for s in differing)
        return [f"{name}: measured with different settings than the baseline ({detail}); not comparable"]
    checks = [] if gate == "work" else [(f"{m} median", old["stats"][m]["median"], new["stats"][m]["median"], hib)
                                        for m, hib in GATED_METRICS.items()]
    old_work, new_work = old.get("work"), new.get("work")
    if old_work and new_work and old_work["metric"] == new_work["metric"]:
        checks.append((new_work["metric"], old_work["value"], new_work["value"], False))
    elif gate == "work":
        return [f"{name}: the work gate needs the same work metric in both results (bench --count-work)"]
    failures = []
    for metric, was, now, higher_is_better in checks:
        if was <= 0:
            failures.append(f"{name}: the baseline's {metric} is {was}: not a figure to compare against")
            continue
        change_pct, worse_pct = _worse_pct(was, now, higher_is_better)
        if worse_pct > max_pct:
            failures.append(f"{name}: {metric} {_format(metric, was)} -> {_format(metric, now)} "
                            f"({change_pct:+.1f}%), beyond the allowed {max_pct:g}%")
    return failures
