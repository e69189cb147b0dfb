"""Learning SpinQuant's R1 and R2: Cayley SGD on the orthogonal group, minimising the cross-entropy of
the network under the target fake quantization (4-bit g32 weights, 8-bit per-token activations, 8-bit
embedding and classifier) with straight-through gradients; the weights themselves stay frozen.

The model is norm-folded with R4 already folded in; each step computes its rotated weights from the
current rotations (`spinquant.rotated_state`) and runs the fake-quantized network on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from handheld.training.distributed import Group
from handheld.quant.spinquant import Rotations, rotatable_state, rotated_state


def cayley_step(x: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """One step on the orthogonal matrices along the Riemannian gradient, staying exactly on the manifold:
    A = G X^T - X G^T (skew-symmetric), X <- (I + lr/2 A)^-1 (I - lr/2 A) X  (~ X - lr (G - X G^T X))."""
    x64, g64 = x.double(), grad.double()
    skew = g64 @ x64.transpose(-1, -2) - x64 @ g64.transpose(-1, -2)
    eye = torch.eye(x.shape[-1], dtype=torch.float64, device=x.device).expand_as(skew)
    return torch.linalg.solve(eye + 0.5 * lr * skew, (eye - 0.5 * lr * skew) @ x64).to(x.dtype)


class _BatchForward(nn.Module):
    """`functional_call` runs `forward`; the training path is `forward_batch`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.forward_batch(tokens)


def quantized_loss(fake_quant_model: nn.Module, frozen: dict[str, torch.Tensor], rotations: Rotations,
                   tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the fake-quantized network with rotated weights."""
    weights = rotated_state(frozen, rotations, fake_quant_model.args)
    logits = torch.func.functional_call(_BatchForward(fake_quant_model), {f"model.{k}": v for k, v in weights.items()}, (tokens,))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def _batch_gradients(fake_quant_model, frozen, rotations: Rotations, my_rows: torch.Tensor,
                     group: Group) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean loss and gradients over the global batch, summed one sequence at a time in global order, so
    that any number of processes gives bit-identical results (the quantized loss is so sensitive to
    rounding that reduction-order noise would otherwise grow step by step)."""
    per_row = []
    for row in my_rows:
        r1 = rotations.r1.float().requires_grad_(True)
        r2 = rotations.r2.float().requires_grad_(True)
        loss = quantized_loss(fake_quant_model, frozen, Rotations(r1, r2), row[None])
        grads = torch.autograd.grad(loss, (r1, r2))
        per_row.append(torch.cat([loss.detach().reshape(1), grads[0].reshape(-1), grads[1].reshape(-1)]))
    everything = group.gather_rows(torch.stack(per_row))
    total = everything[0].clone()
    for row in everything[1:]:
        total += row
    total /= everything.shape[0]
    n1 = rotations.r1.numel()
    return total[0].item(), total[1 : 1 + n1].reshape(rotations.r1.shape), total[1 + n1 :].reshape(rotations.r2.shape)


def without_kept(grad_r1: torch.Tensor, kept: tuple[int, ...]) -> torch.Tensor:
    """The gradient with the kept channels' rows and columns zeroed: the Cayley update's skew matrix is then zero
    there too, so R1 stays the identity on them (their gains stay in the norms, which must commute with R1)."""
    if not kept:
        return grad_r1
    grad_r1 = grad_r1.clone()
    grad_r1[list(kept), :] = 0
    grad_r1[:, list(kept)] = 0
    return grad_r1


@dataclass
class LearnState:
    step: int
    rotations: Rotations


def learn_rotations(fake_quant_model: nn.Module, state: LearnState, steps: int, lr: float,
                    batch_for_step: Callable[[int], torch.Tensor], group: Group,
                    on_step: Callable[[LearnState, float], None] = lambda s, loss: None) -> LearnState:
    """Run Cayley SGD from `state.step` to `steps`; `batch_for_step(step)` gives the global batch.

    Each process computes the gradients of its shard's sequences; see `_batch_gradients`.
    """
    frozen = rotatable_state(fake_quant_model)
    for param in fake_quant_model.parameters():
        param.requires_grad_(False)
    while state.step < steps:
        loss, grad_r1, grad_r2 = _batch_gradients(fake_quant_model, frozen, state.rotations,
                                                  group.shard(batch_for_step(state.step)), group)
        grad_r1 = without_kept(grad_r1, state.rotations.kept)
        state = LearnState(state.step + 1, Rotations(
            cayley_step(state.rotations.r1, grad_r1, lr), cayley_step(state.rotations.r2, grad_r2, lr), state.rotations.kept))
        on_step(state, loss)
    return state
