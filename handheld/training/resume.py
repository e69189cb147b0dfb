"""Resumable job state: a staging folder beside the output, saved atomically every few steps.

The state records a fingerprint of everything that determines the run (model shape, data, seed,
hyper-parameters); resuming with different inputs is an error rather than a silently mixed run.
State files hold only tensors, numbers and strings and load with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from handheld.core.atomic import atomic_path
from handheld.core.errors import HandheldError

STATE_FILE = "state.pt"


def staging_dir(output: Path) -> Path:
    return output.with_name(output.name + ".resume")


def fingerprint(**fields) -> str:
    """A stable digest of JSON-able values and tensors."""
    digest = hashlib.sha256()
    for key in sorted(fields):
        value = fields[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """Tells checkpoints apart cheaply: every tensor's name, shape and first and last values."""
    parts = {}
    for name in sorted(state):
        flat = state[name].detach().reshape(-1)
        parts[name] = [list(state[name].shape), flat[:64].float().tolist(), flat[-64:].float().tolist()]
    return fingerprint(weights=parts)


def start_or_resume(output: Path, resume: bool, print_fingerprint: str) -> dict | None:
    """The saved state when resuming; None for a fresh start. Refuses to clobber or mix runs."""
    if output.exists() and any(output.iterdir()):
        raise HandheldError(f"output directory {output} exists and is not empty")
    state_path = staging_dir(output) / STATE_FILE
    if not resume:
        if state_path.exists():
            raise HandheldError(f"{state_path} holds an interrupted run: pass --resume to continue it, or delete it")
        return None
    if not state_path.exists():
        raise HandheldError(f"--resume: no saved state at {state_path}")
    try:
        state = torch.load(state_path, weights_only=True, map_location="cpu")
    except Exception as e:  # a parse boundary: a damaged or foreign file can raise many types
        raise HandheldError(f"--resume: {state_path} is damaged ({e.__class__.__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("fingerprint") != print_fingerprint:
        raise HandheldError(f"--resume: {state_path} was saved by a run with another model, data or settings")
    return state


def save_state(output: Path, state: dict) -> None:
    folder = staging_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / STATE_FILE) as tmp:
        torch.save(state, tmp)


def discard_state(output: Path) -> None:
    shutil.rmtree(staging_dir(output), ignore_errors=True)
