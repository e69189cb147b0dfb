"""SpinQuant's R4 as a transform: fold a Hadamard rotation into every FFN down projection and apply
its inverse online to the projection's input, so the function is unchanged but the input's outliers
are spread out before 4-bit quantization."""

from __future__ import annotations

import torch
from torch import nn

from handheld.errors import HandheldError
from handheld.model import hadamard_transform


def check_hadamard_size(n: int) -> None:
    if n < 2 or n & (n - 1):
        raise HandheldError(f"the online Hadamard transform needs a power-of-two FFN width, got {n}")


def fold_r4(model: nn.Module) -> nn.Module:
    """w2 <- w2 @ H (H symmetric, orthonormal), with H applied online: w2 @ H @ H @ x = w2 @ x."""
    for layer in model.layers:
        ff = layer.feed_forward
        check_hadamard_size(ff.w2.in_features)
        with torch.no_grad():
            ff.w2.weight.copy_(hadamard_transform(ff.w2.weight.float()).to(ff.w2.weight.dtype))
        ff.online_hadamard = True
    return model


def enable_online_hadamard(model: nn.Module) -> nn.Module:
    """For checkpoints whose w2 already has R4 folded in (Meta's SpinQuant releases)."""
    for layer in model.layers:
        check_hadamard_size(layer.feed_forward.w2.in_features)
        layer.feed_forward.online_hadamard = True
    return model
