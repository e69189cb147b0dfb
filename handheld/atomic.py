"""Write files so that a failure never leaves a half-written file at the destination."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Not created here: the writer creates it, so it gets the usual permissions (mkstemp's are 0600).
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        yield tmp
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `destination`; rename it into place only on success.

    `destination` must not exist yet or be empty: checkpoints are never overwritten piecemeal.
    """
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        from handheld.errors import HandheldError

        raise HandheldError(f"output directory {destination} exists and is not empty")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise stick to the finished directory
    try:
        yield tmp
        if destination.exists():
            destination.rmdir()
        os.replace(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
