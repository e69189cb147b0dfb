"""handheld against an independent implementation on a real model: llama.cpp on the same float weights.

Runs where the peer is installed (`pip install -e '.[peers]'`) and SmolLM2 can be fetched; skipped otherwise.
The committed result is `benchmarks/results/smollm2_llama_cpp_parity.json` (with the fp32 `.pte` too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("llama_cpp", reason="llama.cpp peer not installed (pip install -e '.[peers]')")


def test_logits_tokens_and_greedy_text_agree_with_llama_cpp(tmp_path):
    result_file = tmp_path / "parity.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "smollm2_parity.py"), "--work",
                           str(tmp_path), "--json", str(result_file)], capture_output=True, text=True)
    if done.returncode != 0 and "cannot download" in done.stderr:
        pytest.skip("SmolLM2 cannot be fetched here")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    for row in result["rows"]:
        assert row["eager_vs_llama_cpp"]["relative_max_diff"] < result["tolerance_relative_max_diff"], row
        assert row["eager_vs_llama_cpp"]["top1_agreement"] == 1.0, row
        assert row["greedy_match_eager"] >= 32, row
        assert row.get("token_ids_equal", True), row
