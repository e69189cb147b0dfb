"""The proxy model's corpus: the Python 3.11 documentation sources (reStructuredText prose) from
Debian's `python3.11-doc` package, split by file into train / validation / test deterministically."""

from __future__ import annotations

import hashlib
from pathlib import Path

DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
INSTALL_HINT = "install Debian's python3.11-doc package (apt-get install python3.11-doc)"


def split_of(relative_path: str) -> str:
    """90 / 5 / 5 by a hash of the file's path: stable across machines and runs."""
    bucket = int(hashlib.sha256(relative_path.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


def load_splits(root: Path = DOC_SOURCES) -> dict[str, str]:
    files = sorted(root.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no documentation sources under {root}: {INSTALL_HINT}")
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for path in files:
        parts[split_of(str(path.relative_to(root)))].append(path.read_text(encoding="utf-8"))
    return {name: "\n\n".join(texts) for name, texts in parts.items()}


def calibration_text(root: Path = DOC_SOURCES, max_chars: int = 300_000) -> str:
    """Whole training-split documents spread over the corpus (every k-th file), about `max_chars` long:
    the shipped calibration / fine-tuning sample, representative of the training distribution."""
    files = [p for p in sorted(root.rglob("*.rst.txt")) if split_of(str(p.relative_to(root))) == "train"]
    if not files:
        raise SystemExit(f"no documentation sources under {root}: {INSTALL_HINT}")
    texts = [p.read_text(encoding="utf-8") for p in files]
    step = max(1, round(sum(map(len, texts)) / max_chars))
    picked, size = [], 0
    for text in texts[::step]:
        if size + len(text) > max_chars:
            continue
        picked.append(text)
        size += len(text)
    return "\n\n".join(picked) + "\n"
