"""A memory check before an export or a training job: refuse at once, in one line naming both numbers, instead of
dying of memory minutes in.

Peak resident memory is estimated as a fixed part plus a part per parameter, by job (measured with /usr/bin/time -v
on the 2-core VM, BENCHMARKS.md "Export at the real sizes" and issue 29's run: Llama 3.2 1B 8da4w 7.0 GiB, 3B
8da4w 14.7 GiB, 1B fp32 10.7 GiB). The 16-bit exports reuse the fp32 figure (they load and lower through float32
first: an upper bound, not measured), and training assumes float32 weights, gradients and AdamW's two moments
(16 bytes a parameter, not measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handheld.core.errors import HandheldError

GIB = 2**30


@dataclass(frozen=True)
class PeakModel:
    fixed_gib: float  # interpreter, libraries, lowering's own working set
    gib_per_billion: float  # per billion parameters
    source: str


# 8da4w: the line through the 1B (1.236 G params, 7.0 GiB) and 3B (3.213 G, 14.7 GiB) exports.
_FIXED = 7.0 - (14.7 - 7.0) / (3.213 - 1.236) * 1.236
PEAKS = {
    "8da4w": PeakModel(_FIXED, (14.7 - 7.0) / (3.213 - 1.236), "measured: 1B and 3B 8da4w exports"),
    "fp32": PeakModel(_FIXED, (10.7 - _FIXED) / 1.236, "measured: 1B fp32 export"),
    "training": PeakModel(_FIXED, 16.0, "estimated: float32 weights, gradients and AdamW moments"),
}
_SCHEME_PEAK = {"8da4w": "8da4w", "8da4w-c4": "8da4w", "fp32": "fp32", "bf16": "fp32", "fp16": "fp32"}


def estimated_peak_bytes(parameters: int, job: str) -> int:
    """`job`: a scheme name (its export) or "training"."""
    model = PEAKS["training" if job == "training" else _SCHEME_PEAK.get(job, "fp32")]
    return round((model.fixed_gib + model.gib_per_billion * parameters / 1e9) * GIB)


def available_bytes() -> int | None:
    """MemAvailable, lowered to this process's cgroup limit when it has one; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(int(limit) - current)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def checkpoint_parameters(checkpoint) -> int:
    """Stored values of a checkpoint (a tied table once): what the per-parameter figures count."""
    return sum(t.numel() for t in checkpoint.state.values())


def check_memory(what: str, parameters: int, job: str, skip: bool = False) -> None:
    """Refuse `what` (e.g. "export of llama3.2-3b as 8da4w") when its estimated peak exceeds the memory available."""
    if skip:
        return
    needed, free = estimated_peak_bytes(parameters, job), available_bytes()
    if free is None or needed <= free:
        return
    raise HandheldError(
        f"{what} ({parameters / 1e9:.2f} G parameters) needs about {needed / GIB:.1f} GiB at its peak; "
        f"{free / GIB:.1f} GiB is available: free memory, export a smaller model or scheme (8da4w needs least), "
        f"or use a machine with more; --skip-memory-check tries anyway")
