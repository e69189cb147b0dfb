"""Where the native runner runs: one entry per target, and the command line that starts it there.

`host` runs natively; `qemu-aarch64` runs the cross-built binary under Debian's qemu user-mode emulation.
`android-arm64` is that aarch64 binary bundled with every shared library it loads and glibc's own loader
(the executorch wheel ships shared libraries only, so a fully static link is impossible); started through the
bundled loader it needs nothing from the system but a Linux kernel, so it runs in an Android shell. Here it
runs under qemu without a sysroot, which proves the bundle complete. `adb[:SERIAL]` runs the same bundle on a
device over adb (runtime_bindings/native/adb_device.py).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from handheld.core.errors import HandheldError

# CPU features that decide which kernels run (x86 SIMD/AMX, Arm dot-product/matmul/SVE).
RELEVANT_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
    "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2",
)


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
    bundled_from: str | None = None  # this target's binary, bundled with its libraries and glibc's loader
    device: str | None = None  # runs on a device reached through this tool, not on this machine


# Debian's aarch64 cross toolchain and the aarch64 executorch wheel, shared by every aarch64 target.
_AARCH64 = dict(compiler="aarch64-linux-gnu-g++", compiler_package="g++-aarch64-linux-gnu",
                toolchain_file="aarch64-linux-gnu.cmake", wheel_platform="manylinux_2_28_aarch64")
# An Armv9-class CPU (SVE2, i8mm, dot product, bf16) without SME: XNNPACK's SME kernels compute wrong
# logits under Debian's qemu 7.2 (tokens differ from x86's; with sme=off they match), and the Arm
# servers CI runs on (Neoverse N2) have no SME either.
_QEMU = dict(emulator="qemu-aarch64-static", emulator_package="qemu-user-static", emulator_args=("-cpu", "max,sme=off"))


TARGETS = {
    "host": Target("host", "c++", "g++"),
    "qemu-aarch64": Target("qemu-aarch64", **_AARCH64, **_QEMU),
    "android-arm64": Target("android-arm64", **_AARCH64, **_QEMU, bundled_from="qemu-aarch64"),
    "adb": Target("adb", **_AARCH64, bundled_from="qemu-aarch64", device="adb"),
}
# The bundle's layout: the runner at its root, its libraries and glibc's loader in lib/.
BUNDLE_LIBRARIES = "lib"
BUNDLE_LOADER = "ld-linux-aarch64.so.1"


def get_target(spec: str) -> Target:
    """The target a `--target` value names; a device target may carry `:SERIAL` (adb:SERIAL)."""
    name, _, serial = spec.partition(":")
    if name not in TARGETS:
        known = ", ".join(f"{t}[:SERIAL]" if TARGETS[t].device else t for t in TARGETS)
        raise HandheldError(f"unknown target {spec!r}; known targets: {known}")
    target = TARGETS[name]
    if ":" in spec and (target.device is None or not serial):
        raise HandheldError(f"target {spec!r}: only a device target takes :SERIAL, and it must not be empty "
                            f"(e.g. adb:emulator-5554)")
    return target


def device_serial(spec: str) -> str | None:
    """The SERIAL in `adb:SERIAL`, or None (the one device attached)."""
    return spec.partition(":")[2] or None


def bundle_command(bundle: str) -> list[str]:
    """Start a bundle's runner through its own loader, with its own libraries only (no ld.so.cache, no system
    folders searched first). `bundle` is the folder, on this machine or on a device."""
    libraries = f"{bundle}/{BUNDLE_LIBRARIES}"
    return [f"{libraries}/{BUNDLE_LOADER}", "--inhibit-cache", "--library-path", libraries, f"{bundle}/handheld_runner"]



def require_tool(executable: str, package: str) -> None:
    if shutil.which(executable) is None:
        raise HandheldError(f"{executable} not found: install Debian's {package} (apt-get install {package})")


def runner_command(binary: Path, target_name: str, emulator_options: tuple[str, ...] = ()) -> list[str]:
    """How to start the binary on this machine: directly, under the target's emulator with the cross sysroot,
    or (a bundle) through its own loader under the emulator, with no sysroot."""
    target = get_target(target_name)
    if target.device is not None:
        raise HandheldError(f"target {target.name} runs on a device, not on this machine")
    if target.bundled_from is not None:
        require_tool(target.emulator, target.emulator_package)
        return [target.emulator, *target.emulator_args, *emulator_options, *bundle_command(str(binary.parent))]
    if target.emulator is None:
        return [str(binary)]
    require_tool(target.emulator, target.emulator_package)
    if not AARCH64_SYSROOT.is_dir():
        raise HandheldError(f"{AARCH64_SYSROOT} is missing: install Debian's {target.compiler_package}")
    return [target.emulator, *target.emulator_args, *emulator_options, "-L", str(AARCH64_SYSROOT), str(binary)]



def toolchain(target_name: str) -> str:
    """What built and runs the native runner for a target (compiler, emulator, C library), as one string:
    a deterministic work count is only comparable between runs of the same toolchain."""
    import platform

    target = get_target(target_name)
    parts = [_first_line([target.compiler, "--version"])]
    if target.emulator is not None:
        parts.append(_first_line([target.emulator, "--version"]))
    if target.wheel_platform is not None:
        parts.append(f"glibc {_sysroot_glibc()}" + (" (bundled)" if target.bundled_from else ""))
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
