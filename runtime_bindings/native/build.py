"""Build the native runner (`handheld_runner.cpp` beside this file) against the executorch wheel, cached.

`host` builds with the system C++ compiler against the installed executorch wheel; `qemu-aarch64`
cross-compiles with Debian's g++-aarch64-linux-gnu against the aarch64 executorch wheel of the same
version (fetched with `pip download`, or given by HANDHELD_EXECUTORCH_AARCH64). Builds are cached per
target, sources and executorch version. `android-arm64` and `adb` bundle the aarch64 binary with the wheel's
libraries and the cross sysroot's glibc (loader included) into one folder that needs nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from handheld.core.atomic import atomic_dir, atomic_path
from handheld.core.fetch.cache import cache_root
from handheld.core.errors import HandheldError
from handheld.runtime_bindings.native.targets import (
    AARCH64_SYSROOT, BUNDLE_LIBRARIES, BUNDLE_LOADER, Target, get_target, require_tool,
)

SOURCES = Path(__file__).resolve().parent
SOURCE_FILES = ("handheld_runner.cpp", "llm_kernels.cpp", "CMakeLists.txt", "aarch64-linux-gnu.cmake")
# Downloaded wheels are checked against these before anything in them is used.
PINNED_WHEELS = {
    "executorch-1.5.1-cp311-cp311-manylinux_2_28_aarch64.whl":
        "8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a",
}
# What a bundle carries beside the runner: the wheel's libraries it links, and glibc with its loader.
BUNDLED_EXECUTORCH = ("libexecutorch.so", "libexecutorch_threadpool.so", "libexecutorch_kernels_optimized.so",
                      "libexecutorch_kernels_quantized.so", "libexecutorch_backend_xnnpack.so")
BUNDLED_SYSTEM = (BUNDLE_LOADER, "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "libstdc++.so.6",
                  "libgcc_s.so.1")


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
    _check_pinned(wheels[-1])
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [m for m in wheel.namelist() if m.startswith(("executorch/lib/", "executorch/include/", "executorch/share/"))]
        wheel.extractall(partial, members)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root / "executorch"


def _check_pinned(wheel: Path) -> None:
    expected = PINNED_WHEELS.get(wheel.name)
    if expected is None:
        raise HandheldError(f"no pinned sha256 for {wheel.name}: add it to PINNED_WHEELS after checking it, or unzip "
                            "a wheel you trust and set HANDHELD_EXECUTORCH_AARCH64 to its executorch/ folder")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != expected:
        wheel.unlink()
        raise HandheldError(f"{wheel.name} has sha256 {digest}, expected {expected}: deleted, not used")


def _source_digest() -> str:
    digest = hashlib.sha256(executorch_version().encode())
    for name in SOURCE_FILES:
        digest.update(name.encode() + (SOURCES / name).read_bytes())
    return digest.hexdigest()[:16]


def build_runner(target_name: str = "host", log=print) -> Path:
    """The runner binary for a target, built once per source/executorch version and cached. The build runs in
    a private folder; only a finished binary is moved into the cache (concurrent or killed builds are safe)."""
    target = get_target(target_name)
    if target.bundled_from is not None:
        return bundle_runner(build_runner(target.bundled_from, log), target)
    binary = cache_root() / "native" / f"{target.name}-{_source_digest()}" / "handheld_runner"
    if binary.is_file():
        return binary
    binary.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=binary.parent.parent) as build:
        built = _build(target, Path(build), log)
        with atomic_path(binary) as tmp:
            shutil.copy2(built, tmp)
    return binary


def _build(target: Target, build: Path, log) -> Path:
    require_tool(target.compiler, target.compiler_package)
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
    return build / "handheld_runner"


def bundle_runner(binary: Path, target: Target) -> Path:
    """The runner in a folder with every shared library it loads (cached beside the binary it bundles). The
    folder is checked complete: every library any of its files needs is in it."""
    bundle = binary.parent.with_name(binary.parent.name + "-bundle")
    if (bundle / binary.name).is_file():
        return bundle / binary.name
    sources = [aarch64_executorch_dir(target) / "lib" / name for name in BUNDLED_EXECUTORCH]
    sources += [AARCH64_SYSROOT / "lib" / name for name in BUNDLED_SYSTEM]
    with atomic_dir(bundle) as tmp:
        (tmp / BUNDLE_LIBRARIES).mkdir()
        for source in sources:
            if not source.is_file():
                raise HandheldError(f"cannot bundle the runner: {source} is missing "
                                    f"(install Debian's {target.compiler_package})")
            shutil.copy2(source, tmp / BUNDLE_LIBRARIES / source.name)  # follows symlinks (libstdc++.so.6)
        shutil.copy2(binary, tmp / binary.name)
        missing = missing_libraries(tmp)
        if missing:
            raise HandheldError(f"cannot bundle the runner: nothing in the bundle provides {', '.join(missing)}")
    return bundle / binary.name


def needed_libraries(elf: Path) -> list[str]:
    """The shared libraries an aarch64 ELF file names as NEEDED (read with the cross binutils' readelf)."""
    require_tool("aarch64-linux-gnu-readelf", "binutils-aarch64-linux-gnu")
    done = subprocess.run(["aarch64-linux-gnu-readelf", "-dW", str(elf)], capture_output=True, text=True)
    if done.returncode != 0:
        raise HandheldError(f"cannot read {elf}'s dynamic section: {done.stderr.strip()[:200]}")
    return [line.split("[", 1)[1].split("]", 1)[0] for line in done.stdout.splitlines() if "(NEEDED)" in line]


def missing_libraries(bundle: Path) -> list[str]:
    """Libraries some file in the bundle needs that the bundle lacks (empty: it is complete)."""
    present = {p.name for p in (bundle / BUNDLE_LIBRARIES).iterdir()}
    files = [bundle / "handheld_runner", *sorted((bundle / BUNDLE_LIBRARIES).iterdir())]
    return sorted({name for f in files if f.name != BUNDLE_LOADER for name in needed_libraries(f)} - present)
