"""`handheld build-runner`: build handheld's native C++ runner (cached) and print its path."""

from __future__ import annotations

import argparse
import sys

HELP = "build handheld's native C++ runner (cached) and print its path"
DESCRIPTION = ("Builds runtime_bindings/native/handheld_runner.cpp with CMake against the ExecuTorch runtime in the "
               "installed executorch wheel (host), or cross-compiles it against the aarch64 wheel (qemu-aarch64). The "
               "binary loads a .pte, prefills --prompt token ids, decodes greedily and prints JSON statistics.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="host", help="host or qemu-aarch64")


def run(args: argparse.Namespace) -> None:
    from handheld.runtime_bindings.native.build import build_runner
    from handheld.runtime_bindings.native.targets import runner_command

    binary = build_runner(args.target)
    print(binary)
    print("run it: " + " ".join(runner_command(binary, args.target)) + " MODEL.pte --prompt 128000,791,6864 --gen-len 32",
          file=sys.stderr)
