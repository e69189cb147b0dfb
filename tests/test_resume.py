"""Resume survives a real kill: a training job's child process is SIGKILLed mid-run (after its first saved
state, before the end), resumed with --resume, and must end bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from handheld.core.checkpoints import read_checkpoint
from handheld.core.errors import HandheldError
from handheld.training.distributed import Group
from handheld.training.options import QatOptions, TrainConfig
from handheld.training.qat import run_qat

SPINQUANT = dict(steps=8, lr=1.0, seq_len=32, samples=8, batch_size=4, save_every=1)
QAT_TRAIN = TrainConfig(steps=4, lr=1e-3, batch_size=4, grad_accum=1, warmup=1, eval_every=4, save_every=1)
QAT = dict(seq_len=32, lora_rank=4, lora_alpha=8.0, lora_lr=1e-2)


def spinquant_command(checkpoint: Path, calib: Path, out: Path) -> list[str]:
    s = SPINQUANT
    return ["spinquant", "--checkpoint", str(checkpoint), "--calib", str(calib), "-o", str(out), "--steps", str(s["steps"]),
            "--lr", str(s["lr"]), "--seq-len", str(s["seq_len"]), "--samples", str(s["samples"]),
            "--batch-size", str(s["batch_size"]), "--save-every", "1"]


def qat_command(checkpoint: Path, data: Path, out: Path) -> list[str]:
    t = QAT_TRAIN
    return ["qat", "--checkpoint", str(checkpoint), "--data", str(data), "-o", str(out), "--phase", "both",
            "--steps", str(t.steps), "--lr", str(t.lr), "--lora-lr", str(QAT["lora_lr"]), "--batch-size", str(t.batch_size),
            "--warmup", str(t.warmup), "--eval-every", str(t.eval_every), "--save-every", "1", "--seq-len", str(QAT["seq_len"]),
            "--lora-rank", str(QAT["lora_rank"]), "--lora-alpha", str(QAT["lora_alpha"])]


def kill_after_first_save(arguments: list[str], out: Path) -> None:
    """Start `handheld ARGS` and SIGKILL it as soon as its first resumable state exists."""
    state = out.with_name(out.name + ".resume") / "state.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "handheld", *arguments], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while child.poll() is None and not state.exists():
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == -signal.SIGKILL, f"the job was not killed mid-run (exit {child.returncode}): {stderr[-2000:]}"
    assert state.is_file() and not out.exists()


def run_uninterrupted(arguments: list[str]) -> None:
    """`handheld ARGS` to its end, in the killed run's conditions: a reduction's order depends on the thread count
    (measured: QAT's embedding gradient differs between 1 and 2 threads on an AVX512-FP16 Xeon), so the reference
    runs on one thread too."""
    done = subprocess.run([sys.executable, "-m", "handheld", *arguments], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def resume(arguments: list[str]) -> None:
    run_uninterrupted([*arguments, "--resume"])


def assert_same_checkpoint(a: Path, b: Path) -> None:
    expected, got = read_checkpoint(a).state, read_checkpoint(b).state
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_spinquant_killed_mid_run_resumes_bit_identical(byte_checkpoint, calib_text, tmp_path):
    reference = tmp_path / "reference"
    run_uninterrupted(spinquant_command(byte_checkpoint, calib_text, reference))
    out = tmp_path / "killed"
    kill_after_first_save(spinquant_command(byte_checkpoint, calib_text, out), out)
    resume(spinquant_command(byte_checkpoint, calib_text, out))
    assert_same_checkpoint(reference, out)


def test_qat_lora_killed_mid_run_resumes_bit_identical(byte_checkpoint, calib_text, tmp_path):
    reference = tmp_path / "reference"
    run_uninterrupted(qat_command(byte_checkpoint, calib_text, reference))
    out = tmp_path / "killed"
    kill_after_first_save(qat_command(byte_checkpoint, calib_text, out), out)
    resume(qat_command(byte_checkpoint, calib_text, out))
    assert_same_checkpoint(reference, out)


def test_qat_state_at_the_end_of_training_survives_a_failed_write(byte_checkpoint, calib_text, tmp_path, monkeypatch):
    """The last phase's state is saved before converting and writing: resuming retrains nothing."""
    import handheld.training.loop as loop
    import handheld.training.qat as job

    options = QatOptions(checkpoint=byte_checkpoint, data=calib_text, output=tmp_path / "q", train=QAT_TRAIN, **QAT)
    real_write = job._write

    def failing_write(*args):
        raise HandheldError("disk full (simulated)")

    monkeypatch.setattr(job, "_write", failing_write)
    with pytest.raises(HandheldError, match="simulated"):
        run_qat(options, Group(), progress=False)
    saved = torch.load(tmp_path / "q.resume" / "state.pt", weights_only=True)
    assert saved["phase"] == "lora" and saved["step"] == QAT_TRAIN.steps
    monkeypatch.setattr(job, "_write", real_write)
    monkeypatch.setattr(loop, "lr_at", lambda *a: pytest.fail("resuming a finished run trained again"))
    import dataclasses

    run_qat(dataclasses.replace(options, resume=True), Group(), progress=False)
    assert read_checkpoint(tmp_path / "q").kind == "qat-lora"
