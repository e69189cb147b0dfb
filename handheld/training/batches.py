"""A deterministic batch order over token sequences (`handheld.quant.calibration` reads them from text).

Used by SpinQuant's calibration and the QAT trainer: the order depends only on (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import torch


def batch_at(sequences: torch.Tensor, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The global batch for `step`: epochs of seeded permutations, consumed batch_size rows at a time."""
    n = sequences.shape[0]
    rows = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        rows.append(order[index])
    return sequences[torch.stack(rows)]
