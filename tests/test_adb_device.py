"""`handheld bench --target adb[:SERIAL]` against a fake adb (tests/fake_adb.py), end to end: what is pushed and
when, the command lines the device runs, the rows written and `handheld report` on them, and the one-line
errors when adb, a device or the serial is missing. No phone has run this path: only the runner bundle itself
is run for real, under qemu (tests/test_native.py).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytest

from handheld.cli import main
from handheld.core.errors import HandheldError
from handheld.runtime_bindings.native import adb_device as adb
from handheld.measure.bench import load_results
from handheld.decoding.generation import synthetic_prompt
from handheld.runtime_bindings.native import build

FAKE_ADB = Path(__file__).with_name("fake_adb.py")
SERIAL = "R5CW1234"
REMOTE = adb.REMOTE_DIR
# What the host runner printed for the proxy model's 8da4w .pte (`handheld_runner 8da4w.pte --prompt
# <synthetic_prompt(8)> --gen-len 8 --threads 1`): the fake device's runner prints it unchanged.
RUNNER_JSON = r'''{"load_s":0.008255432,"ttft_s":0.002063101,"prefill_tok_s":3877.65795,"decode_tok_s":7131.35238,"peak_rss_bytes":17846272,"rss_before_load_bytes":5214208,"generated_tokens":8,"tokens":[224,224,224,224,224,224,224,224],"metadata":{"handheld_weight_bytes":"{\"4-bit linears\": 786432, \"8-bit classifier\": 835584, \"8-bit embedding\": 835584, \"embedding\": 0, \"other\": 6912, \"scales\": 133120}","handheld_group_size":32,"handheld_full_logits":true,"handheld_backend":"xnnpack","handheld_params":"{\"dim\": 192, \"ffn_dim_multiplier\": 1.0, \"multiple_of\": 256, \"n_heads\": 6, \"n_kv_heads\": 2, \"n_layers\": 4, \"norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"use_scaled_rope\": true, \"vocab_size\": 4352}","handheld_model":"llama(dim=192, n_layers=4, n_heads=6, vocab_size=4352)","use_kv_cache":true,"use_sdpa_with_kv_cache":false,"get_eos_ids":[4097,4104,4105],"handheld_version":"0.1.0","handheld_scheme":"8da4w","get_bos_id":4096,"get_n_layers":4,"get_vocab_size":4352,"enable_dynamic_shape":true,"get_max_seq_len":256,"get_max_context_len":256}}'''
BENCH = ["--prompt-len", "8", "--gen-len", "8"]


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """A fake `adb` first on PATH, one device attached; returns its state folder."""
    bin_dir, state = tmp_path / "bin", tmp_path / "adb-state"
    bin_dir.mkdir()
    state.mkdir()
    shim = bin_dir / "adb"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ADB}" "$@"\n')
    shim.chmod(0o755)
    (state / "runner.json").write_text(RUNNER_JSON)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_STATE", str(state))
    monkeypatch.setenv("FAKE_ADB_DEVICES", f"{SERIAL}\tdevice")
    return state


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """A stand-in runner bundle: building the real one takes minutes, and only its files travel here."""
    root = tmp_path / "bundle"
    (root / "lib").mkdir(parents=True)
    for name in ("ld-linux-aarch64.so.1", "libc.so.6", "libexecutorch.so"):
        (root / "lib" / name).write_bytes(name.encode() * 100)
    runner = root / "handheld_runner"
    runner.write_bytes(b"\x7fELF runner")
    monkeypatch.setattr(build, "build_runner", lambda target, log=print: runner)
    return runner


@pytest.fixture
def program(tmp_path):
    pte = tmp_path / "8da4w.pte"
    pte.write_bytes(b"a program" * 1000)  # the fake device's runner never reads it
    return pte


def adb_calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def pushed(state: Path) -> list[str]:
    return [call[-1] for call in adb_calls(state) if "push" in call]


def test_bench_over_adb_pushes_once_runs_pinned_fresh_processes_and_describes_the_device(fake_adb, bundle, program,
                                                                                       tmp_path):
    out = tmp_path / "phone.json"
    assert main(["bench", str(program), "--target", "adb", "--runs", "2", "--warmup", "1", *BENCH, "--json", str(out)]) == 0
    results = load_results([out])  # the rows pass the same validation as the host's
    (row,) = results["rows"]
    assert (row["target"], row["runner"], row["emulated"], results["memory_bandwidth_gbs"]) == ("adb", "native", False, None)
    assert row["threads"] == 6  # one per big core: every core faster than the slowest cluster
    assert (row["scheme"], row["backend"], row["max_seq_len"]) == ("8da4w", "xnnpack", 256)  # from the runner's JSON
    assert "glibc 2.36" in row["toolchain"] and "(bundled)" in row["toolchain"]
    device = row["device"]
    assert {k: device[k] for k in ("serial", "manufacturer", "model", "soc", "platform", "android", "sdk", "abi")} == {
        "serial": SERIAL, "manufacturer": "OnePlus", "model": "CPH2581", "soc": "SM8650", "platform": "pineapple",
        "android": "14", "sdk": "34", "abi": "arm64-v8a"}
    assert device["big_cores"] == [2, 3, 4, 5, 6, 7] and device["governor"] == ["walt"]
    assert device["kernel"] == "6.1.25-android14-11" and device["cpu_max_freq_khz"]["7"] == 3302400
    assert {"asimddp", "i8mm", "bf16", "sve2"} <= set(device["cpu_flags"]) and "sha3" in device["cpu_features"]
    assert len(row["samples"]) == 2
    for sample in row["samples"]:  # the hottest CPU zone, in °C
        assert (sample["thermal_zone"], sample["temp_before_c"], sample["temp_after_c"]) == ("cpu-1-2-0", 47.3, 47.3)
        assert sample["first_tokens"] == [224] * 8 and sample["program_rss_bytes"] == 17846272 - 5214208

    bundle_remote = {f"{REMOTE}/handheld_runner", f"{REMOTE}/lib/ld-linux-aarch64.so.1", f"{REMOTE}/lib/libc.so.6",
                     f"{REMOTE}/lib/libexecutorch.so"}
    assert sorted(pushed(fake_adb)) == sorted(bundle_remote | {f"{REMOTE}/8da4w.pte"})
    assert all(call[:2] == ["-s", SERIAL] for call in adb_calls(fake_adb)[1:])  # after `adb devices`
    runs = [call[3] for call in adb_calls(fake_adb) if call[2:3] == ["shell"] and "--gen-len" in call[3]]
    prompt = ",".join(map(str, synthetic_prompt(8)))
    assert runs == [f"taskset fc {REMOTE}/lib/ld-linux-aarch64.so.1 --inhibit-cache --library-path {REMOTE}/lib "
                    f"{REMOTE}/handheld_runner {REMOTE}/8da4w.pte --prompt {prompt} --gen-len 8 --threads 6; "
                    "echo handheld-exit $?"] * 3  # warm-up and two runs, each its own process

    # Again, with the same files on the device: nothing is pushed. A changed program is pushed, alone.
    (fake_adb / "calls.jsonl").unlink()
    assert main(["bench", str(program), "--target", f"adb:{SERIAL}", "--runs", "1", "--warmup", "0", *BENCH,
                 "--cool-down", "0.01", "--threads", "2"]) == 0
    assert pushed(fake_adb) == [] and "--threads 2" in adb_calls(fake_adb)[-2][3]
    program.write_bytes(b"another program")
    assert main(["bench", str(program), "--target", "adb", "--runs", "1", "--warmup", "0", *BENCH]) == 0
    assert pushed(fake_adb) == [f"{REMOTE}/8da4w.pte"]


def test_report_puts_device_rows_beside_host_rows(fake_adb, bundle, program, tmp_path, capsys):
    phone = tmp_path / "phone.json"
    assert main(["bench", str(program), "--target", "adb", "--runs", "1", "--warmup", "0", *BENCH, "--json", str(phone)]) == 0
    host_results = copy.deepcopy(json.loads(phone.read_text()))
    host_results["memory_bandwidth_gbs"] = 20.0
    for row in host_results["rows"]:
        del row["device"]
        row.update(target="host", runner="python", toolchain=None)
    host = tmp_path / "host.json"
    host.write_text(json.dumps(host_results))
    assert main(["report", str(host), str(phone), "-o", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    host_line = next(line for line in report.splitlines() if line.startswith("| 8da4w @ host"))
    phone_line = next(line for line in report.splitlines() if line.startswith("| 8da4w @ CPH2581"))
    assert host_line.split("|")[-2].strip().endswith("%")  # a roofline share: the host's own bandwidth
    assert phone_line.split("|")[-2].strip() == "–"  # none for the phone: that bandwidth is not its own
    assert "- Device: OnePlus CPH2581 (SM8650), Android 14 (SDK 34), arm64-v8a" in report
    assert "target host, adb" in report and "**Emulated**" not in report


@pytest.mark.parametrize("devices, target, message", [
    (None, "adb", "adb not found on PATH: install Android's platform-tools (or Debian's adb: apt-get install adb) "
                  "and put adb on PATH"),
    ("", "adb", "no Android device: `adb devices` lists none; connect a phone with USB debugging on (or "
                "`adb connect HOST:PORT`), then run again"),
    (f"{SERIAL}\tdevice", "adb:NOPE", f"device 'NOPE' is not attached: `adb devices` lists {SERIAL} (device); "
                                       "use --target adb:SERIAL with a serial it lists"),
])
def test_missing_adb_device_or_serial_is_one_line_before_any_work(devices, target, message, fake_adb, program,
                                                                  tmp_path, monkeypatch, capsys):
    def no_build(*_, **__):
        raise AssertionError("built the runner before finding the device")

    monkeypatch.setattr(build, "build_runner", no_build)
    if devices is None:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    else:
        monkeypatch.setenv("FAKE_ADB_DEVICES", devices)
    assert main(["bench", str(program), "--target", target]) == 1
    assert capsys.readouterr().err == f"handheld: error: {message}\n"


def test_a_failing_runner_on_the_device_is_one_error(fake_adb, bundle, program, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_RUNNER_EXIT", "3")
    with pytest.raises(HandheldError, match="8da4w.pte needs operators the native runner does not have"):
        from handheld.measure.bench import BenchConfig, run_bench

        run_bench([program], BenchConfig(prompt_len=8, gen_len=8, runs=1, warmup=0, threads=1, runner="native",
                                         target="adb"), progress=lambda _: None)


def test_device_choice():
    listing = "* daemon not running; starting now at tcp:5037\n* daemon started successfully\nList of devices attached\n" \
              "R5CW1234\tdevice\nemulator-5554\tunauthorized\n\n"
    devices = adb.parse_devices(listing)
    assert devices == {"R5CW1234": "device", "emulator-5554": "unauthorized"}
    assert adb.choose_serial(devices, "R5CW1234") == "R5CW1234"
    with pytest.raises(HandheldError, match=r"lists several devices \(R5CW1234 \(device\), emulator-5554 "
                                            r"\(unauthorized\)\): pick one with --target adb:SERIAL"):
        adb.choose_serial(devices, None)
    with pytest.raises(HandheldError, match="'emulator-5554' is unauthorized: accept the USB debugging prompt"):
        adb.choose_serial(devices, "emulator-5554")
    assert adb.adb_command("R5CW1234", "shell", "getprop") == ["adb", "-s", "R5CW1234", "shell", "getprop"]


def test_target_names_and_serials():
    from handheld.runtime_bindings.native.targets import device_serial, get_target

    assert get_target("adb:R5CW1234").device == "adb" and device_serial("adb:R5CW1234") == "R5CW1234"
    assert device_serial("adb") is None
    with pytest.raises(HandheldError, match="only a device target takes :SERIAL"):
        get_target("qemu-aarch64:R5CW1234")
    with pytest.raises(HandheldError, match=r"known targets: host, qemu-aarch64, android-arm64, adb\[:SERIAL\]"):
        get_target("iphone")


def test_big_cores_and_their_mask():
    assert adb.big_cores({0: 1800000, 1: 1800000, 2: 2400000, 3: 3000000}) == [2, 3]
    assert adb.big_cores({0: 2000000, 1: 2000000}) == [0, 1]  # one cluster: all of it
    assert adb.big_cores({0: None, 1: None, 2: None}) == [0, 1, 2]  # no cpufreq: every core
    assert adb.affinity_mask([2, 3, 4, 5, 6, 7]) == "fc" and adb.affinity_mask([8, 9]) == "300"


def test_device_output_parsing():
    assert adb.parse_thermal("battery 30100\ncpu-1-2-0 47300\ncpu-0-0-0 41000\n") == ("cpu-1-2-0", 47.3)
    assert adb.parse_thermal("soc_thermal 52\nbattery 31\n") == ("soc_thermal", 52.0)  # whole degrees, no CPU zone
    assert adb.parse_thermal(" \n") is None  # no readable zone
    assert adb.parse_sha256(f"{'a' * 64}  {REMOTE}/x.pte\nsha256sum: y: No such file\n") == {f"{REMOTE}/x.pte": "a" * 64}
    assert adb.split_exit('I log line\n{"a": 1}\nhandheld-exit 3\n') == (3, 'I log line\n{"a": 1}')
    assert adb.split_exit("error: closed\n") == (None, "error: closed\n")
    script = adb.run_script(f"{REMOTE}/my model.pte", [1, 2], 4, 2, None)  # unpinned, and a name to quote
    assert script.startswith(f"{REMOTE}/lib/ld-linux-aarch64.so.1 ") and f"'{REMOTE}/my model.pte'" in script


@pytest.fixture(scope="module")
def host_runner():
    """The real host runner (built before `bundle` stands in for the build): the fake phone runs it to score."""
    return build.build_runner("host", log=lambda _: None)


def test_eval_over_adb_scores_on_the_device_and_pulls_the_logits(host_runner, fake_adb, bundle, demo_report,
                                                                  monkeypatch, capsys):
    """`handheld eval X.pte --target adb`: the bundle and the program pushed once, each window scored by the runner's
    --score mode on the device, its logits pulled back. The fake phone runs the host runner on what was pushed,
    so the perplexity is the host kernels' (what an Arm phone's kernels change is measured under qemu,
    test_native); the Python runtime's number beside it is computed independently, here."""
    from handheld.core.fetch.catalog import proxy_dir

    monkeypatch.setenv("FAKE_ADB_HOST_RUNNER", str(host_runner))
    pte = demo_report[0] / "8da4w.pte"
    window = ["--text", str(proxy_dir() / "test.txt"), "--tokenizer", str(proxy_dir() / "tokenizer.model"),
              "--max-tokens", "160", "--context", "64", "--stride", "32", "--json"]
    assert main(["eval", str(pte), *window, "--target", "adb"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["target"] == "adb" and record["tokens_scored"] == 159 and 1 < record["perplexity"] < 300
    # The same x86 XNNPACK kernels on both sides; only attention differs (handheld's own kernels in the runner,
    # ExecuTorch's in the Python runtime: another summation order), measured 0.03% apart; Arm's kernels move it 0.16%.
    assert abs(record["difference_from_host_pct"]) < 0.1, record
    assert sorted(pushed(fake_adb)) == sorted([*adb.bundle_files(bundle), f"{REMOTE}/8da4w.pte"])
    scores = [call for call in adb_calls(fake_adb) if call[2:3] == ["shell"] and "--score" in call[3]]
    pulls = [call for call in adb_calls(fake_adb) if call[2:3] == ["pull"]]
    assert len(scores) == len(pulls) == 4 and all("taskset" in call[3] for call in scores)  # 160 tokens: windows of 64 every 32


def test_eval_over_adb_without_a_device_is_one_line(fake_adb, bundle, demo_report, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    pte = demo_report[0] / "8da4w.pte"
    from handheld.core.fetch.catalog import proxy_dir

    assert main(["eval", str(pte), "--text", str(proxy_dir() / "test.txt"), "--tokenizer",
                 str(proxy_dir() / "tokenizer.model"), "--target", "adb"]) == 1
    assert "no Android device" in capsys.readouterr().err
