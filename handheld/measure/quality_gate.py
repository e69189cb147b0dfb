"""The quality gate: a program's perplexity against a baseline `handheld eval --json` result on the same text and
windows; it fails naming the program when the perplexity rose by more than the allowed share."""

from __future__ import annotations

import json
import math
from pathlib import Path

from handheld.core.errors import HandheldError

# What makes two eval results comparable: the same tokens scored the same way.
_SAME_WINDOWS = ("text_sha256", "tokens_scored", "context", "stride")


def read_eval_result(path: Path) -> dict:
    """A `handheld eval --json` result, checked; one line naming the problem otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandheldError(f"cannot read eval baseline {path}: {e}") from None
    missing = [key for key in ("model", "perplexity", *_SAME_WINDOWS) if not isinstance(data, dict) or key not in data]
    if missing:
        raise HandheldError(f"{path} is not a `handheld eval --json` result (no {', '.join(missing)})")
    perplexity = data["perplexity"]
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not math.isfinite(perplexity) \
            or perplexity < 1:
        raise HandheldError(f"{path} has no usable perplexity ({perplexity!r})")
    return data


def check_quality(result: dict, baseline: dict, baseline_path: Path, max_increase_pct: float) -> str:
    """The verdict line when `result` is within `max_increase_pct` percent of the baseline's perplexity; raises
    naming the program otherwise, or when the two did not score the same tokens the same way."""
    if not max_increase_pct >= 0:
        raise HandheldError(f"--max-increase must be a percentage >= 0, got {max_increase_pct}")
    differ = [key for key in _SAME_WINDOWS if result[key] != baseline[key]]
    if differ:
        raise HandheldError(f"{baseline_path} scored another text or other windows ({', '.join(differ)} differ): "
                            f"remake the baseline with the same --text, --context, --stride and --max-tokens")
    increase = 100 * (result["perplexity"] / baseline["perplexity"] - 1)
    line = (f"{result['model']}: perplexity {result['perplexity']:.4f}, {increase:+.2f}% against {baseline['perplexity']:.4f} "
            f"({baseline['model']}, {baseline_path}); allowed +{max_increase_pct:g}%")
    if increase > max_increase_pct:
        raise HandheldError(f"quality gate failed: {line}")
    return f"quality gate passed: {line}"
