"""Run the built native runner: one measured run, or one run counting its deterministic work."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from handheld.core.errors import HandheldError
from handheld.runtime_bindings.native.targets import get_target, require_tool, runner_command

# Exit status the runner uses for a program that needs an operator it does not have.
_MISSING_OPERATOR_EXIT = 3


def run_native(binary: Path, target_name: str, pte: Path, prompt: list[int], gen_len: int, threads: int,
               logits_path: Path | None = None, wrapper: list[str] = ()) -> dict:
    """One run of the native runner; its JSON result. `wrapper` prefixes the command (e.g. valgrind)."""
    command = [*wrapper, *runner_command(binary, target_name), *runner_arguments(str(pte), prompt, gen_len, threads)]
    if logits_path is not None:
        command += ["--logits", str(logits_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    return runner_result(pte, done.returncode, done.stdout, done.stderr)


def score_native(binary: Path, target_name: str, pte: Path, window: list[int], threads: int = 0):
    """Logits [positions, vocab] (float32) of `window` run once from position 0 by the runner on its target: the
    program's own numbers there, for perplexity on the target. The rows travel through a temporary file."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="handheld-score-") as folder:
        out = Path(folder) / "logits.f32"
        command = [*runner_command(binary, target_name), *score_arguments(str(pte), window, str(out), threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        return scored_rows(pte, runner_result(pte, done.returncode, done.stdout, done.stderr), out)


def score_arguments(pte: str, window: list[int], out: str, threads: int = 0) -> list[str]:
    return [pte, "--prompt", ",".join(map(str, window)), "--score", out, *(["--threads", str(threads)] if threads else [])]


def scored_rows(pte, result: dict, out: Path):
    """The runner's --score file as [positions, vocab], checked against the row count its result names."""
    import numpy as np

    rows = np.fromfile(out, dtype=np.float32) if out.is_file() else np.zeros(0, dtype=np.float32)
    if result.get("scored_rows", 0) < 1 or rows.size % result["scored_rows"]:
        raise HandheldError(f"the native runner returned {rows.size} logits for {result.get('scored_rows')} positions of {pte}")
    return rows.reshape(result["scored_rows"], -1)


def runner_arguments(pte: str, prompt: list[int], gen_len: int, threads: int) -> list[str]:
    return [pte, "--prompt", ",".join(map(str, prompt)), "--gen-len", str(gen_len), "--threads", str(threads)]


def runner_result(pte, returncode: int, stdout: str, stderr: str) -> dict:
    """The runner's JSON result from its exit status and output, wherever it ran; its failures as one error."""
    if returncode == _MISSING_OPERATOR_EXIT:
        missing = sorted(set(re.findall(r"Missing operator: \[\d+\] (\S+)", stderr)))
        raise HandheldError(f"{pte} needs operators the native runner does not have: {', '.join(missing) or 'see its log'}")
    if returncode != 0:
        # The runner's own error lines; else (a shell on a device: "taskset: not found") the last line.
        error_lines = [line for line in stderr.splitlines() if "error" in line.lower()][-5:] or stderr.splitlines()[-1:]
        raise HandheldError(f"the native runner failed on {pte} (exit {returncode}):\n" + "\n".join(error_lines))
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise HandheldError(f"the native runner printed no result for {pte}: {stdout.strip()[-200:]!r}") from None
    result["stderr"] = stderr
    return result


def count_work(binary: Path, target_name: str, pte: Path, prompt: list[int], gen_len: int) -> dict:
    """A deterministic measure of one run's work, for a regression gate that noisy machines can trust.

    Natively: instructions executed, counted by valgrind (cachegrind without cache simulation; one thread;
    valgrind reports its own CPU model, so kernels are chosen for it, e.g. AVX2 rather than AVX-512).
    Under qemu: translation blocks executed (with block chaining off, qemu logs every one). Both repeat to
    within a few parts per million; this machine has no hardware counters (`perf stat` says not supported).
    """
    target = get_target(target_name)
    args = runner_arguments(str(pte), prompt, gen_len, 1)
    if target.emulator is None:
        require_tool("valgrind", "valgrind")
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", str(binary), *args]
        done = subprocess.run(command, capture_output=True, text=True)
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if done.returncode != 0 or not found:
            raise HandheldError(f"counting instructions with valgrind failed (exit {done.returncode}):\n{done.stderr[-1500:]}")
        return {"metric": "instructions (valgrind)", "value": int(found.group(1).replace(",", ""))}
    command = [*runner_command(binary, target_name, ("-d", "nochain,exec", "-D", "/dev/stderr")), *args]
    blocks = 0
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr:
            blocks += line.startswith("Trace ")
    if process.returncode != 0 or not blocks:
        raise HandheldError(f"counting executed blocks under {target.emulator} failed (exit {process.returncode})")
    return {"metric": "translated blocks executed (qemu)", "value": blocks}
