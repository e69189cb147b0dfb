"""What machine a measurement ran on, and how fast it moves memory (the decode roofline's denominator)."""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from importlib import metadata

from handheld.runtime_bindings.native.targets import RELEVANT_FLAGS

def _cpuinfo_field(*names: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in names:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name", "Model name", "Hardware") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    raw = (_cpuinfo_field("flags", "Features") or "").split()
    return [flag for flag in RELEVANT_FLAGS if flag in raw]


def usable_cores() -> int:
    """Cores this process may run on: the affinity mask (taskset, cgroups, CI runners), not the machine's count.
    HANDHELD_CORES overrides it (tests simulate other machines with it)."""
    override = os.environ.get("HANDHELD_CORES")
    if override:
        return max(1, int(override))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def host_info() -> dict:
    """The fields every benchmark row carries, so a row describes itself when read alone."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("handheld", "executorch", "torch", "torchao")},
    }


def measure_bandwidth_gbs(threads: int, megabytes: int = 256, repeats: int = 8) -> float:
    """STREAM-style triad a = b + s*c over arrays far larger than the caches; best of `repeats`, in GB/s.

    Counts 3 arrays' bytes per pass (two reads, one write), as STREAM does.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = megabytes * 2**20 // 4
        a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.add(b, c, alpha=3.0, out=a)
            best = min(best, time.perf_counter() - start)
        return 3 * n * 4 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def run_record() -> dict:
    """What every results file records about its run: the script, its arguments, the commit (and whether the tree
    was dirty) and the machine."""
    import sys
    from pathlib import Path

    from handheld.export.provenance import export_provenance

    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[2]
    producer = str(script.relative_to(root)) if script.is_relative_to(root) else script.name
    provenance = export_provenance()
    return {"producer": producer, "arguments": sys.argv[1:], "commit": provenance["commit"],
            "dirty": provenance["dirty"], "host": host_info()}
