"""`handheld bench`: measure `.pte` programs, each run in a fresh child process, into self-describing rows.

A row says what ran (model shape, scheme, backend — from the program's metadata, not its file name),
how (prompt/generated lengths, threads, runner, target) and where (CPU, flags, cores, OS, versions),
with every run's figures and their median, min, max and coefficient of variation.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from handheld.errors import HandheldError
from handheld.host import host_info

SCHEMA = "handheld-bench/1"
# The figures each run reports; "higher is better" for rates, lower for the rest.
METRICS = ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes", "program_rss_bytes")
RUNNERS = ("python", "native")  # ExecuTorch's Python runtime, or handheld's C++ runner
_MEASURE_MODULE = "handheld.runtime_bindings.measure"


@dataclass(frozen=True)
class BenchConfig:
    prompt_len: int = 64
    gen_len: int = 128
    runs: int = 5
    warmup: int = 1
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    runner: str = "python"
    target: str = "host"
    count_work: bool = False  # also one counted run: a deterministic figure for the regression gate

    def __post_init__(self):
        for name in ("prompt_len", "gen_len", "runs", "threads"):
            if getattr(self, name) < 1:
                raise HandheldError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise HandheldError(f"--warmup must be 0 or more, got {self.warmup}")
        from handheld.runtime_bindings.native import get_target

        if self.runner not in RUNNERS:
            raise HandheldError(f"unknown runner {self.runner!r}; known runners: {', '.join(RUNNERS)}")
        if get_target(self.target).emulator is not None and self.runner != "native":
            raise HandheldError(f"target {self.target} runs the native runner only: add --runner native")
        if self.count_work and self.runner != "native":
            raise HandheldError("--count-work counts the native runner's work: add --runner native")

    @property
    def emulated(self) -> bool:
        from handheld.runtime_bindings.native import get_target

        return get_target(self.target).emulator is not None


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, max and coefficient of variation (population stdev over mean) of one metric's runs."""
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    cv = statistics.pstdev(values) / mean if mean else 0.0
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "cv": cv}


def bytes_per_token(metadata: dict) -> int | None:
    """Weight bytes one decoded token reads: every weight, but only one row of an untied embedding table.

    From the program's own `handheld_weight_bytes`; None for programs handheld did not write.
    """
    raw = metadata.get("handheld_weight_bytes")
    if not raw:
        return None
    kinds = json.loads(raw)
    vocab = int(metadata["get_vocab_size"])
    table = kinds.get("8-bit embedding", 0) + kinds.get("embedding", 0)
    return round(sum(kinds.values()) - table * (1 - 1 / vocab))


def run_child(pte: Path, config: BenchConfig, native_binary: Path | None = None) -> dict:
    """One run in a fresh process: the Python runtime's measuring module, or the native runner."""
    if config.runner == "native":
        from handheld.runtime_bindings.measure import synthetic_prompt
        from handheld.runtime_bindings.native import run_native

        result = run_native(native_binary, config.target, pte, synthetic_prompt(config.prompt_len), config.gen_len,
                            config.threads)
        result.pop("stderr")
        result["first_tokens"] = result.pop("tokens")[:8]
        return result
    command = [sys.executable, "-m", _MEASURE_MODULE, str(pte), "--prompt-len", str(config.prompt_len),
               "--gen-len", str(config.gen_len), "--threads", str(config.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise HandheldError(f"measuring {pte} failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_program(pte: Path, config: BenchConfig, progress: Callable[[str], None] = lambda _: None,
                  native_binary: Path | None = None) -> dict:
    if not pte.is_file():
        raise HandheldError(f"{pte} not found")
    samples = []
    for i in range(config.warmup + config.runs):
        warm = i < config.warmup
        result = run_child(pte, config, native_binary)
        # What the program adds to the process: the interpreter and runtime alone are several hundred MiB.
        result["program_rss_bytes"] = result["peak_rss_bytes"] - result["rss_before_load_bytes"]
        progress(f"{pte.name} {'warm-up' if warm else 'run'} {i + 1 - (0 if warm else config.warmup)}: "
                 f"decode {result['decode_tok_s']:.2f} tok/s, prefill {result['prefill_tok_s']:.1f} tok/s, "
                 f"TTFT {result['ttft_s']:.3f} s, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB")
        if not warm:
            samples.append(result)
    work = None
    if config.count_work:
        from handheld.runtime_bindings.measure import synthetic_prompt
        from handheld.runtime_bindings.native import count_work

        work = count_work(native_binary, config.target, pte, synthetic_prompt(config.prompt_len), config.gen_len)
        progress(f"{pte.name} work: {work['value']:,} {work['metric']}")
    metadata = samples[-1]["metadata"]
    for sample in samples:
        del sample["metadata"]
    return {
        "schema": SCHEMA,
        "name": pte.stem,
        "path": str(pte),
        "file_bytes": pte.stat().st_size,
        "model": metadata.get("handheld_model", "unknown"),
        "scheme": metadata.get("handheld_scheme", "unknown"),
        "backend": metadata.get("handheld_backend", "unknown"),
        "max_seq_len": metadata.get("get_max_seq_len"),
        "bytes_per_token": bytes_per_token(metadata),
        **asdict(config),
        "emulated": config.emulated,
        "samples": samples,
        "stats": {metric: summarize([sample[metric] for sample in samples]) for metric in METRICS},
        "work": work,
        "host": host_info(),
    }


def run_bench(ptes: list[Path], config: BenchConfig, progress: Callable[[str], None] = print,
              bandwidth_gbs: float | None = None) -> dict:
    """All programs under one config; the host's measured bandwidth rides along for the roofline."""
    native_binary = None
    if config.runner == "native":
        from handheld.runtime_bindings.native import build_runner

        native_binary = build_runner(config.target, log=progress)
    rows = [bench_program(pte, config, progress, native_binary) for pte in ptes]
    return {"schema": SCHEMA, "host": host_info(), "memory_bandwidth_gbs": bandwidth_gbs,
            "bandwidth_threads": config.threads, "rows": rows}


def load_results(paths: list[Path]) -> dict:
    """Several bench JSON files as one: their rows in order, the first file's host bandwidth."""
    merged: dict = {"schema": SCHEMA, "memory_bandwidth_gbs": None, "rows": []}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise HandheldError(f"cannot read bench results {path}: {e}") from None
        if data.get("schema") != SCHEMA:
            raise HandheldError(f"{path} is not a handheld bench result (schema {data.get('schema')!r}, want {SCHEMA!r})")
        merged["rows"].extend(data["rows"])
        if not merged["memory_bandwidth_gbs"]:
            merged["memory_bandwidth_gbs"] = data.get("memory_bandwidth_gbs")
            merged["bandwidth_threads"] = data.get("bandwidth_threads")
        merged.setdefault("host", data.get("host"))
    return merged
