"""An Android device over adb, for `handheld bench --target adb[:SERIAL]` and `handheld eval --target adb`: push
the runner bundle and the program once (by sha256, computed on the device), run each measured run in a fresh
process pinned to the big cores, score windows there (the logits come back with adb pull), and describe the
device (model, SoC, Android version, ABI, CPU features, governor, temperatures).

Every adb command line and every parse of what the device prints is a pure function here, so the tests check
them against a fake `adb` (tests/test_adb_device.py). The adb path has not run against a phone yet.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from handheld.core.fetch.catalog import sha256_file
from handheld.core.errors import HandheldError
from handheld.runtime_bindings.native.run import runner_arguments, runner_result, score_arguments, scored_rows
from handheld.runtime_bindings.native.targets import (BUNDLE_LIBRARIES, BUNDLE_LOADER, RELEVANT_FLAGS, bundle_command,
                                                      device_serial)

REMOTE_DIR = "/data/local/tmp/handheld"  # writable and executable for adb's shell user on every Android
# getprop key -> field of the row's device facts.
PROPERTIES = {
    "ro.product.manufacturer": "manufacturer", "ro.product.model": "model", "ro.soc.manufacturer": "soc_manufacturer",
    "ro.soc.model": "soc", "ro.board.platform": "platform", "ro.build.version.release": "android",
    "ro.build.version.sdk": "sdk", "ro.product.cpu.abi": "abi",
}
# Kernel, CPU features, and each core's top frequency and governor, as labelled lines.
FACTS_SCRIPT = (
    'echo "kernel $(uname -r)"; grep -m1 "^Features" /proc/cpuinfo; '
    "for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    'echo "cpu ${c##*/cpu} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null || echo -)'
    ' $(cat $c/cpufreq/scaling_governor 2>/dev/null || echo -)"; done'
)
THERMAL_SCRIPT = ('for z in /sys/class/thermal/thermal_zone*; do '
                  'echo "$(cat $z/type 2>/dev/null) $(cat $z/temp 2>/dev/null)"; done')
_EXIT_MARK = "handheld-exit"  # the runner's exit status, echoed: older adb does not pass it on


def adb_command(serial: str | None, *args: str) -> list[str]:
    return ["adb", *(["-s", serial] if serial else []), *args]


def parse_devices(text: str) -> dict[str, str]:
    """`adb devices` output -> serial: state (device, unauthorized, offline, ...)."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            found[parts[0]] = parts[1]
    return found


def choose_serial(devices: dict[str, str], wanted: str | None) -> str:
    """The one device to use, or one line saying what is missing and how to provide it."""
    listed = ", ".join(f"{s} ({state})" for s, state in devices.items())
    if wanted is not None and wanted not in devices:
        raise HandheldError(f"device {wanted!r} is not attached: `adb devices` lists {listed or 'none'}; "
                            "use --target adb:SERIAL with a serial it lists")
    if wanted is None and not devices:
        raise HandheldError("no Android device: `adb devices` lists none; connect a phone with USB debugging on "
                            "(or `adb connect HOST:PORT`), then run again")
    if wanted is None and len(devices) > 1:
        raise HandheldError(f"`adb devices` lists several devices ({listed}): pick one with --target adb:SERIAL")
    serial = wanted or next(iter(devices))
    if devices[serial] != "device":
        raise HandheldError(f"device {serial!r} is {devices[serial]}: accept the USB debugging prompt on the phone "
                            "(unauthorized) or reconnect it, then run again")
    return serial


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output (`[key]: [value]` lines) -> the properties the row records."""
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("]: [")
        if sep and key.startswith("[") and value.endswith("]") and key[1:] in PROPERTIES:
            props[PROPERTIES[key[1:]]] = value[:-1]
    return props


def parse_facts(text: str) -> dict:
    """FACTS_SCRIPT's output -> kernel, CPU features, per-core top frequency (kHz) and governor."""
    facts: dict = {"kernel": None, "cpu_features": [], "cpu_max_freq_khz": {}, "governors": {}}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("kernel "):
            facts["kernel"] = line[len("kernel "):].strip()
        elif line.startswith("Features"):
            facts["cpu_features"] = line.partition(":")[2].split()
        elif len(words) == 4 and words[0] == "cpu" and words[1].isdigit():
            core = int(words[1])
            facts["cpu_max_freq_khz"][core] = int(words[2]) if words[2].isdigit() else None
            facts["governors"][core] = None if words[3] == "-" else words[3]
    return facts


