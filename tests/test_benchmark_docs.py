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


def test_every_results_file_names_its_producer_in_the_index():
    index = (ROOT / "benchmarks" / "results" / "INDEX.md").read_text()
    listed = re.findall(r"^\| `([^`]+)`", index, re.M)
    folders = {entry.rstrip("/").split(" ")[0] for entry in listed if entry.endswith("/") or "/ (" in entry}
    for path in (ROOT / "benchmarks" / "results").rglob("*"):
        relative = path.relative_to(ROOT / "benchmarks" / "results").as_posix()
        if path.is_dir() or relative == "INDEX.md":
            continue
        top = relative.split("/")[0]
        covered = top in folders or any(relative == e or relative.startswith(e.split(",")[0].rsplit(".", 1)[0])
                                        for e in listed)
        assert covered, f"{relative} is not in benchmarks/results/INDEX.md"
    for script in set(re.findall(r"`(benchmarks/[\w/]+\.py)`", index)) - {"benchmarks/spinquant/r4_decode_cost.py"}:
        assert (ROOT / script).is_file(), f"INDEX.md names {script}, which does not exist"
