"""Which code made a `.pte`: the git commit (and whether the tree had uncommitted changes), a digest of
the code that decides the program's contents, and the library versions. It travels in the program's
metadata and every bench row repeats it, so a table never mixes programs of different code unnoticed."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path

import handheld.core
import handheld.export
import handheld.quant

# The packages whose code shapes what an export writes: the model, checkpoints and tokenizers, the schemes,
# the lowering. (Measuring and CLI code do not change a program.)
_EXPORT_CODE = (handheld.core, handheld.quant, handheld.export)
_LIBRARIES = ("torch", "executorch", "torchao")


def code_digest(roots: tuple[Path, ...] | None = None) -> str:
    """sha256 over every Python file and shape file under the roots, by relative path and content."""
    roots = roots or tuple(Path(package.__file__).parent for package in _EXPORT_CODE)
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and p.is_file()):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def export_provenance() -> dict[str, object]:
    """Cached per process: an export reads it once, a test suite many times."""
    commit, dirty = _git_state(Path(handheld.core.__file__).resolve().parents[2])
    versions = {name: package_version(name) for name in _LIBRARIES}
    return {"commit": commit, "dirty": dirty, "code_digest": code_digest(), **versions}


def _git_state(root: Path) -> tuple[str, bool | None]:
    """(commit, tree dirty) of a git checkout; ("unknown", None) for an installed wheel."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown", None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
