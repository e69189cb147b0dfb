"""Where handheld keeps what it downloads or builds once: ~/.cache/handheld, or $HANDHELD_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("HANDHELD_CACHE", Path.home() / ".cache" / "handheld"))
