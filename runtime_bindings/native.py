"""The native runner (`native/handheld_runner.cpp`): build it against the executorch wheel, run it.

Targets are entries in `TARGETS`: `host` builds with the system C++ compiler against the installed
executorch wheel; `qemu-aarch64` cross-compiles with Debian's g++-aarch64-linux-gnu against the aarch64
executorch wheel of the same version (fetched with `pip download`, or given by HANDHELD_EXECUTORCH_AARCH64)
and runs under Debian's qemu user-mode emulation. Builds are cached per target, sources and executorch version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from handheld.errors import HandheldError

SOURCES = Path(__file__).resolve().parent / "native"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")
# Exit status the runner uses for a program that needs an operator it does not have.
_MISSING_OPERATOR_EXIT = 3


@dataclass(frozen=True)
class Target:
    name: str
    compiler: str  # C++ compiler executable
    compiler_package: str  # the Debian package that provides it
    emulator: str | None = None  # run through this (qemu user mode), or natively
    emulator_package: str | None = None
    emulator_args: tuple[str, ...] = ()
    toolchain_file: str | None = None
    wheel_platform: str | None = None  # another architecture's executorch wheel (None: the installed one)


TARGETS = {
    "host": Target("host", "c++", "g++"),
    "qemu-aarch64": Target(
        "qemu-aarch64", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", emulator="qemu-aarch64-static",
        emulator_package="qemu-user-static",
        # An Armv9-class CPU (SVE2, i8mm, dot product, bf16) without SME: XNNPACK's SME kernels compute wrong
        # logits under Debian's qemu 7.2 (tokens differ from x86's; with sme=off they match), and the Arm
        # servers CI runs on (Neoverse N2) have no SME either.
        emulator_args=("-cpu", "max,sme=off"),
        toolchain_file="aarch64-linux-gnu.cmake", wheel_platform="manylinux_2_28_aarch64",
    ),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise HandheldError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")
    return TARGETS[name]


def cache_root() -> Path:
    return Path(os.environ.get("HANDHELD_CACHE", Path.home() / ".cache" / "handheld"))


def _require_tool(executable: str, package: str) -> None:
    if shutil.which(executable) is None:
        raise HandheldError(f"{executable} not found: install Debian's {package} (apt-get install {package})")


def _cmake() -> str:
    """CMake >= 3.28 (the wheel's imported targets need it): PyPI's `cmake` package provides one."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise HandheldError("cmake not found: pip install 'cmake>=3.28' (handheld's test extra includes it)")
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout.split()[2]
    if tuple(int(p) for p in version.split(".")[:2]) < (3, 28):
        raise HandheldError(f"cmake {version} is too old (the executorch wheel needs 3.28+): pip install 'cmake>=3.28'")
    return cmake


def executorch_version() -> str:
    return metadata.version("executorch")


def installed_executorch_cmake_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise HandheldError("the executorch package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "share" / "cmake"


def aarch64_executorch_dir(target: Target) -> Path:
    """The aarch64 executorch wheel's runtime (lib, include, share), unpacked into the cache."""
    given = os.environ.get("HANDHELD_EXECUTORCH_AARCH64")
    if given:
        root = Path(given)
        if not (root / "share" / "cmake" / "executorch-config.cmake").is_file():
            raise HandheldError(f"HANDHELD_EXECUTORCH_AARCH64={given} is not an unpacked executorch package (no share/cmake)")
        return root
    version = executorch_version()
    root = cache_root() / f"executorch-{version}-{target.wheel_platform}"
    if (root / "executorch" / "share" / "cmake").is_dir():
        return root / "executorch"
    download = cache_root() / "wheels"
    python = f"{sys.version_info.major}{sys.version_info.minor}"
    command = [sys.executable, "-m", "pip", "download", f"executorch=={version}", "--no-deps", "--only-binary=:all:",
               "--platform", target.wheel_platform, "--python-version", python, "-d", str(download)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(download.glob(f"executorch-{version}-*{target.wheel_platform.split('_', 2)[-1]}*.whl"))
    if done.returncode != 0 or not wheels:
        raise HandheldError(
            f"cannot fetch the aarch64 executorch {version} wheel ({' '.join(command)} failed: "
            f"{done.stderr.strip().splitlines()[-1:] }); download it elsewhere, unzip it and set "
            "HANDHELD_EXECUTORCH_AARCH64 to its executorch/ folder"
        )
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(("executorch/lib/", "executorch/include/", "executorch/share/"))]
        wheel.extractall(partial, members)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root / "executorch"


def _source_digest() -> str:
    digest = hashlib.sha256(executorch_version().encode())
    for path in sorted(SOURCES.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build_runner(target_name: str = "host", log=print) -> Path:
    """The runner binary for a target, built once per source/executorch version and cached."""
    target = get_target(target_name)
    build = cache_root() / "native" / f"{target.name}-{_source_digest()}"
    binary = build / "handheld_runner"
    if binary.is_file():
        return binary
    _require_tool(target.compiler, target.compiler_package)
    cmake = _cmake()
    executorch_dir = installed_executorch_cmake_dir() if target.wheel_platform is None \
        else aarch64_executorch_dir(target) / "share" / "cmake"
    configure = [cmake, "-S", str(SOURCES), "-B", str(build), f"-Dexecutorch_DIR={executorch_dir}",
                 "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_COMPILER={target.compiler}"]
    if target.toolchain_file:
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={SOURCES / target.toolchain_file}")
    log(f"building the native runner for {target.name} in {build}")
    for command in (configure, [cmake, "--build", str(build), "-j", str(os.cpu_count() or 1)]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise HandheldError(f"building the native runner failed ({' '.join(command[:2])}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return binary


def runner_command(binary: Path, target_name: str) -> list[str]:
    """How to start the binary: directly, or under the target's emulator with the cross sysroot."""
    target = get_target(target_name)
    if target.emulator is None:
        return [str(binary)]
    _require_tool(target.emulator, target.emulator_package)
    if not AARCH64_SYSROOT.is_dir():
        raise HandheldError(f"{AARCH64_SYSROOT} is missing: install Debian's {target.compiler_package}")
    return [target.emulator, *target.emulator_args, "-L", str(AARCH64_SYSROOT), str(binary)]


def run_native(binary: Path, target_name: str, pte: Path, prompt: list[int], gen_len: int, threads: int,
               logits_path: Path | None = None, wrapper: list[str] = ()) -> dict:
    """One run of the native runner; its JSON result. `wrapper` prefixes the command (e.g. valgrind)."""
    command = [*wrapper, *runner_command(binary, target_name), str(pte), "--prompt", ",".join(map(str, prompt)),
               "--gen-len", str(gen_len), "--threads", str(threads)]
    if logits_path is not None:
        command += ["--logits", str(logits_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == _MISSING_OPERATOR_EXIT:
        missing = sorted(set(re.findall(r"Missing operator: \[\d+\] (\S+)", done.stderr)))
        raise HandheldError(f"{pte} needs operators the native runner does not have: {', '.join(missing) or 'see its log'}")
    if done.returncode != 0:
        error_lines = [line for line in done.stderr.splitlines() if "error" in line.lower()][-5:]
        raise HandheldError(f"the native runner failed on {pte} (exit {done.returncode}):\n" + "\n".join(error_lines))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def count_work(binary: Path, target_name: str, pte: Path, prompt: list[int], gen_len: int) -> dict:
    """A deterministic measure of one run's work, for a regression gate that noisy machines can trust.

    Natively: instructions executed, counted by valgrind (cachegrind without cache simulation; one thread;
    valgrind reports its own CPU model, so kernels are chosen for it, e.g. AVX2 rather than AVX-512).
    Under qemu: translation blocks executed (with block chaining off, qemu logs every one). Both repeat to
    within a few parts per million; this machine has no hardware counters (`perf stat` says not supported).
    """
    target = get_target(target_name)
    args = [str(pte), "--prompt", ",".join(map(str, prompt)), "--gen-len", str(gen_len), "--threads", "1"]
    if target.emulator is None:
        _require_tool("valgrind", "valgrind")
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", str(binary), *args]
        done = subprocess.run(command, capture_output=True, text=True)
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if done.returncode != 0 or not found:
            raise HandheldError(f"counting instructions with valgrind failed (exit {done.returncode}):\n{done.stderr[-1500:]}")
        return {"metric": "instructions (valgrind)", "value": int(found.group(1).replace(",", ""))}
    command = [*runner_command(binary, target_name)[:-1], "-d", "nochain,exec", "-D", "/dev/stderr", str(binary), *args]
    blocks = 0
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr:
            blocks += line.startswith("Trace ")
    if process.returncode != 0 or not blocks:
        raise HandheldError(f"counting executed blocks under {target.emulator} failed (exit {process.returncode})")
    return {"metric": "translated blocks executed (qemu)", "value": blocks}
