"""`handheld bench`: measure `.pte` programs, each run in a fresh child process, into self-describing rows.

A row says what ran (model shape, scheme, backend — from the program's metadata, not its file name),
how (prompt/generated lengths, threads, runner, target) and where (CPU, flags, cores, OS, versions; on an
Android device over adb also the device's model, SoC, Android version, governor and temperatures), with every
run's figures and their median, min, max and coefficient of variation.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from handheld.core.errors import HandheldError
from handheld.core.pte_metadata import ProgramMetadata
from handheld.measure.host import host_info, usable_cores
from handheld.runtime_bindings.native.targets import get_target, toolchain

if TYPE_CHECKING:
    from handheld.runtime_bindings.native.adb_device import Device

SCHEMA = "handheld-bench/1"
# The figures each run reports; "higher is better" for rates, lower for the rest.
METRICS = ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes", "program_rss_bytes")
RUNNERS = ("python", "native")  # ExecuTorch's Python runtime, or handheld's C++ runner
_MEASURE_MODULE = "handheld.measure.run_once"


@dataclass(frozen=True)
class BenchConfig:
    prompt_len: int = 64
    gen_len: int = 128
    runs: int = 5
    warmup: int = 1
    threads: int = field(default_factory=usable_cores)
    runner: str = "python"
    target: str = "host"
    count_work: bool = False  # also one counted run: a deterministic figure for the regression gate
    cool_down_s: float = 0.0  # idle time before each run after the first (a phone sheds heat)

    def __post_init__(self):
        for name in ("prompt_len", "gen_len", "runs", "threads"):
            if getattr(self, name) < 1:
                raise HandheldError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise HandheldError(f"--warmup must be 0 or more, got {self.warmup}")
        if not _number(self.cool_down_s) or self.cool_down_s < 0:
            raise HandheldError(f"--cool-down must be 0 or more seconds, got {self.cool_down_s}")
        if self.runner not in RUNNERS:
            raise HandheldError(f"unknown runner {self.runner!r}; known runners: {', '.join(RUNNERS)}")
        if default_runner(self.target) == "native" and self.runner != "native":
            raise HandheldError(f"target {self.target} runs the native runner only: add --runner native")
        if self.count_work and self.runner != "native":
            raise HandheldError("--count-work counts the native runner's work: add --runner native")
        if self.count_work and self.on_device:
            raise HandheldError("--count-work counts work on this machine (valgrind or qemu), not on a device")

    @property
    def on_device(self) -> bool:
        return get_target(self.target).device is not None

    @property
    def emulated(self) -> bool:
        return get_target(self.target).emulator is not None


def default_runner(target: str) -> str:
    """ExecuTorch's Python runtime on this machine; handheld's native runner under an emulator or on a device."""
    found = get_target(target)
    return "native" if found.emulator is not None or found.device is not None else "python"


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, max and coefficient of variation (population stdev over mean) of one metric's runs."""
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    cv = statistics.pstdev(values) / mean if mean else 0.0
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "cv": cv}


def run_child(pte: Path, config: BenchConfig, native_binary: Path | None = None, device: Device | None = None) -> dict:
    """One run in a fresh process: the Python runtime's measuring module, or the native runner (here or on a
    device)."""
    if config.runner == "native":
        from handheld.decoding.generation import synthetic_prompt
        from handheld.runtime_bindings.native.run import run_native

        prompt = synthetic_prompt(config.prompt_len)
        if device is not None:
            result = device.run(pte, prompt, config.gen_len, config.threads)
        else:
            result = run_native(native_binary, config.target, pte, prompt, config.gen_len, config.threads)
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


def _check_figures(pte: Path, result: dict) -> None:
    """Every measured figure a finite number (a runner writes null for NaN or infinity)."""
    for metric in ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes", "rss_before_load_bytes"):
        value = result.get(metric)
        if not _number(value):
            raise HandheldError(f"measuring {pte} gave no usable {metric} ({value!r})")


def bench_program(pte: Path, config: BenchConfig, progress: Callable[[str], None] = lambda _: None,
                  native_binary: Path | None = None, device: Device | None = None) -> dict:
    if not pte.is_file():
        raise HandheldError(f"{pte} not found")
    if device is not None and device.install_program(pte):
        progress(f"pushed {pte.name} to {device.serial}")
    samples = []
    for i in range(config.warmup + config.runs):
        warm = i < config.warmup
        if i and config.cool_down_s:
            time.sleep(config.cool_down_s)
        result = run_child(pte, config, native_binary, device)
        _check_figures(pte, result)
        # What the program adds to the process: the interpreter and runtime alone are several hundred MiB.
        result["program_rss_bytes"] = result["peak_rss_bytes"] - result["rss_before_load_bytes"]
        progress(f"{pte.name} {'warm-up' if warm else 'run'} {i + 1 - (0 if warm else config.warmup)}: "
                 f"decode {result['decode_tok_s']:.2f} tok/s, prefill {result['prefill_tok_s']:.1f} tok/s, "
                 f"TTFT {result['ttft_s']:.3f} s, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB")
        if not warm:
            samples.append(result)
    work = None
    if config.count_work:
        from handheld.decoding.generation import synthetic_prompt
        from handheld.runtime_bindings.native.run import count_work

        work = count_work(native_binary, config.target, pte, synthetic_prompt(config.prompt_len), config.gen_len)
        progress(f"{pte.name} work: {work['value']:,} {work['metric']}")
    metadata = ProgramMetadata.from_constant_methods(samples[-1]["metadata"], str(pte))
    for sample in samples:
        del sample["metadata"]
    return {
        "schema": SCHEMA,
        "name": pte.stem,
        "path": str(pte),
        "file_bytes": pte.stat().st_size,
        "model": metadata.model,
        "scheme": metadata.scheme,
        "backend": metadata.backend,
        "max_seq_len": metadata.max_seq_len,
        "kv_cache": metadata.kv_cache,
        "bytes_per_token": metadata.bytes_per_token(),
        "provenance": metadata.provenance,  # the commit and code that exported the program
        **asdict(config),
        "toolchain": toolchain(config.target) if config.runner == "native" else None,
        "emulated": config.emulated,
        "samples": samples,
        "stats": {metric: summarize([sample[metric] for sample in samples]) for metric in METRICS},
        "work": work,
        "host": host_info(),  # on a device: the machine that drove it
        **({"device": device.facts} if device is not None else {}),
    }


