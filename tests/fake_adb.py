"""A stand-in for `adb` (tests/test_adb_device.py puts a shim named `adb` first on PATH that runs this).

It records every call, one JSON list per line, in $FAKE_ADB_STATE/calls.jsonl and answers like one phone: an
8-core SoC with three clusters, whose files live under $FAKE_ADB_STATE/device/ (push writes there, sha256sum
reads there). `adb devices` lists $FAKE_ADB_DEVICES ("SERIAL STATE" lines). A runner started through the
bundle's loader prints $FAKE_ADB_STATE/runner.json, the JSON a real host runner printed, and its exit status;
one started with --score runs the real host runner $FAKE_ADB_HOST_RUNNER on the device's files instead (so the
logits that come back with `adb pull` are a program's own).
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_ADB_STATE"])
GETPROP = """[ro.board.platform]: [pineapple]
[ro.build.version.release]: [14]
[ro.build.version.sdk]: [34]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.product.manufacturer]: [OnePlus]
[ro.product.model]: [CPH2581]
[ro.soc.manufacturer]: [QTI]
[ro.soc.model]: [SM8650]
[ro.serialno]: [not recorded]
"""
FREQS = {0: 2265600, 1: 2265600, 2: 3148800, 3: 3148800, 4: 3148800, 5: 2956800, 6: 2956800, 7: 3302400}
FACTS = ("kernel 6.1.25-android14-11\n"
         "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
         "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 "
         "sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 bti\n"
         + "".join(f"cpu {c} {f} walt\n" for c, f in FREQS.items()))
THERMAL = "aoss-0 35000\ncpu-0-0-0 41000\ncpu-1-2-0 47300\nbattery 30100\n"


def shell(script: str) -> int:
    if script == "getprop":
        print(GETPROP, end="")
    elif "uname -r" in script:
        print(FACTS, end="")
    elif "thermal_zone" in script:
        print(THERMAL, end="")
    elif script.startswith("sha256sum "):
        for path in shlex.split(script)[1:]:
            local = STATE / "device" / path.lstrip("/")
            if local.is_file():
                print(f"{hashlib.sha256(local.read_bytes()).hexdigest()}  {path}")
            else:
                print(f"sha256sum: {path}: No such file or directory", file=sys.stderr)
    elif script.startswith(("mkdir ", "chmod ")):
        pass
    elif "ld-linux-aarch64.so.1" in script and "--score" in script:
        return run_host_runner(script)
    elif "ld-linux-aarch64.so.1" in script and "handheld_runner" in script:
        print("I 00:00:00.001831 executorch:threadpool.cpp:66] Resetting threadpool to 4 threads.", file=sys.stderr)
        print((STATE / "runner.json").read_text().strip())
        print(f"handheld-exit {os.environ.get('FAKE_ADB_RUNNER_EXIT', '0')}")
    else:
        print(f"/system/bin/sh: unexpected command: {script}", file=sys.stderr)
        return 127
    return 0


def on_device(path: str) -> str:
    return str(STATE / "device" / path.lstrip("/")) if path.startswith("/data/") else path


def run_host_runner(script: str) -> int:
    """The runner's arguments (after the bundle's loader and libraries), device paths mapped onto this folder."""
    words = shlex.split(script.split(";")[0])
    arguments = [on_device(word) for word in words[next(i for i, w in enumerate(words) if w.endswith("handheld_runner")) + 1:]]
    done = subprocess.run([os.environ["FAKE_ADB_HOST_RUNNER"], *arguments], capture_output=True, text=True)
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    print(f"handheld-exit {done.returncode}")
    return 0


def main(args: list[str]) -> int:
    with open(STATE / "calls.jsonl", "a") as log:
        log.write(json.dumps(args) + "\n")
    if args[:1] == ["devices"]:
        print("List of devices attached")
        print(os.environ.get("FAKE_ADB_DEVICES", ""))
        return 0
    if args[:1] == ["-s"]:
        serial, args = args[1], args[2:]
        if serial not in os.environ.get("FAKE_ADB_DEVICES", ""):
            print(f"adb: device '{serial}' not found", file=sys.stderr)
            return 1
    if args[0] == "shell":
        return shell(" ".join(args[1:]))
    if args[0] == "push":
        target = STATE / "device" / args[2].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args[1], target)
        print(f"{args[1]}: 1 file pushed, 0 skipped.")
        return 0
    if args[0] == "pull":
        source = Path(on_device(args[1]))
        if not source.is_file():
            print(f"adb: error: failed to stat remote object '{args[1]}': No such file or directory", file=sys.stderr)
            return 1
        shutil.copyfile(source, args[2])
        print(f"{args[1]}: 1 file pulled, 0 skipped.")
        return 0
    print(f"fake adb: unknown command {args}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