def big_cores(max_freq_khz: dict[int, int | None]) -> list[int]:
    """Cores outside the slowest cluster (every core when the kernel shows no frequencies, or all are equal):
    a phone's prime and performance cores, which llama.cpp and ExecuTorch's guides also thread on."""
    known = {core: f for core, f in max_freq_khz.items() if f}
    if not known or len(set(known.values())) == 1:
        return sorted(max_freq_khz)
    slowest = min(known.values())
    return sorted(core for core, f in known.items() if f > slowest)


def affinity_mask(cores: list[int]) -> str:
    """taskset's hexadecimal CPU mask."""
    return format(sum(1 << core for core in cores), "x")


def parse_sha256(text: str) -> dict[str, str]:
    """`sha256sum FILE...` output -> path: digest (files it could not read are absent)."""
    sums = {}
    for line in text.splitlines():
        digest, _, path = line.strip().partition("  ")
        if len(digest) == 64 and path:
            sums[path] = digest
    return sums


def parse_thermal(text: str) -> tuple[str, float] | None:
    """THERMAL_SCRIPT's output -> the hottest CPU zone (every zone when none is named for the CPU) and its
    temperature in °C; None when no zone is readable. Kernels report millidegrees, a few whole degrees."""
    zones = {}
    for line in text.splitlines():
        name, _, raw = line.strip().rpartition(" ")
        if name and raw.lstrip("-").isdigit():
            value = int(raw)
            zones[name] = value / 1000 if abs(value) >= 1000 else float(value)
    cpu_zones = {name: t for name, t in zones.items() if "cpu" in name.lower()} or zones
    if not cpu_zones:
        return None
    name = max(cpu_zones, key=cpu_zones.get)
    return name, cpu_zones[name]


def run_script(remote_pte: str, prompt: list[int], gen_len: int, threads: int, cores: list[int] | None) -> str:
    """The shell line that starts one measured run on the device: the bundle's runner through its own loader,
    pinned to `cores` with taskset, its exit status echoed last."""
    return runner_script(runner_arguments(remote_pte, prompt, gen_len, threads), cores)


def runner_script(arguments: list[str], cores: list[int] | None) -> str:
    command = [*bundle_command(REMOTE_DIR), *arguments]
    pinned = ["taskset", affinity_mask(cores)] if cores else []
    return f"{shlex.join([*pinned, *command])}; echo {_EXIT_MARK} $?"


