"""SpinQuant's R4 as a transform: fold a Hadamard rotation into every FFN down projection and apply
it online to the projection's input, so the function is unchanged but the input's outliers are
spread out before 4-bit quantization."""

from __future__ import annotations

import torch
from torch import nn

from handheld.core.llama.hadamard import check_hadamard_size, hadamard_matrix


def fold_r4(model: nn.Module) -> nn.Module:
    """w2 <- w2 @ H^T with H applied online: w2 @ H^T @ H @ x = w2 @ x."""
    for layer in model.layers:
        ff = layer.feed_forward
        check_hadamard_size(ff.w2.in_features, "the FFN width (SpinQuant's online R4)")
        h = hadamard_matrix(ff.w2.in_features)
        with torch.no_grad():
            ff.w2.weight.copy_((ff.w2.weight.double() @ h.T).to(ff.w2.weight.dtype))
        ff.enable_online_hadamard()
    return model


def enable_online_hadamard(model: nn.Module) -> nn.Module:
    """For checkpoints whose w2 already has R4 folded in (Meta's SpinQuant releases)."""
    for layer in model.layers:
        check_hadamard_size(layer.feed_forward.w2.in_features, "the FFN width (SpinQuant's online R4)")
        layer.feed_forward.enable_online_hadamard()
    return model


def unfold_r4(model: nn.Module) -> nn.Module:
    """`fold_r4` undone: w2 <- w2 @ H, no online Hadamard. For float checkpoints (params.json has no way to
    say "apply R4 online"), so R1 and R2 stay folded and the function is unchanged."""
    for layer in model.layers:
        ff = layer.feed_forward
        if not ff.online_hadamard:
            continue
        h = hadamard_matrix(ff.w2.in_features)
        with torch.no_grad():
            ff.w2.weight.copy_((ff.w2.weight.double() @ h).to(ff.w2.weight.dtype))
        ff.online_hadamard = False
        del ff.hadamard_a, ff.hadamard_b
    return model
