"""The one-run quality table: handheld's 4-bit options and llama.cpp's formats on SmolLM2-135M-Instruct, scored on
the same token ids and windows by the same code (`handheld.measure.quality.evaluate`).

Rows, per checkpoint (the shipped GGUF, whose weights sit on a Q4_1 grid, and a short float fine-tune of it that
sits on no 4-bit grid, made as benchmarks/quality/scale_rules.py makes it):
- handheld in eager PyTorch (the exact model `handheld export` lowers; the parity tests hold each .pte to it):
  float, 8da4w with torchao's absmax rule, the data-free default, 8da4w-c4, `--calib` (GPTQ), the default with
  `--kv-cache int8` (scored through the quantized cache, as its program prefills), `--calib --budget-mb B`
  (mixed precision) at budgets equal to llama.cpp's Q4_0, Q4_K_M and Q5_K_M bytes per token, and `--calib` and
  `--calib --budget-mb B` after `--rotation quarot`;
- handheld through exported `.pte` files (`--full-logits`) for the default and the best option;
- llama.cpp (llama-cpp-python, built for this CPU) on F32, Q8_0, Q4_0, Q4_K_M and Q5_K_M files that it quantized
  itself from an F32 GGUF of the same weights, its logits read for every window position.
Columns: perplexity, increase over float, mean KL(float || row) and top-1 agreement with float (float = the
same checkpoint's handheld eager float model), weight bytes a decoded token reads, and file bytes.

Texts (kept in the repo): handheld/proxy/test.txt (Python documentation prose) and benchmarks/quality/texts/GPL-3.txt
(the GPL-3 licence, legal prose; verbatim copying is permitted), first 4,096 tokens each, context 256, stride 128.

    pip install -e '.[peers]'   # llama-cpp-python; build it for this CPU (benchmarks/peers/llama_cpp_q4_0.py)
    python benchmarks/quality/table.py [--work /tmp/quality-work] [--checkpoints shipped finetuned] [--rows NAME ...]

Writes benchmarks/results/quality/table.json as rows finish (a rerun keeps rows of the same commit and redoes the
rest), then renders from that JSON alone (`--render` re-renders only): table.md, summary.md and ppl_vs_bytes.png
beside it, and the same tables into BENCHMARKS.md and README.md between their quality markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from handheld.core.fetch.catalog import cached_path, get_pretrained, proxy_dir  # noqa: E402
from handheld.core.checkpoints import build_model, read_checkpoint  # noqa: E402
from handheld.core.pte_metadata import ProgramMetadata  # noqa: E402
from handheld.core.tokenizers.tokenizer import load_tokenizer  # noqa: E402
from handheld.export.weight_bytes import weight_bytes_by_kind  # noqa: E402
from handheld.measure.host import host_info  # noqa: E402
from handheld.measure.quality import eager_logits_fn, evaluate  # noqa: E402
from handheld.quant.schemes import SchemeOptions, apply_scheme, read_calibration  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quality"
TEXTS = {"test.txt": proxy_dir() / "test.txt", "GPL-3": ROOT / "benchmarks" / "quality" / "texts" / "GPL-3.txt"}
CONTEXT, STRIDE, TOKENS = 256, 128, 4096
CALIB = proxy_dir() / "calib.txt"  # held out from both texts
LLAMA_CPP_TYPES = ("F32", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M")
BUDGETS_FROM = ("Q4_0", "Q4_K_M", "Q5_K_M")  # mixed-precision budgets: these files' bytes per token
PTE_ROWS = ("8da4w", "8da4w --calib --budget-mb @Q4_K_M", "8da4w --calib --rotation quarot --budget-mb @Q4_K_M")
# A row measured alone later (--rows) is compared with its baseline measured again in the same run, on the same
# machine: the table's own baseline row may come from another machine, and the difference may be smaller than theirs.
SAME_RUN_BASELINE = {"8da4w --kv-cache int8": "8da4w", "8da4w --calib --rotation quarot": "8da4w"}


@dataclass(frozen=True)
class Row:
    name: str
    scheme: str = "8da4w"
    options: SchemeOptions | None = None  # None: the float model itself
    kv_cache: str = "fp32"  # int8: scored through ExecuTorch's quantized KV cache, as `--kv-cache int8` exports


def handheld_rows(budgets: dict[str, float]) -> list[Row]:
    rows = [Row("float"), Row("8da4w absmax", options=SchemeOptions(scale_rule="absmax")),
            Row("8da4w", options=SchemeOptions()), Row("8da4w-c4", "8da4w-c4", SchemeOptions()),
            Row("8da4w --calib", options=SchemeOptions(calib=CALIB)),
            Row("8da4w --kv-cache int8", options=SchemeOptions(), kv_cache="int8")]
    rows += [Row(f"8da4w --calib --budget-mb @{peer}", options=SchemeOptions(calib=CALIB, budget_mb=mb))
             for peer, mb in budgets.items()]
    rows.append(Row("8da4w --calib --rotation quarot", options=SchemeOptions(calib=CALIB, rotation="quarot")))
    rows += [Row(f"8da4w --calib --rotation quarot --budget-mb @{peer}",
                 options=SchemeOptions(calib=CALIB, budget_mb=mb, rotation="quarot")) for peer, mb in budgets.items()]
    return rows


def eager_model(row: Row, base: torch.nn.Module, tokenizer) -> torch.nn.Module:
    if row.options is None:
        return base
    calibration = read_calibration(row.options, tokenizer, CONTEXT) if row.options.calib else None
    model = apply_scheme(copy.deepcopy(base), row.scheme, row.options, calibration).eval()
    if row.kv_cache != "fp32":
        from handheld.export.program import with_llm_kv_ops

        with_llm_kv_ops(model, row.kv_cache)  # eager_logits_fn then scores through the cache
    return model


def bytes_per_token(model: torch.nn.Module) -> int:
    """What a decoded token of this model's program reads (ProgramMetadata's rule over the stored weights)."""
    stored = weight_bytes_by_kind(model)
    meta = ProgramMetadata(max_seq_len=1, vocab_size=model.args.vocab_size, n_layers=0, bos_id=0, eos_ids=(),
                           weight_bytes=stored)
    return meta.bytes_per_token()


def scores(logits_fn: Callable, reference_fn: Callable | None, texts: dict[str, list[int]]) -> dict:
    out = {}
    for label, ids in texts.items():
        result = evaluate(logits_fn, ids, CONTEXT, STRIDE, reference_fn, progress=False)
        out[label] = {"perplexity": result.perplexity, "mean_kl": result.mean_kl or 0.0,
                      "top1_agreement": 1.0 if reference_fn is None else result.top1_agreement}
    return out


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return done.stdout.strip() + ("-dirty" if dirty else "")


class Table:
    """The results JSON, saved after every row; rows of this commit already there are kept."""

    def __init__(self, path: Path, command: str, partial: bool = False):
        """`partial`: a run of a few rows (--rows), listed under "runs"; the whole table's command and host stay."""
        self.path = path
        self.report = json.loads(path.read_text()) if path.exists() else {"rows": {}}
        self.commit = commit()
        run = {"command": command, "commit": self.commit, "host": host_info(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if partial:
            self.report.setdefault("runs", []).append(run | {"same_run_baselines": {}})
            return
        self.report.update(producer="benchmarks/quality/table.py", command=command, commit=self.commit,
                           host=run["host"], texts={k: str(v.relative_to(ROOT)) for k, v in TEXTS.items()},
                           tokens=TOKENS, context=CONTEXT, stride=STRIDE, calib=str(CALIB.relative_to(ROOT)), runs=[])

    def has(self, key: str) -> bool:
        return self.report["rows"].get(key, {}).get("commit") == self.commit

    def add(self, key: str, row: dict, same_run_baseline: bool = False) -> None:
        """A row of the table, or (`same_run_baseline`) a baseline kept with this partial run, not in the table."""
        home = self.report["runs"][-1]["same_run_baselines"] if same_run_baseline else self.report["rows"]
        home[key] = {**row, "commit": self.commit}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.report, indent=1) + "\n")
        tmp.replace(self.path)
        texts = "  ".join(f"{t} {r['perplexity']:.3f}" for t, r in row["scores"].items())
        print(f"{key:50s} {texts}  {row['bytes_per_token'] / 1e6:.2f} MB/token", flush=True)


