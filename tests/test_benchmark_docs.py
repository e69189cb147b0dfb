"""Quality figures in the docs come from their results files: the rendered tables equal what the renderers make of
benchmarks/results/quality/table.json and recipes_smollm2.json, and README.md / BENCHMARKS.md carry them verbatim
between markers."""

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


def test_the_recipes_table_is_what_its_json_renders_to():
    from recipes_smollm2 import RESULTS as RECIPES, render

    report = json.loads(RECIPES.read_text())
    assert RECIPES.with_suffix(".md").read_text() == render(report)
    assert _block(ROOT / "BENCHMARKS.md", "recipes-table") == render(report)


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


def _says_how_it_was_made(record: object) -> bool:
    """A producer (script) with its arguments or command: written by the run (`run_record`), or afterwards from
    INDEX.md under "made_by" for runs that did not record it."""
    if not isinstance(record, dict):
        return False
    return "made_by" in record or (("producer" in record or "script" in record)
                                   and ("arguments" in record or "command" in record))


def test_every_results_file_records_how_it_was_made():
    for path in (ROOT / "benchmarks" / "results").rglob("*.json"):
        data = json.loads(path.read_text())
        rows = data if isinstance(data, list) else [data]
        assert rows and all(_says_how_it_was_made(row) for row in rows), f"{path.name} does not say how it was made"


def test_run_record_names_the_script_arguments_commit_and_machine(monkeypatch):
    from handheld.measure.host import run_record

    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "x.py"), "--work", "/tmp/w"])
    record = run_record()
    assert record["producer"] == "benchmarks/x.py" and record["arguments"] == ["--work", "/tmp/w"]
    assert len(record["commit"]) == 40 and record["host"]["cpu"]


def _doc_row(prefix: str, after: str = "") -> list[str]:
    """The cells of the first BENCHMARKS.md table row starting with `prefix` below the line containing `after`."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    line = next(line for line in text[text.index(after):].splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_arm_table_is_the_committed_baseline():
    baseline = json.loads((ROOT / "benchmarks" / "baselines" / "arm-bench-qemu-aarch64.json").read_text())
    for row in baseline["rows"]:
        cells = _doc_row(f"| {row['scheme']} | ", after="| program (emulated) |")
        stats = row["stats"]
        assert cells[1].split(" ")[0] == f"{stats['decode_tok_s']['median']:.1f}", cells
        assert cells[2] == f"{stats['prefill_tok_s']['median']:.1f}" and cells[3] == f"{stats['ttft_s']['median']:.3f}"
        assert cells[4] == f"{stats['peak_rss_bytes']['median'] / 2**20:.0f}" and cells[5] == f"{row['work']['value']:,}"


def test_smollm2_export_rows_are_the_speed_runs_exports():
    exports = json.loads((ROOT / "benchmarks" / "results" / "smollm2_speed" / "results.json").read_text())["exports"]
    labels = {"fp32": "SmolLM2-135M fp32 (30 layers)", "fp16": "SmolLM2-135M fp16", "8da4w": "SmolLM2-135M 8da4w"}
    for export in exports:
        if export["scheme"] not in labels:
            continue
        cells = _doc_row(f"| {labels[export['scheme']]} |")
        assert cells[1] == f"{export['wall_s']:.0f} s" and cells[2] == f"{export['peak_rss_bytes'] / 2**30:.2f} GiB", cells
        assert cells[3] == f"{export['file_bytes'] / 1e6:.0f} MB", cells


def test_the_benchmarks_readme_names_every_script():
    """A newcomer finds every benchmark program (or the module it belongs to) in benchmarks/README.md."""
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    for script in sorted((ROOT / "benchmarks").rglob("*.py")):
        relative = script.relative_to(ROOT / "benchmarks").as_posix()
        assert relative in readme or f"`{script.name}`" in readme, f"benchmarks/README.md does not name {relative}"
