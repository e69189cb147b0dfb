"""Provenance: which code made a `.pte` (commit, dirty tree, export-code digest), defined once and read back."""

from __future__ import annotations

from handheld.core.pte_metadata import ProgramMetadata
from handheld.export.provenance import code_digest, export_provenance


def test_code_digest_follows_content_and_names(tmp_path):
    root = tmp_path / "quant"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    first = code_digest((root,))
    assert code_digest((root,)) == first
    (root / "a.py").write_text("x = 2\n")
    changed = code_digest((root,))
    assert changed != first
    (root / "a.py").rename(root / "b.py")  # same bytes under another name is other code
    renamed = code_digest((root,))
    assert renamed not in (first, changed)
    (root / "notes.txt").write_text("not code")  # only .py and .json shape files count
    assert code_digest((root,)) == renamed


def test_provenance_names_this_checkout_and_survives_the_metadata_round_trip():
    provenance = export_provenance()
    assert len(provenance["commit"]) == 40 and isinstance(provenance["dirty"], bool)
    assert set(provenance) >= {"code_digest", "torch", "executorch", "torchao"}
    metadata = ProgramMetadata(max_seq_len=8, vocab_size=10, n_layers=1, bos_id=0, eos_ids=(1,), provenance=provenance)
    assert ProgramMetadata.from_constant_methods(metadata.to_constant_methods()).provenance == provenance