def run_checkpoint(which: str, path: Path, table: Table, work: Path, tokenizer, texts: dict, with_pte: bool,
                   only: list[str] | None = None) -> None:
    """Every row of one checkpoint; `only`: just these handheld eager rows, the rest kept as recorded (each row
    records its commit), budgets from the recorded llama.cpp rows."""
    from table_peers import llama_cpp_rows, recorded_peer_rows

    base = build_model(read_checkpoint(path), max_seq_len=CONTEXT, full_logits=True).float().eval()
    reference = eager_logits_fn(base)
    peers = recorded_peer_rows(which, table) if only else llama_cpp_rows(which, path, work, texts, reference, table)
    budgets = {peer: peers[peer]["bytes_per_token"] / 1e6 for peer in BUDGETS_FROM}
    baselines = {SAME_RUN_BASELINE[name] for name in only or () if name in SAME_RUN_BASELINE}
    for row in handheld_rows(budgets):
        key = f"{which}:handheld eager:{row.name}"
        if (row.name not in only and row.name not in baselines) if only else table.has(key):
            continue
        started = time.perf_counter()
        model = eager_model(row, base, tokenizer)
        built = time.perf_counter() - started
        result = scores(eager_logits_fn(model), None if model is base else reference, texts)
        table.add(key, {"checkpoint": which, "kind": "handheld eager", "row": row.name, "scores": result,
                        "bytes_per_token": bytes_per_token(model), "file_bytes": sum(weight_bytes_by_kind(model).values()),
                        "file_kind": "stored weights", "quantize_seconds": built,
                        "options": _options_record(row)}, same_run_baseline=bool(only) and row.name not in only)
    if with_pte:  # a run of a few rows (--rows) exports those of them that are PTE_ROWS
        from table_pte import run_pte_rows

        wanted = set(PTE_ROWS).intersection(only or PTE_ROWS)
        run_pte_rows(which, path, work, table, texts, reference,
                     {row.name: row for row in handheld_rows(budgets) if row.name in wanted})


