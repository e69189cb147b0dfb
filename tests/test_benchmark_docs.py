"""Quality figures in the docs come from their results file: the rendered tables equal what the renderer makes of
benchmarks/results/quality/table.json, and README.md / BENCHMARKS.md carry them verbatim between markers."""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality"
sys.path.insert(0, str(ROOT / "benchmarks" / "quality"))

from table_render import render_markdown, render_summary  # noqa: E402


def _block(doc: Path, name: str) -> str:
    found = re.search(rf"<!-- {name}: begin.*?-->\n(.*?)<!-- {name}: end -->", doc.read_text(), re.S)
    assert found, f"{doc.name} has no {name} block"
    return found.group(1)


def test_rendered_files_are_what_the_json_renders_to():
    report = json.loads((RESULTS / "table.json").read_text())
    assert (RESULTS / "table.md").read_text() == render_markdown(report)
    assert (RESULTS / "summary.md").read_text() == render_summary(report)


def test_docs_carry_the_rendered_tables_verbatim():
    report = json.loads((RESULTS / "table.json").read_text())
    assert _block(ROOT / "BENCHMARKS.md", "quality-table") == render_markdown(report)
    assert _block(ROOT / "README.md", "quality-summary") == render_summary(report)
