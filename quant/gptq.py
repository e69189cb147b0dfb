"""GPTQ (Frantar et al. 2022) for the scheme's 4-bit groupwise block linears.

`sequential_gptq` runs it as the paper does, block by block: a block's Hessians come from inputs that went
through the blocks before it *already quantized*, so each block also corrects the error its predecessors made.

Each weight column is rounded in turn and its rounding error is pushed onto the columns not yet
rounded, weighted by the inverse Hessian of the layer's reconstruction error, H = 2 X^T X over
calibration inputs X. Group scales come from the (already updated) weights when a group starts, by the
same scale rule round-to-nearest uses (`quant/scale_rules.py`; the weighted rule weighs each input column by
the root of the Hessian's diagonal, how large that input really is), so GPTQ and RTN differ only in which
integers they pick.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from handheld.core.defaults import SCALE_RULE
from handheld.quant.scale_rules import QMAX, QMIN, group_scales


def group_scales_for(columns: torch.Tensor, rule: str, importance: torch.Tensor) -> torch.Tensor:
    """One group's scales [rows] for its columns [rows, group_size]."""
    return group_scales(columns.float(), columns.shape[1], rule, importance)[:, 0].double()


def round_to_grid(column: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(column / scale), QMIN, QMAX)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, scale_rule: str = SCALE_RULE,
                  damping: float = 0.01, block: int = 128, act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit values (int8 holding [-8, 7]) and per-group scales [out, in / group] for weight[out, in].

    `act_order`: round the columns with the largest Hessian diagonal (the inputs that fire most) first, while
    the most columns are left to absorb their error; the groups stay the stored contiguous ones, so their scales
    are chosen up front from the weights as given ("static groups")."""
    w = weight.double().clone()
    h = hessian.double().clone()
    importance = torch.diag(h).clamp_min(0).sqrt()
    dead = torch.diag(h) == 0  # inputs that never fire: any value works, zero is simplest
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damping * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    columns = w.shape[1]
    scales = torch.zeros(w.shape[0], columns // group_size, dtype=torch.float64, device=w.device)
    order = torch.arange(columns, device=w.device)
    if act_order:
        scales = group_scales(w.float(), group_size, scale_rule, importance).double()
        order = torch.argsort(torch.diag(h), descending=True, stable=True)
        w, h = w[:, order], h[order][:, order]
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    values = torch.zeros_like(w)
    block = max(group_size, block - block % group_size)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        errors = torch.zeros(w.shape[0], end - start, dtype=w.dtype, device=w.device)
        for i in range(start, end):
            group = int(order[i]) // group_size
            if not act_order and i % group_size == 0:
                scales[:, group] = group_scales_for(w[:, i : i + group_size], scale_rule, importance[i : i + group_size])
            q = round_to_grid(w[:, i], scales[:, group])
            values[:, i] = q
            error = (w[:, i] - q * scales[:, group]) / h_inv[i, i]
            w[:, i + 1 : end] -= error[:, None] * h_inv[i, i + 1 : end][None, :]
            errors[:, i - start] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    values[:, order] = values.clone()  # back to the stored column order
    return values.to(torch.int8), scales.float()


class HessianCollector:
    """Accumulates X^T X of every listed linear's input over forward passes (forward hooks)."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.hessians = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=m.weight.device)
                         for name, m in linears.items()}
        self.tokens = 0
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name: str):
        def accumulate(module, inputs, output):
            # Each batch's product in float32 (several times faster than float64 on CPUs), summed in float64.
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            self.hessians[name] += (2 * x.T @ x).double()
        return accumulate

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def dequantized(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """values [out, in] (int8 holding int4) times their group's scale [out, in / group]."""
    group_size = values.shape[1] // scales.shape[1]
    return values.float() * scales.repeat_interleave(group_size, dim=1)


@torch.no_grad()
def sequential_gptq(model: nn.Module, sequences: torch.Tensor, group_size: int, batch_size: int,
                    scale_rule: str = SCALE_RULE, act_order: bool = False, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda h: h,
                    skip: frozenset[str] = frozenset()) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GPTQ of every block linear, block by block through the already-quantized prefix. Each block's weights
    are replaced by their quantized values in place; returns {linear name: (values, scales)}.
    `reduce` sums Hessians across data-parallel processes (each holds its own share of `sequences`); linears in
    `skip` (kept at 8 bits) stay float: their rounding error is small next to 4-bit's."""
    hidden = [model.tok_embeddings(sequences[i : i + batch_size]) for i in range(0, sequences.shape[0], batch_size)]
    rope = model.batch_rope(sequences.shape[1])
    results = {}
    for index, block in enumerate(model.layers):
        linears = {f"layers.{index}.{name}": m for name, m in block.named_modules()
                   if isinstance(m, nn.Linear) and f"layers.{index}.{name}" not in skip}
        collector = HessianCollector(linears)
        for h in hidden:
            block.forward_batch(h, *rope)
        collector.close()
        for name, linear in linears.items():
            values, scales = gptq_quantize(linear.weight.detach(), reduce(collector.hessians[name]), group_size, scale_rule,
                                           act_order=act_order)
            linear.weight.copy_(dequantized(values, scales).to(linear.weight.dtype))
            results[name] = (values, scales)
        hidden = [block.forward_batch(h, *rope) for h in hidden]  # what the next block sees once this one ships
    return results
