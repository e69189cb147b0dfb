"""GPTQ (Frantar et al. 2022) for the scheme's 4-bit groupwise block linears.

Each weight column is rounded in turn and its rounding error is pushed onto the columns not yet
rounded, weighted by the inverse Hessian of the layer's reconstruction error, H = 2 X^T X over
calibration inputs X. Group scales come from the (already updated) weights when a group starts,
on the same grid as torchao's RTN (symmetric, scale = amax / 7.5, values in [-8, 7]), so GPTQ and RTN
differ only in which integers they pick.
"""

from __future__ import annotations

import torch
from torch import nn

QMIN, QMAX = -8, 7
SCALE_DIVISOR = (QMAX - QMIN) / 2  # torchao's symmetric int4 convention


def group_scales(columns: torch.Tensor) -> torch.Tensor:
    return (columns.abs().amax(dim=1) / SCALE_DIVISOR).clamp(min=torch.finfo(torch.float32).eps)


def round_to_grid(column: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(column / scale), QMIN, QMAX)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, damping: float = 0.01,
                  block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit values (int8 holding [-8, 7]) and per-group scales [out, in / group] for weight[out, in]."""
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0  # inputs that never fire: any value works, zero is simplest
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damping * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    columns = w.shape[1]
    values = torch.zeros_like(w)
    scales = torch.zeros(w.shape[0], columns // group_size, dtype=torch.float64)
    block = max(group_size, block - block % group_size)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        errors = torch.zeros(w.shape[0], end - start, dtype=w.dtype)
        for i in range(start, end):
            if i % group_size == 0:
                scales[:, i // group_size] = group_scales(w[:, i : i + group_size])
            scale = scales[:, i // group_size]
            q = round_to_grid(w[:, i], scale)
            values[:, i] = q
            error = (w[:, i] - q * scale) / h_inv[i, i]
            w[:, i + 1 : end] -= error[:, None] * h_inv[i, i + 1 : end][None, :]
            errors[:, i - start] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return values.to(torch.int8), scales.float()


class HessianCollector:
    """Accumulates X^T X of every listed linear's input over forward passes (forward hooks)."""

    def __init__(self, linears: dict[str, nn.Linear]):
        self.hessians = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in linears.items()}
        self.tokens = 0
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name: str):
        def accumulate(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            self.hessians[name] += 2 * x.T @ x
        return accumulate

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
