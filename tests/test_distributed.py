"""Where the training jobs compute: --device auto/cpu/cuda, each torchrun process on GPU LOCAL_RANK.
No GPU here: the CUDA branch is checked with torch.cuda's answers replaced, the CPU path for real."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from handheld.core.errors import HandheldError
from handheld.training.distributed import join_group, resolve_device


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(HandheldError, match="--device cuda: torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(HandheldError, match="unknown --device 'tpu'; known: auto, cpu, cuda"):
        resolve_device("tpu")


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1) and chosen == [1]
    assert resolve_device("cpu") == torch.device("cpu")  # asked for the CPU: stays there
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(HandheldError, match="LOCAL_RANK 2 but only 2 GPU"):
        resolve_device("cuda")


def test_one_process_group_carries_its_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = join_group("cpu")
    assert group.world == 1 and group.device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cli_refuses_cuda_without_a_gpu_in_one_line(tmp_path):
    (tmp_path / "ckpt").mkdir()  # the output beside the checkpoint, not inside it (refused on its own)
    done = subprocess.run([sys.executable, "-m", "handheld", "spinquant", "--checkpoint", str(tmp_path / "ckpt"), "--calib",
                           str(tmp_path / "c.txt"), "-o", str(tmp_path / "out"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert "--device cuda: torch sees no CUDA GPU" in done.stderr and not (tmp_path / "out").exists()
