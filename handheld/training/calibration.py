"""Token sequences from a plain-text file, and a deterministic batch order over them.

Used by SpinQuant's calibration and the QAT trainer: the order depends only on (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from handheld.core.errors import HandheldError


def text_sequences(path: Path, tokenizer, seq_len: int) -> torch.Tensor:
    """Non-overlapping [N, seq_len] windows of the file's tokens (the tail shorter than a window is dropped)."""
    if not path.is_file():
        raise HandheldError(f"text file {path} not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise HandheldError(f"text file {path} is empty")
    ids = tokenizer.encode(text, bos=False)
    if len(ids) < seq_len:
        raise HandheldError(f"{path} has {len(ids)} tokens, fewer than one sequence of --seq-len {seq_len}")
    count = len(ids) // seq_len
    return torch.tensor(ids[: count * seq_len]).reshape(count, seq_len)


def choose_samples(sequences: torch.Tensor, samples: int | None, seed: int) -> torch.Tensor:
    """A seeded choice of `samples` sequences (all of them, shuffled, when None)."""
    order = torch.randperm(sequences.shape[0], generator=torch.Generator().manual_seed(seed))
    if samples is not None:
        if samples < 1:
            raise HandheldError(f"--samples must be at least 1, got {samples}")
        order = order[:samples]
    return sequences[order]


def batch_at(sequences: torch.Tensor, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The global batch for `step`: epochs of seeded permutations, consumed batch_size rows at a time."""
    n = sequences.shape[0]
    rows = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        rows.append(order[index])
    return sequences[torch.stack(rows)]
