"""Outputs are atomic and never land on an input; `.pte` files are read without running them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handheld.cli import main
from handheld.core.errors import HandheldError


def test_inspect_reads_a_pte_without_running_it(odd_fp32_pte, monkeypatch, capsys):
    import executorch.runtime

    def refuse(*args, **kwargs):
        raise AssertionError("inspect loaded the program into a runtime")

    monkeypatch.setattr(executorch.runtime.Runtime, "get", refuse)
    assert main(["inspect", str(odd_fp32_pte)]) == 0
    out = capsys.readouterr().out
    assert "get_max_seq_len" in out and "handheld_scheme" in out and "XnnpackBackend" in out


def test_pte_metadata_by_parsing_equals_the_runtimes(odd_fp32_pte):
    """Parsing the file gives the values the runtime's constant methods return."""
    from executorch.runtime import Runtime

    from handheld.runtime_bindings.pte_file import read_pte_structure

    parsed = read_pte_structure(odd_fp32_pte).constant_methods
    program = Runtime.get().load_program(odd_fp32_pte)
    for name, value in parsed.items():
        executed = list(program.load_method(name).execute([]))
        assert (executed if isinstance(value, list) else executed[0]) == value, name


def test_export_refuses_to_write_inside_its_checkpoint(odd_checkpoint, capsys):
    target = odd_checkpoint / "model.pte"
    assert main(["export", "--checkpoint", str(odd_checkpoint), "-o", str(target)]) == 1
    assert "refusing to write" in capsys.readouterr().err and not target.exists()
    weights = odd_checkpoint / "consolidated.00.pth"
    before = weights.stat().st_mtime_ns
    assert main(["export", "--checkpoint", str(odd_checkpoint), "-o", str(weights)]) == 1
    assert weights.stat().st_mtime_ns == before


def test_sigterm_during_export_leaves_nothing(odd_checkpoint, tmp_path):
    out = tmp_path / "killed.pte"
    process = subprocess.Popen([sys.executable, "-m", "handheld", "export", "--checkpoint", str(odd_checkpoint),
                                "--scheme", "8da4w", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in process.stdout:  # wait until the slow step has begun
        if "lowering" in line:
            break
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert "handheld: terminated" in err
    assert sorted(os.listdir(tmp_path)) == []  # no .pte, no .partial


def test_refuse_overwriting_inputs_covers_files_and_folders(tmp_path):
    from handheld.core.atomic import refuse_overwriting_inputs

    (tmp_path / "ckpt").mkdir()
    refuse_overwriting_inputs(tmp_path / "out.pte", [tmp_path / "ckpt", None])
    with pytest.raises(HandheldError, match="refusing"):
        refuse_overwriting_inputs(tmp_path / "ckpt" / "sub" / "x.pte", [tmp_path / "ckpt"])
    with pytest.raises(HandheldError, match="refusing"):
        refuse_overwriting_inputs(tmp_path / "a.json", [Path(str(tmp_path / "x" / ".." / "a.json"))])


@pytest.mark.parametrize("job", ["qat", "spinquant"])
@pytest.mark.parametrize("where", ["the text", "inside the checkpoint", "the tokenizer"])
def test_training_jobs_never_write_over_or_inside_their_inputs(capsys, byte_checkpoint, calib_text, job, where):
    """Refused before any work, in one line, the inputs untouched."""
    output = {"the text": calib_text, "inside the checkpoint": byte_checkpoint / "out",
              "the tokenizer": byte_checkpoint / "tokenizer.model"}[where]
    text_flag = "--data" if job == "qat" else "--calib"
    before = {p: p.read_bytes() for p in (calib_text, byte_checkpoint / "tokenizer.model")}
    code = main([job, "--checkpoint", str(byte_checkpoint), text_flag, str(calib_text), "--tokenizer",
                 str(byte_checkpoint / "tokenizer.model"), "-o", str(output), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("handheld: error:") == 1 and "Traceback" not in err, err
    assert "refusing to write" in err
    assert not (byte_checkpoint / "out").exists()
    assert all(p.read_bytes() == data for p, data in before.items())


def test_a_training_job_refuses_a_file_as_its_output_directory(capsys, byte_checkpoint, calib_text, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    code = main(["qat", "--checkpoint", str(byte_checkpoint), "--data", str(calib_text), "-o", str(existing), "--steps", "1"])
    assert code == 1 and "is a file; the job writes a checkpoint directory" in capsys.readouterr().err
    assert existing.read_text() == "mine"


def test_a_huge_program_without_segments_never_reaches_flatc(tmp_path, monkeypatch, capsys):
    """flatc's time and JSON grow with its input: a stranger's 65 MiB flatbuffer is refused before it runs."""
    import executorch.exir._serialize._flatbuffer as flatbuffer

    from handheld.runtime_bindings.pte_file import MAX_PROGRAM_BYTES

    monkeypatch.setattr(flatbuffer, "_program_flatbuffer_to_json", lambda *_: pytest.fail("flatc ran"))
    big = tmp_path / "big.pte"
    with open(big, "wb") as f:
        f.write(b"\x00\x00\x00\x00ET12" + b"\x00" * 56)  # an ExecuTorch identifier, no extended header
        f.truncate(MAX_PROGRAM_BYTES + 1)
    assert main(["inspect", str(big)]) == 1
    err = capsys.readouterr().err
    assert err.count("handheld: error:") == 1 and "more than the 64 MiB handheld parses" in err
