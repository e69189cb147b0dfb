"""The Arm CI job's script runs here, on the aarch64 build under qemu, gated on its deterministic work count.

`.github/workflows/arm.yml` runs the same script natively on GitHub's Arm runners.
"""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_arm_bench_script_under_qemu(tmp_path):
    done = subprocess.run([str(ROOT / ".ci" / "arm-bench"), "qemu-aarch64", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "regression gate passed: no work count moved more than 2% the wrong way" in done.stdout
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**Emulated**" in report and "translated blocks executed (qemu)" in report
    assert "| 8da4w | 8da4w | xnnpack |" in report


def test_workflow_runs_the_same_script_on_arm_runners():
    workflow = (ROOT / ".github" / "workflows" / "arm.yml").read_text()
    assert "runs-on: ubuntu-24.04-arm" in workflow and "run: .ci/arm-bench host arm-bench" in workflow
