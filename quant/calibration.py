"""Token sequences from a plain-text file: what calibrated schemes (GPTQ, NPU activation ranges), SpinQuant and
the trainers read. A stranger's file gets one line naming its problem (missing, unreadable, not UTF-8, empty,
too short), never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch

from handheld.core.errors import HandheldError


def text_sequences(path: Path, tokenizer, seq_len: int) -> torch.Tensor:
    """Non-overlapping [N, seq_len] windows of the file's tokens (the tail shorter than a window is dropped)."""
    ids = text_tokens(path, tokenizer)
    if len(ids) < seq_len:
        raise HandheldError(f"{path} has {len(ids)} tokens, fewer than one sequence of --seq-len {seq_len}")
    return windows_of(ids, seq_len)


def windows_of(ids: list[int], seq_len: int) -> torch.Tensor:
    """[N, seq_len] non-overlapping windows of `ids` (a tail shorter than a window is dropped)."""
    count = len(ids) // seq_len
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).reshape(count, seq_len)


def text_tokens(path: Path, tokenizer) -> list[int]:
    """The file's tokens (no BOS), or one line naming why it cannot be read."""
    if not path.is_file():
        raise HandheldError(f"text file {path} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise HandheldError(f"text file {path} is not UTF-8 text (byte {e.start} is {path.read_bytes()[e.start]:#04x})") from None
    except OSError as e:
        raise HandheldError(f"text file {path} cannot be read ({e.strerror})") from None
    if not text.strip():
        raise HandheldError(f"text file {path} is empty")
    return tokenizer.encode(text, bos=False)


def choose_samples(sequences: torch.Tensor, samples: int | None, seed: int) -> torch.Tensor:
    """A seeded choice of `samples` sequences (all of them, shuffled, when None)."""
    order = torch.randperm(sequences.shape[0], generator=torch.Generator().manual_seed(seed))
    if samples is not None:
        if samples < 1:
            raise HandheldError(f"--samples must be at least 1, got {samples}")
        order = order[:samples]
    return sequences[order]
