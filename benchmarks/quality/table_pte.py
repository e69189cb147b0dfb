"""The quality table's `.pte` rows (benchmarks/quality/table.py): the option exported by `handheld export`'s own
code with --full-logits, then scored through the program on the table's windows."""

from __future__ import annotations

from pathlib import Path

from handheld.export.options import ExportOptions
from handheld.export.program import export_program
from handheld.measure.quality import pte_logits_fn
from handheld.runtime_bindings.python.program import PteProgram
from table import CONTEXT, scores


def run_pte_rows(which: str, checkpoint: Path, work: Path, table, texts: dict, reference, rows: dict) -> None:
    for name, row in rows.items():
        key = f"{which}:handheld .pte:{name}"
        if table.has(key):
            continue
        out = work / f"{which}-{name.replace(' ', '').replace('-', '_').replace('@', '')}.pte"
        o = row.options
        options = ExportOptions(scheme=row.scheme, max_seq_len=CONTEXT, full_logits=True, scale_rule=o.scale_rule,
                                calib=o.calib, calib_tokens=o.calib_tokens if o.calib else None,
                                budget_mb=o.budget_mb, rotation=o.rotation)
        exported = export_program(checkpoint, out, options, log=lambda _: None)
        program = PteProgram(out)
        table.add(key, {"checkpoint": which, "kind": "handheld .pte", "row": name,
                        "scores": scores(pte_logits_fn(program), reference, texts),
                        "bytes_per_token": program.metadata.bytes_per_token(), "file_bytes": exported.file_bytes,
                        "file_kind": ".pte", "export_seconds": exported.seconds,
                        "quantization": program.metadata.quantization})
