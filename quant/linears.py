"""Which modules of the Llama model a weight scheme treats how: the classifier apart, block linears alike."""

from __future__ import annotations

import torch
from torch import nn

from handheld.core.errors import HandheldError

CLASSIFIER = "output"
# The RMSNorm whose output each linear reads, by the linear's name in its block ("" for the classifier).
_FED_BY_NORM = {"attention.wq": "attention_norm", "attention.wk": "attention_norm", "attention.wv": "attention_norm",
                "feed_forward.w1": "ffn_norm", "feed_forward.w3": "ffn_norm"}


def untie_embedding(model: nn.Module) -> nn.Module:
    """Give the classifier its own weight: it is quantized differently from the embedding."""
    if model.output.weight is model.tok_embeddings.weight:
        model.output.weight = nn.Parameter(model.tok_embeddings.weight.detach().clone())
    return model


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every transformer-block linear (everything but the classifier)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != CLASSIFIER}


def check_group_size(model: nn.Module, group_size: int) -> None:
    if group_size <= 0:
        raise HandheldError(f"--group-size must be positive, got {group_size}")
    for name, linear in block_linears(model).items():
        if linear.in_features % group_size:
            raise HandheldError(
                f"--group-size {group_size} does not divide the input width {linear.in_features} of layer {name}"
            )


def input_importance(model: nn.Module, name: str) -> torch.Tensor | None:
    """Data-free weight of each input channel of linear `name` in its output error: the magnitude of the RMSNorm
    gain that feeds it (how large that input is relative to the others); None where no norm feeds it."""
    if name == CLASSIFIER:
        return model.norm.weight.detach().float().abs()
    owner, _, local = name.partition(".")[2].partition(".")
    norm = _FED_BY_NORM.get(local)
    if not name.startswith("layers.") or norm is None:
        return None
    return model.get_submodule(f"layers.{owner}.{norm}").weight.detach().float().abs()