def _options_record(row: Row) -> dict | None:
    if row.options is None:
        return None
    o = row.options
    return {"scheme": row.scheme, "scale_rule": o.scale_rule, "calib": o.calib.name if o.calib else None,
            "calib_tokens": o.calib_tokens if o.calib else None, "budget_mb": o.budget_mb, "kv_cache": row.kv_cache,
            "rotation": o.rotation}


def main() -> None:
    from table_render import render_all

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/quality-work"), help="GGUF files, .pte files, fine-tune")
    parser.add_argument("--checkpoints", nargs="+", default=["shipped", "finetuned"])
    parser.add_argument("--no-pte", action="store_true", help="skip the exported-program rows")
    parser.add_argument("--rows", nargs="+", help="measure only these handheld eager rows (by name); every other row "
                        "stays as recorded")
    parser.add_argument("--render", action="store_true", help="only re-render table.md and the chart from the JSON")
    args = parser.parse_args()
    path = RESULTS / "table.json"
    if not args.render:
        command = "python benchmarks/quality/table.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        _measure(args, Table(path, command.strip(), partial=bool(args.rows)))
    render_all(json.loads(path.read_text()), RESULTS, docs=ROOT)


def _measure(args: argparse.Namespace, table: Table) -> None:
    from scale_rules import finetuned_checkpoint

    torch.manual_seed(0)
    gguf = cached_path(get_pretrained("smollm2-135m-instruct"))
    tokenizer = load_tokenizer(gguf)
    texts = {label: tokenizer.encode(p.read_text(encoding="utf-8"), bos=False)[:TOKENS] for label, p in TEXTS.items()}
    args.work.mkdir(parents=True, exist_ok=True)
    for which in args.checkpoints:
        path = gguf if which == "shipped" else finetuned_checkpoint(gguf, args.work / "smollm2-finetuned")
        run_checkpoint(which, path, table, args.work, tokenizer, texts, with_pte=not args.no_pte, only=args.rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
