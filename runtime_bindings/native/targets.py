"""Where the native runner runs: one entry per target, and the command line that starts it there.

`host` runs natively; `qemu-aarch64` runs the cross-built binary under Debian's qemu user-mode emulation.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from handheld.core.errors import HandheldError

AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")


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



def require_tool(executable: str, package: str) -> None:
    if shutil.which(executable) is None:
        raise HandheldError(f"{executable} not found: install Debian's {package} (apt-get install {package})")


def runner_command(binary: Path, target_name: str) -> list[str]:
    """How to start the binary: directly, or under the target's emulator with the cross sysroot."""
    target = get_target(target_name)
    if target.emulator is None:
        return [str(binary)]
    require_tool(target.emulator, target.emulator_package)
    if not AARCH64_SYSROOT.is_dir():
        raise HandheldError(f"{AARCH64_SYSROOT} is missing: install Debian's {target.compiler_package}")
    return [target.emulator, *target.emulator_args, "-L", str(AARCH64_SYSROOT), str(binary)]



def toolchain(target_name: str) -> str:
    """What built and runs the native runner for a target (compiler, emulator, C library), as one string:
    a deterministic work count is only comparable between runs of the same toolchain."""
    import platform

    target = get_target(target_name)
    parts = [_first_line([target.compiler, "--version"])]
    if target.emulator is not None:
        parts.append(_first_line([target.emulator, "--version"]))
        parts.append(f"glibc {_sysroot_glibc()}")
    else:
        parts.append(f"glibc {platform.libc_ver()[1]}")
    return "; ".join(parts)


def _first_line(command: list[str]) -> str:
    import subprocess

    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return f"{command[0]} unavailable"
    return (done.stdout.strip().splitlines() or [f"{command[0]} unknown"])[0]


def _sysroot_glibc() -> str:
    libc = sorted(AARCH64_SYSROOT.glob("lib/libc.so.6"))
    if not libc:
        return "unknown"
    resolved = libc[0].resolve().name  # e.g. libc.so.6 (Debian ships no versioned name): fall back to the package
    return resolved if resolved != "libc.so.6" else _first_line(["dpkg-query", "-W", "-f=${Version}", "libc6-arm64-cross"])
