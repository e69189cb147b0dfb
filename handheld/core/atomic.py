"""Write files so that a failure never leaves a half-written file at the destination, and never over an input.

The content goes to a temporary name beside the destination, is flushed to disk (fsync), and is renamed
into place only on success; on any exception, Ctrl-C or SIGTERM (the CLI turns it into an exception) the
temporary is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from handheld.core.errors import HandheldError


def refuse_overwriting_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """An output may not be an input, nor lie inside an input directory (a checkpoint, say)."""
    target = Path(output).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            raise HandheldError(f"refusing to write {output}: it would overwrite or land inside the input {given}")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place only on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Not created here: the writer creates it, so it gets the usual permissions (mkstemp's are 0600).
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, destination)
        _fsync_dir(destination.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `destination`; rename it into place only on success.

    `destination` must not exist yet or be empty: checkpoints are never overwritten piecemeal.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise HandheldError(f"output {destination} exists and is not empty (or is not a directory)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise stick to the finished directory
    try:
        yield tmp
        _fsync_tree(tmp)
        if destination.exists():
            destination.rmdir()
        os.replace(tmp, destination)
        _fsync_dir(destination.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
