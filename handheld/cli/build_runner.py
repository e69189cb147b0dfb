"""`handheld build-runner`: build handheld's native C++ runner (cached) and print its path."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "build handheld's native C++ runner (cached) and print its path"
DESCRIPTION = ("Builds runtime_bindings/native/handheld_runner.cpp with CMake against the ExecuTorch runtime in the "
               "installed executorch wheel (host), or cross-compiles it against the aarch64 wheel (qemu-aarch64); "
               "android-arm64 bundles that binary with its libraries and glibc's loader in one folder that runs in an "
               "Android shell (push the folder; start lib/ld-linux-aarch64.so.1 as printed). The binary loads a .pte, prefills --prompt token ids, decodes greedily and prints JSON statistics.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="host", help="host, qemu-aarch64, android-arm64 (or adb: the same bundle)")


def run(args: argparse.Namespace) -> None:
    from handheld.runtime_bindings.native.build import build_runner
    from handheld.runtime_bindings.native.adb_device import REMOTE_DIR
    from handheld.runtime_bindings.native.targets import bundle_command, get_target, runner_command

    target = get_target(args.target)
    binary = build_runner(args.target)
    print(binary)
    if target.device is None:
        print("run it: " + shlex.join(runner_command(binary, args.target)) + " MODEL.pte --prompt 128000,791,6864 "
              "--gen-len 32", file=sys.stderr)
    if target.bundled_from is not None:
        print(f"on a phone: adb shell mkdir -p {REMOTE_DIR} && adb push {binary} {binary.parent / 'lib'} {REMOTE_DIR}/, "
              "then in `adb shell`: "
              f"{shlex.join(bundle_command(REMOTE_DIR))} MODEL.pte --prompt ... (or `handheld bench --target adb`)",
              file=sys.stderr)
