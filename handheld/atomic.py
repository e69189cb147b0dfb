"""Write files so that a failure never leaves a half-written file at the destination."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
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
    import shutil

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        from handheld.errors import HandheldError

        raise HandheldError(f"output directory {destination} exists and is not empty")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        yield tmp
        if destination.exists():
            destination.rmdir()
        os.replace(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