def split_exit(stdout: str) -> tuple[int | None, str]:
    """run_script's output -> the runner's exit status (None if the line never came) and its own output."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(_EXIT_MARK + " "):
            status = lines[i].split()[1]
            return (int(status) if status.lstrip("-").isdigit() else None), "\n".join(lines[:i])
    return None, stdout


def bundle_files(runner: Path) -> dict[str, Path]:
    """Remote path -> local file, for the runner bundle around `runner`."""
    files = {f"{REMOTE_DIR}/{runner.name}": runner}
    for library in sorted((runner.parent / BUNDLE_LIBRARIES).iterdir()):
        files[f"{REMOTE_DIR}/{BUNDLE_LIBRARIES}/{library.name}"] = library
    return files


@dataclass
class Device:
    """One attached device, its facts read once; every call goes through `adb -s SERIAL`."""
    serial: str
    facts: dict

    @classmethod
    def connect(cls, target: str) -> Device:
        """The device `adb[:SERIAL]` names, or one line saying what is missing: adb, a device, the serial."""
        if shutil.which("adb") is None:
            raise HandheldError("adb not found on PATH: install Android's platform-tools (or Debian's adb: "
                                "apt-get install adb) and put adb on PATH")
        listing = _adb(None, "devices")
        serial = choose_serial(parse_devices(listing.stdout), device_serial(target))
        device = cls(serial, {})
        device.facts = device.read_facts()
        return device

    @property
    def big_cores(self) -> list[int]:
        return self.facts["big_cores"]

    def shell(self, script: str) -> subprocess.CompletedProcess:
        return _adb(self.serial, "shell", script)

    def read_facts(self) -> dict:
        facts = {"serial": self.serial, **{field: None for field in PROPERTIES.values()},
                 **parse_getprop(self.shell("getprop").stdout), **parse_facts(self.shell(FACTS_SCRIPT).stdout)}
        facts["cpu_flags"] = [flag for flag in RELEVANT_FLAGS if flag in facts["cpu_features"]]
        facts["big_cores"] = big_cores(facts["cpu_max_freq_khz"])
        facts["governor"] = sorted({facts["governors"].get(c) or "unknown" for c in facts["big_cores"]}) or ["unknown"]
        facts["cpu_max_freq_khz"] = {str(c): f for c, f in facts["cpu_max_freq_khz"].items()}  # JSON keys
        del facts["governors"]
        return facts

    def sync(self, files: dict[str, Path], executables: tuple[str, ...] = ()) -> list[str]:
        """Push the files whose sha256 on the device differs (or that are absent); check them after. Returns
        the remote paths pushed."""
        remote_sums = parse_sha256(self.shell(shlex.join(["sha256sum", *files])).stdout)
        local_sums = {remote: sha256_file(local) for remote, local in files.items()}
        stale = [remote for remote in files if remote_sums.get(remote) != local_sums[remote]]
        if not stale:
            return []
        self.shell(shlex.join(["mkdir", "-p", *sorted({remote.rsplit("/", 1)[0] for remote in stale})]))
        for remote in stale:
            pushed = _adb(self.serial, "push", str(files[remote]), remote)
            if pushed.returncode != 0:
                raise HandheldError(f"adb push {files[remote]} to {self.serial} failed: {_last_line(pushed)}")
        if executables:
            self.shell(shlex.join(["chmod", "755", *executables]))
        after = parse_sha256(self.shell(shlex.join(["sha256sum", *stale])).stdout)
        wrong = [remote for remote in stale if after.get(remote) != local_sums[remote]]
        if not after:
            raise HandheldError(f"cannot checksum files on {self.serial}: its shell has no sha256sum (Android 8 "
                                "or later has it)")
        if wrong:
            raise HandheldError(f"{wrong[0]} on {self.serial} does not match what was pushed (sha256 differs): "
                                "check the device's free space in /data/local/tmp")
        return stale

    def install_runner(self, runner: Path) -> list[str]:
        executables = (f"{REMOTE_DIR}/{runner.name}", f"{REMOTE_DIR}/{BUNDLE_LIBRARIES}/{BUNDLE_LOADER}")
        return self.sync(bundle_files(runner), executables)

    def install_program(self, pte: Path) -> list[str]:
        return self.sync({remote_program(pte): pte})

    def temperature(self) -> tuple[str, float] | None:
        return parse_thermal(self.shell(THERMAL_SCRIPT).stdout)

    def run(self, pte: Path, prompt: list[int], gen_len: int, threads: int) -> dict:
        """One measured run in a fresh process on the device, with the CPU temperature before and after."""
        before = self.temperature()
        result = self._runner(pte, run_script(remote_program(pte), prompt, gen_len, threads, self.big_cores))
        after = self.temperature()
        result["thermal_zone"] = (before or after or (None,))[0]
        result["temp_before_c"] = before[1] if before else None
        result["temp_after_c"] = after[1] if after else None
        return result


    def score(self, pte: Path, window: list[int], threads: int = 0):
        """Logits [positions, vocab] of `window` from one prefill by the runner on the device (its --score mode),
        pulled back: the program's own numbers on the phone, for `handheld eval --target adb`."""
        import tempfile

        remote_out = f"{REMOTE_DIR}/score.f32"
        result = self._runner(pte, runner_script(score_arguments(remote_program(pte), window, remote_out, threads),
                                                 self.big_cores))
        with tempfile.TemporaryDirectory(prefix="handheld-adb-score-") as folder:
            local = Path(folder) / "score.f32"
            pulled = _adb(self.serial, "pull", remote_out, str(local))
            if pulled.returncode != 0:
                raise HandheldError(f"adb pull {remote_out} from {self.serial} failed: {_last_line(pulled)}")
            return scored_rows(pte, result, local)

    def _runner(self, pte: Path, script: str) -> dict:
        """The runner started by `script` on the device: its JSON result, or one line saying why there is none."""
        done = self.shell(script)
        status, output = split_exit(done.stdout)
        if status is None:
            raise HandheldError(f"the runner on {self.serial} did not finish (adb exit {done.returncode}): "
                                f"{_last_line(done)}")
        chatter = "\n".join(line for line in output.splitlines() if not line.startswith("{"))
        return runner_result(pte, status, output, done.stderr + chatter)


def remote_program(pte: Path) -> str:
    return f"{REMOTE_DIR}/{pte.name}"


def _adb(serial: str | None, *args: str) -> subprocess.CompletedProcess:
    command = adb_command(serial, *args)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        raise HandheldError(f"{' '.join(command[:4])} took over an hour: is the device still attached?") from None


def _last_line(done: subprocess.CompletedProcess) -> str:
    return ((done.stderr.strip() or done.stdout.strip()).splitlines() or ["no output"])[-1][:200]
