"""The fine-tuning loop behind `handheld qat`: AdamW, linear warm-up then cosine decay, gradient
accumulation, masked next-token loss, periodic validation, resumable checkpoints, data parallel.

Batches: each optimizer step consumes `grad_accum` micro-batches of `batch_size` sequences (the global
batch is their product, whatever the number of processes). Under torchrun each process takes its rows
of every micro-batch and DDP sums the gradients, so N processes compute what one process does on
the same global batch. The loss is normalised by the global number of trained tokens of the step.

Resuming restores the model, the optimizer and the step; the data order and learning rate are
functions of the step, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from handheld.training.batches import batch_at
from handheld.training.distributed import Group
from handheld.training.finetune_data import Examples
from handheld.training.options import TrainConfig


@dataclass
class TrainState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = 0.0


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to 10% of it by the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _BatchLoss(nn.Module):
    """Summed masked next-token cross-entropy of `forward_batch`, as a module DDP can wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.model.forward_batch(tokens[:, :-1]).float()
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
        return (losses * mask[:, 1:].reshape(-1)).sum()


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_set: Examples, val_set: Examples,
          config: TrainConfig, group: Group, state: TrainState,
          save: Callable[[TrainState], None], progress: Callable[[TrainState], None]) -> TrainState:
    loss_module = _BatchLoss(model)
    runner = _data_parallel(loss_module, group)
    device = group.device
    model.train()
    while state.step < config.steps:
        started = time.perf_counter()
        micro = [train_set.rows(_rows(len(train_set), state.step * config.grad_accum + k, config))
                 for k in range(config.grad_accum)]
        trained_tokens = sum(int(m.mask[:, 1:].sum()) for m in micro)  # global: every process knows the batch
        total = torch.zeros((), device=device)
        for k, batch in enumerate(micro):
            tokens, mask = group.shard(batch.tokens).to(device), group.shard(batch.mask).to(device)
            with _maybe_no_sync(runner, last=k == len(micro) - 1):
                # DDP averages over processes; scaling by their number turns that into the global sum.
                loss = runner(tokens, mask) * group.world / max(1, trained_tokens)
                loss.backward()
            total += loss.detach() / group.world
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr_at(state.step, config)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.losses.append(group.sum_(total).item())
        state.tokens_per_s = trained_tokens / (time.perf_counter() - started)
        if state.step % config.eval_every == 0 or state.step == config.steps:
            state.validation.append((state.step, validation_loss(loss_module, val_set, config.batch_size, group)))
            model.train()
        if state.step % config.save_every == 0 and state.step < config.steps:
            save(state)
        progress(state)
    model.eval()
    return state


def _rows(n: int, micro_step: int, config: TrainConfig) -> torch.Tensor:
    return batch_at(torch.arange(n), micro_step, config.batch_size, config.seed)


def _data_parallel(module: nn.Module, group: Group) -> nn.Module:
    if group.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # On a GPU, DDP needs to know which one is this process's.
    return DistributedDataParallel(module, device_ids=[group.device.index] if group.device.type == "cuda" else None)


def _maybe_no_sync(runner: nn.Module, last: bool):
    import contextlib

    if last or not hasattr(runner, "no_sync"):
        return contextlib.nullcontext()
    return runner.no_sync()


@torch.no_grad()
def validation_loss(loss_module: nn.Module, val_set: Examples, batch_size: int, group: Group) -> float:
    """Mean masked next-token loss over the validation rows (each process scores its share)."""
    loss_module.eval()
    mine = val_set.rows(torch.arange(group.rank, len(val_set), group.world))
    total, count = (torch.zeros((), dtype=torch.float64, device=group.device) for _ in range(2))
    for start in range(0, len(mine), batch_size):
        batch = mine.rows(torch.arange(start, min(start + batch_size, len(mine))))
        total += loss_module(batch.tokens.to(group.device), batch.mask.to(group.device)).double()
        count += batch.mask[:, 1:].sum().to(group.device)
    return (group.sum_(total) / group.sum_(count).clamp(min=1)).item()
