"""The scale rules through real `.pte` files: SmolLM2 8da4w exported by `handheld export` (torchao's `absmax`,
the data-free default `weighted`, and `--calib` GPTQ), each timed whole, then scored by `handheld eval` through
the program (XNNPACK, 2 threads) on the same texts, tokens and windows as benchmarks/quality/scale_rules.py.

    python benchmarks/quality/scale_rules_pte.py --work /tmp/scale-rules-pte

Writes benchmarks/results/scale_rules_pte_smollm2.json (exports run one at a time, in this order, one run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from handheld.core.fetch.catalog import cached_path, get_pretrained, proxy_dir
from handheld.measure.host import host_info

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "scale_rules_pte_smollm2.json"
TEXTS = {"test.txt": proxy_dir() / "test.txt", "GPL-3": Path("/usr/share/common-licenses/GPL-3")}
PROGRAMS = {"8da4w/absmax": ["--scale-rule", "absmax"], "8da4w/weighted": [],
            "8da4w-gptq/weighted": ["--calib", str(proxy_dir() / "calib.txt")]}


def export(gguf: Path, flags: list[str], out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["handheld", "export", "--checkpoint", str(gguf), "--scheme", "8da4w", *flags, "--full-logits",
                    "--max-seq-len", "256", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def perplexity(pte: Path, gguf: Path, text: Path) -> float:
    done = subprocess.run(["handheld", "eval", str(pte), "--text", str(text), "--tokenizer", str(gguf),
                           "--max-tokens", "4096", "--context", "256", "--stride", "128", "--json"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale-rules-pte"))
    parser.add_argument("--rows", nargs="+", default=list(PROGRAMS), help="programs to (re)make; others are kept")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    gguf = cached_path(get_pretrained("smollm2-135m-instruct"))
    report = {"producer": "benchmarks/quality/scale_rules_pte.py", "command": " ".join(sys.argv), "host": host_info(),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=ROOT).stdout.strip(),
              "rows": json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else {}}
    for name in args.rows:
        flags = PROGRAMS[name]
        pte = args.work / (name.replace("/", "-") + ".pte")
        seconds = export(gguf, flags, pte)
        row = {"commit": report["commit"], "flags": flags, "export_seconds": seconds, "file_bytes": pte.stat().st_size,
               "perplexity": {label: perplexity(pte, gguf, path) for label, path in TEXTS.items()}}
        report["rows"][name] = row
        print(f"{name:22s} export {seconds:5.0f} s  " + "  ".join(f"{t} {p:.3f}" for t, p in row["perplexity"].items()),
              flush=True)
        RESULTS.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
