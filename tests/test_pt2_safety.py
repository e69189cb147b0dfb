"""A `.pt2` from a stranger runs nothing: handheld's own archives load, poisoned ones are refused in one line before
torch reads them, and the archive's root folder carries the file's final name."""

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from handheld.cli import main
from handheld.core.errors import HandheldError
from handheld.export.npu import load_quantized
from handheld.export.pt2_safety import check_pt2, weights_only_loads


class _Boom:
    """Unpickling this runs os.system: the attack the issue describes."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _rewritten(source: Path, target: Path, replace: dict) -> Path:
    """A copy of an archive with some members (by name after the root folder) replaced by other bytes."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            inner = info.filename.split("/", 1)[1]
            data = replace.pop(inner, None)
            dst.writestr(info.filename, src.read(info) if data is None else data)
        root = src.namelist()[0].split("/", 1)[0]
        for inner, data in replace.items():  # members the original did not have
            dst.writestr(f"{root}/{inner}", data)
    return target


def _poisoned_sample_inputs(marker: Path) -> bytes:
    """A well-formed torch.save archive whose data.pkl calls os.system when unpickled."""
    buffer = io.BytesIO()
    torch.save(_Boom(marker), buffer)
    return buffer.getvalue()


def test_own_archive_passes_and_is_rooted_at_its_final_name(own_pt2):
    check_pt2(own_pt2)
    with zipfile.ZipFile(own_pt2) as archive:
        assert {name.split("/", 1)[0] for name in archive.namelist()} == {"own"}
    assert [p.name for p in own_pt2.parent.iterdir()] == ["own.pt2"]  # no staging folder left behind
    assert load_quantized(own_pt2).options.scheme == "16a8w"


def _poison(kind: str, source: Path, target: Path, marker: Path) -> Path:
    json_text = zipfile.ZipFile(source).read(next(n for n in zipfile.ZipFile(source).namelist() if n.endswith("models/model.json")))
    cases = {
        "sample inputs pickle": {"data/sample_inputs/model.pt": _poisoned_sample_inputs(marker)},
        "opaque object": {"data/constants/opaque_obj_0": pickle.dumps(_Boom(marker))},
        "aotinductor library": {"data/aotinductor/model/model.so": b"\x7fELF"},
        "graph calls os.system": {"models/model.json": json_text.replace(b'"torch.ops.', b'"torch.os.system#', 1)},
        "pickled weights": {"data/weights/model_weights_config.json":
                            b'{"config": {"w": {"path_name": "weight_0", "use_pickle": true}}}'},
    }
    return _rewritten(source, target, cases[kind])


@pytest.mark.parametrize("kind", ["sample inputs pickle", "opaque object", "aotinductor library", "graph calls os.system",
                                  "pickled weights"])
def test_a_poisoned_archive_is_refused_in_one_line_and_runs_nothing(own_pt2, byte_checkpoint, calib_text, tmp_path,
                                                                    capsys, kind):
    marker = tmp_path / "pwned"
    bad = _poison(kind, own_pt2, tmp_path / "bad.pt2", marker)
    with pytest.raises(HandheldError, match=r"bad\.pt2 is refused: "):
        check_pt2(bad)
    code = main(["eval", str(bad), "--text", str(calib_text), "--tokenizer", str(byte_checkpoint / "tokenizer.model")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("handheld: error:") == 1 and "Traceback" not in err, err
    assert "bad.pt2 is refused" in err and not marker.exists()


def test_without_the_check_torch_would_run_the_poisoned_sample_inputs(own_pt2, tmp_path):
    """What the check guards against, shown on torch itself: its loader retries a failed safe unpickling unsafely."""
    marker = tmp_path / "pwned"
    bad = _poison("sample inputs pickle", own_pt2, tmp_path / "bad.pt2", marker)
    with pytest.raises(Exception):
        torch.export.load(bad)
    assert marker.exists()


def test_weights_only_loads_overrides_an_unrestricted_torch_load(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "x.pt"
    torch.save(_Boom(marker), path)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)
    assert not marker.exists()
