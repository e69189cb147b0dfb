"""Meta's checkpoint format: `consolidated.00.pth` (a plain state dict) + `params.json`.

Loading never executes code: `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from handheld.core.llama.config import ModelArgs, read_params_json
from handheld.core.errors import HandheldError

WEIGHTS = "consolidated.00.pth"
PARAMS = "params.json"


def is_meta_checkpoint(directory: Path) -> bool:
    return (directory / PARAMS).is_file()


def read_meta(directory: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    args = read_params_json(directory / PARAMS)
    shards = sorted(directory.glob("consolidated.*.pth"))
    if not shards:
        raise HandheldError(f"{directory}: params.json found but no {WEIGHTS}")
    if len(shards) > 1:
        raise HandheldError(f"{directory}: {len(shards)} model-parallel shards; merge them into one {WEIGHTS} first")
    return args, _load_state_dict(shards[0])


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a parse boundary: a damaged file can raise almost anything from the unpickler
        raise HandheldError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({e.__class__.__name__}: {e})".splitlines()[0]) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HandheldError(f"{path} does not hold a flat dict of tensors")
    return state


def write_meta(directory: Path, args: ModelArgs, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, directory / WEIGHTS)
    (directory / PARAMS).write_text(json.dumps(args.to_dict(), indent=2) + "\n")
