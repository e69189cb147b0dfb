"""How a symmetric 4-bit group's scale is chosen, as one table of rules.

Every rule stores the format XNNPACK runs: integers in [-8, 7] times one positive scale per group of
`group_size` input columns (XNNPACK refuses negative scales, so llama.cpp Q4_0's trick of sending a positive
extreme to -8 is not available). Rules differ only in the scale they pick:

- `absmax`: torchao's default, max |w| / 7.5: neither extreme lands on a level.
- `extreme`: the group's extreme stored exactly: |w| / 8 when it is negative, w / 7 when positive.
- `weighted` (the default): a search over 30 scales from |extreme| / 9 to |extreme| / 6.1, each refitted by
  weighted least squares, keeping the one with the least weighted squared error. A weight's error counts by
  its input channel's importance (data-free: the magnitude of the RMSNorm gain feeding the linear; with
  calibration data: the root of the Hessian's diagonal) times |w| (large weights matter more: an unweighted
  search clips the extremes and loses, measured in benchmarks/results/scale_rules_smollm2.json).

Scales are rounded to bfloat16 before the integers are chosen: XNNPACK stores 4-bit group scales in bf16, so
the integers fit the scale the program really uses.
"""

from __future__ import annotations

from typing import Callable

import torch

from handheld.core.errors import HandheldError

QMIN, QMAX = -8, 7
_TINY = 2.0 ** -100  # scale of an all-zero group: any positive number stores zeros exactly


def _signed_extreme(groups: torch.Tensor) -> torch.Tensor:
    return groups.gather(1, groups.abs().argmax(dim=1, keepdim=True))


def absmax_scales(groups: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    return groups.abs().amax(dim=1, keepdim=True) / ((QMAX - QMIN) / 2)


def extreme_scales(groups: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    extreme = _signed_extreme(groups)
    return torch.where(extreme < 0, extreme / QMIN, extreme / QMAX)


def weighted_search_scales(groups: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """llama.cpp's make_qx_quants search (candidate inverse scales around levels / |extreme|, each refitted by
    least squares) restricted to positive scales, scored by the weighted squared error of the refitted scale."""
    weights = importance * groups.abs()
    reach = groups.abs().amax(dim=1, keepdim=True).clamp_min(_TINY)
    best_scale, best_error = extreme_scales(groups, importance), torch.full_like(reach, float("inf"))
    for step in range(30):
        levels = torch.clamp(torch.round(groups * ((6.1 + step / 10) / reach)), QMIN, QMAX)
        fitted = (weights * groups * levels).sum(1, keepdim=True) / (weights * levels * levels).sum(1, keepdim=True).clamp_min(1e-30)
        scale = torch.where(fitted > _TINY, fitted, best_scale)
        error = (weights * (groups - torch.clamp(torch.round(groups / scale), QMIN, QMAX) * scale) ** 2).sum(1, keepdim=True)
        better = error < best_error
        best_scale, best_error = torch.where(better, scale, best_scale), torch.where(better, error, best_error)
    return best_scale


ScaleRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCALE_RULES: dict[str, ScaleRule] = {
    "weighted": weighted_search_scales,
    "extreme": extreme_scales,
    "absmax": absmax_scales,
}


def check_scale_rule(name: str) -> str:
    if name not in SCALE_RULES:
        raise HandheldError(f"unknown scale rule {name!r}; known scale rules: {', '.join(SCALE_RULES)}")
    return name


def quantize_groups(weight: torch.Tensor, group_size: int, rule: str,
                    importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values in [-8, 7] [out, in] and float32 scales [out, in / group_size] of weight [out, in]."""
    out_features, in_features = weight.shape
    scales = torch.empty(out_features, in_features // group_size)
    values = torch.empty(out_features, in_features, dtype=torch.int8)
    rows = max(1, 2 ** 22 // in_features)  # a slice at a time: the search's temporaries stay a few MB
    for start in range(0, out_features, rows):
        part = weight[start : start + rows].detach().float()
        scales[start : start + rows] = group_scales(part, group_size, rule, importance)
        values[start : start + rows] = round_to_scales(part, scales[start : start + rows])
    return values, scales


def group_scales(part: torch.Tensor, group_size: int, rule: str, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Scales [rows, in / group_size] of part [rows, in] grouped along each row; `importance` [in] weighs
    each input column (None: all alike)."""
    rows, width = part.shape
    importance = torch.ones(width) if importance is None else importance.float()
    groups = part.reshape(-1, group_size)
    per_group = importance.expand(rows, width).reshape(-1, group_size)
    scales = SCALE_RULES[check_scale_rule(rule)](groups, per_group).reshape(rows, width // group_size)
    scales = scales.clamp_min(_TINY)  # an all-zero group: any positive scale stores its zeros
    return scales.to(torch.bfloat16).float()


def round_to_scales(columns: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] for columns [rows, groups * g] on their groups' scales [rows, groups]."""
    group_size = columns.shape[1] // scales.shape[1]
    expanded = scales.repeat_interleave(group_size, dim=1)
    return torch.clamp(torch.round(columns.float() / expanded), QMIN, QMAX).to(torch.int8)