def run_bench(ptes: list[Path], config: BenchConfig, progress: Callable[[str], None] = print,
              bandwidth_gbs: float | None = None, device: Device | None = None) -> dict:
    """All programs under one config; the host's measured bandwidth rides along for the roofline. A device
    target connects first (so a missing device fails before the build), then gets the runner pushed once."""
    if config.on_device and device is None:
        device = connect_device(config.target)
    native_binary = None
    if config.runner == "native":
        from handheld.runtime_bindings.native.build import build_runner

        native_binary = build_runner(config.target, log=progress)
    if device is not None and device.install_runner(native_binary):
        progress(f"pushed the runner bundle to {device.serial}")
    rows = [bench_program(pte, config, progress, native_binary, device) for pte in ptes]
    return {"schema": SCHEMA, "host": host_info(), "memory_bandwidth_gbs": bandwidth_gbs,
            "bandwidth_threads": config.threads, "rows": rows}


def bench_programs(ptes: list[Path], *, threads: int | None = None, runner: str | None = None, bandwidth: bool = True,
                   progress: Callable[[str], None] = print, **fields) -> dict:
    """`handheld bench`: the device (a device target) connected before any work, threads defaulting to its big
    cores (or this machine's usable ones), the runner to the target's default, the host's memory bandwidth measured
    for the roofline (not for a device's rows); then `run_bench`. `fields`: the rest of `BenchConfig`."""
    from handheld.measure.host import measure_bandwidth_gbs

    target = fields.get("target", BenchConfig.target)
    device = connect_device(target)  # a missing adb or device fails here, before any work
    if threads is None and device is not None:
        threads = len(device.big_cores)
    config = BenchConfig(runner=runner or default_runner(target), **fields, **({} if threads is None else {"threads": threads}))
    measured = None if not bandwidth or device is not None else measure_bandwidth_gbs(config.threads)
    if measured:
        progress(f"memory bandwidth (triad, {config.threads} threads): {measured:.1f} GB/s")
    return run_bench(ptes, config, progress, bandwidth_gbs=measured, device=device)


def connect_device(target: str) -> Device | None:
    """The device a device target names (checked attached, its facts read), or None for this machine's targets."""
    if get_target(target).device is None:
        return None
    from handheld.runtime_bindings.native.adb_device import Device

    return Device.connect(target)


def load_results(paths: list[Path]) -> dict:
    """Several bench JSON files as one: their rows in order, the first file's host bandwidth. Every field
    the gate and the report read is checked first: a damaged file is one error naming it."""
    merged: dict = {"schema": SCHEMA, "memory_bandwidth_gbs": None, "rows": []}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HandheldError(f"cannot read bench results {path}: {e}") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise HandheldError(f"{path} is not a handheld bench result (schema {schema!r}, want {SCHEMA!r})")
        problem = _results_problem(data)
        if problem:
            raise HandheldError(f"{path} is a damaged bench result: {problem}")
        merged["rows"].extend(data["rows"])
        if not merged["memory_bandwidth_gbs"]:
            merged["memory_bandwidth_gbs"] = data.get("memory_bandwidth_gbs")
            merged["bandwidth_threads"] = data.get("bandwidth_threads")
        merged.setdefault("host", data.get("host"))
    return merged


def _number(value, positive: bool = False) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    return ok and (value > 0 if positive else True)


def _results_problem(data: dict) -> str | None:
    rows, bandwidth = data.get("rows"), data.get("memory_bandwidth_gbs")
    if not isinstance(rows, list) or not rows:
        return "no rows"
    if bandwidth is not None and not _number(bandwidth, positive=True):
        return f"memory_bandwidth_gbs is {bandwidth!r}"
    for i, row in enumerate(rows):
        problem = _row_problem(row)
        if problem:
            return f"row {i}: {problem}"
    return None


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "not an object"
    for key in ("name", "scheme", "backend", "runner", "target"):
        if not isinstance(row.get(key), str):
            return f"{key} is {row.get(key)!r}"
    for key in ("file_bytes", "prompt_len", "gen_len", "threads", "runs"):
        if not _number(row.get(key)) or row[key] < 0:
            return f"{key} is {row.get(key)!r}"
    if row.get("bytes_per_token") is not None and not _number(row["bytes_per_token"], positive=True):
        return f"bytes_per_token is {row['bytes_per_token']!r}"
    stats = row.get("stats")
    if not isinstance(stats, dict):
        return "no stats"
    for metric in METRICS:
        summary = stats.get(metric)
        if not isinstance(summary, dict) or not all(_number(summary.get(k)) for k in ("median", "min", "max", "cv")):
            return f"stats.{metric} is {summary!r}"
    device = row.get("device")
    if device is not None and not (isinstance(device, dict) and isinstance(device.get("serial"), str)):
        return f"device is {device!r}"
    work = row.get("work")
    if work is not None and not (isinstance(work, dict) and isinstance(work.get("metric"), str)
                                 and _number(work.get("value"))):
        return f"work is {work!r}"
    return None
