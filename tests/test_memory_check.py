"""The memory check before an export or a training job: estimates from the measured figures, a refusal in one line
naming both numbers (memory faked small here), and the override."""

import pytest

from handheld.cli import main
from handheld.export import memory_check
from handheld.export.memory_check import GIB, estimated_peak_bytes


def test_estimates_reproduce_the_measured_exports():
    assert estimated_peak_bytes(1_235_814_400, "8da4w") / GIB == pytest.approx(7.0, abs=0.05)
    assert estimated_peak_bytes(3_212_749_824, "8da4w") / GIB == pytest.approx(14.7, abs=0.05)
    assert estimated_peak_bytes(1_235_814_400, "fp32") / GIB == pytest.approx(10.7, abs=0.05)
    assert estimated_peak_bytes(10**9, "bf16") == estimated_peak_bytes(10**9, "fp32")  # the upper bound, said so
    assert estimated_peak_bytes(10**9, "training") > estimated_peak_bytes(10**9, "fp32")


@pytest.mark.parametrize("argv", [
    ["export", "--checkpoint", "{ckpt}", "--scheme", "8da4w", "-o", "{out}/x.pte"],
    ["qat", "--checkpoint", "{ckpt}", "--data", "{text}", "-o", "{out}/qat", "--steps", "1"],
    ["spinquant", "--checkpoint", "{ckpt}", "--calib", "{text}", "-o", "{out}/sq", "--steps", "1"],
])
def test_too_little_memory_is_refused_in_one_line_before_any_work(argv, byte_checkpoint, calib_text, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setattr(memory_check, "available_bytes", lambda: 64 * 2**20)  # a 64 MiB machine
    filled = [a.format(ckpt=byte_checkpoint, text=calib_text, out=tmp_path) for a in argv]
    assert main(filled) == 1
    err = capsys.readouterr().err
    assert err.count("handheld: error:") == 1 and "Traceback" not in err
    assert "needs about " in err and "GiB at its peak; 0.1 GiB is available" in err and "--skip-memory-check" in err
    assert list(tmp_path.iterdir()) == []


def test_the_override_lets_an_export_run(byte_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(memory_check, "available_bytes", lambda: 64 * 2**20)
    calls = []
    monkeypatch.setattr("handheld.export.program.prepare_model", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(
        KeyboardInterrupt))  # stop right after the check: the export itself is tested elsewhere
    assert main(["export", "--checkpoint", str(byte_checkpoint), "--scheme", "8da4w", "--skip-memory-check",
                 "-o", str(tmp_path / "x.pte")]) == 130
    assert calls == [1]
