"""The Arm CI job's script runs here, on the aarch64 build under qemu, gated on its deterministic work count.

`.github/workflows/arm.yml` runs the same script natively on GitHub's Arm runners.
"""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_arm_bench_script_under_qemu(tmp_path):
    # As on a 4-core runner: the script pins its threads, and the work count does not depend on them.
    env = os.environ | {"HANDHELD_CORES": "4"}
    done = subprocess.run([str(ROOT / ".ci" / "arm-bench"), "qemu-aarch64", str(tmp_path)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "regression gate passed: no work count moved more than 2% the wrong way" in done.stdout
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {row["threads"] for row in rows} == {2} and all("qemu-aarch64 version" in row["toolchain"] for row in rows)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**Emulated**" in report and "translated blocks executed (qemu)" in report
    assert "| 8da4w | 8da4w | xnnpack |" in report


def test_workflow_runs_the_same_script_on_arm_runners():
    workflow = (ROOT / ".github" / "workflows" / "arm.yml").read_text()
    assert "runs-on: ubuntu-24.04-arm" in workflow and "run: .ci/arm-bench host arm-bench" in workflow
