"""Which 4-bit scale rule and calibrated export 8da4w should use, on SmolLM2-135M-Instruct in XNNPACK's format.

Rows, in eager PyTorch on the exact model `handheld export` lowers (its `.pte`'s oracle; the parity tests hold
the program to it): `linears-4bit/<rule>` (only the 4-bit block linears rounded, float everything else: the
rule alone), `8da4w/<rule>` (the whole scheme: 8-bit dynamic activations, 8-bit classifier and embedding), and
`8da4w-gptq/<rule>` (`--calib`: GPTQ on the proxy's calib.txt, Debian's Python docs, held out from both texts),
`8da4w-gptq-act/<rule>` (the same with GPTQ's act order: what `--calib` exports).
Columns: perplexity, its increase over float, mean KL(float || row) and top-1 agreement with float.

Texts: the first 4,096 tokens of handheld/proxy/test.txt and of Debian's GPL-3 text, context 256, stride 128,
no BOS: the windows llama.cpp's rows in the issue were scored on.

Two checkpoints: the shipped GGUF, whose weights sit on a Q4_1 grid (asymmetric g32: an artifact that favours
some rules), and `--finetuned` (a short float fine-tune of it on calib.txt, off any 4-bit grid; made with
`handheld qat --phase float` settings below when the directory does not exist yet).

    python benchmarks/quality/scale_rules.py [--finetuned /tmp/smollm2-ft] [--rows 8da4w/weighted ...]

Rows are merged into benchmarks/results/scale_rules_smollm2.json as they finish (a rerun redoes only the rows
asked for); the Markdown table beside it (scale_rules_smollm2.md) is rendered from that JSON, with llama.cpp's
rows from the issue's measurement (PEERS below: llama-cpp-python 0.3.x scoring its own files on the same ids
and windows; not re-run here).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from handheld.core.fetch.catalog import cached_path, get_pretrained, proxy_dir
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.tokenizers.tokenizer import load_tokenizer
from handheld.measure.host import host_info
from handheld.measure.quality import eager_logits_fn, evaluate
from handheld.quant.gptq import dequantized, sequential_gptq
from handheld.quant.linears import block_linears, input_importance
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.scale_rules import SCALE_RULES, quantize_groups
from handheld.quant.schemes import SchemeOptions, apply_scheme, read_calibration

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "scale_rules_smollm2.json"
CONTEXT, STRIDE, TOKENS = 256, 128, 4096
TEXTS = {"test.txt": proxy_dir() / "test.txt", "GPL-3": Path("/usr/share/common-licenses/GPL-3")}
FT_STEPS, FT_LR, FT_BATCH, FT_SEQ = 40, 2e-4, 4, 128
# llama.cpp on the shipped weights (F32 file it wrote from the GGUF), perplexity on test.txt and GPL-3: issue 27.
PEERS = {"llama.cpp Q8_0": (8.279, 22.249), "llama.cpp Q4_0": (10.080, 27.582), "llama.cpp Q4_K_M": (9.075, 23.525)}


def rounded_linears(model: torch.nn.Module, rule: str) -> torch.nn.Module:
    """Float model whose 4-bit block linears hold their rule's dequantized weights."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, linear in block_linears(model).items():
            linear.weight.copy_(dequantized(*quantize_groups(linear.weight, 32, rule, input_importance(model, name))))
    return model


def build_row(name: str, base: torch.nn.Module, tokenizer) -> torch.nn.Module:
    kind, _, rule = name.partition("/")
    if kind == "float":
        return base
    if kind == "linears-4bit":
        return rounded_linears(base, rule)
    options = SchemeOptions(scale_rule=rule, calib=proxy_dir() / "calib.txt" if kind.startswith("8da4w-gptq") else None)
    calibration = read_calibration(options, tokenizer, base.max_seq_len) if options.calib else None
    if kind == "8da4w-gptq":  # GPTQ in column order, the export's before act order
        model = copy.deepcopy(base)
        found = sequential_gptq(model, calibration.sequences, 32, 8, rule, act_order=False)
        return quantize_8da4w(model, 32, 8, rule, found).eval()
    return apply_scheme(copy.deepcopy(base), "8da4w", options, calibration).eval()  # 8da4w-gptq-act: the export's


def score(model: torch.nn.Module, reference: torch.nn.Module, texts: dict[str, list[int]]) -> dict:
    out = {}
    for label, ids in texts.items():
        same = model is reference
        result = evaluate(eager_logits_fn(model), ids, CONTEXT, STRIDE, None if same else eager_logits_fn(reference),
                          progress=False)
        out[label] = {"perplexity": result.perplexity, "mean_kl": result.mean_kl or 0.0,
                      "top1_agreement": 1.0 if same else result.top1_agreement}
    return out


def finetuned_checkpoint(source: Path, target: Path) -> Path:
    """A float fine-tune of the shipped model on calib.txt: its weights leave the Q4_1 grid."""
    if target.exists():
        return target
    from handheld.training.distributed import Group
    from handheld.training.options import QatOptions, TrainConfig
    from handheld.training.qat import run_qat

    train = TrainConfig(steps=FT_STEPS, lr=FT_LR, batch_size=FT_BATCH, warmup=4, eval_every=10**6,
                        save_every=10**6, seed=0)
    run_qat(QatOptions(checkpoint=source, data=proxy_dir() / "calib.txt", output=target, phase="float", train=train,
                       seq_len=FT_SEQ), Group(), progress=False)
    return target


def all_rows() -> list[str]:
    return (["float"] + [f"linears-4bit/{r}" for r in SCALE_RULES] + [f"8da4w/{r}" for r in SCALE_RULES]
            + ["8da4w-gptq/weighted", "8da4w-gptq-act/weighted"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetuned", type=Path, default=Path("/tmp/smollm2-ft"), help="off-grid checkpoint directory")
    parser.add_argument("--checkpoints", nargs="+", default=["shipped", "finetuned"])
    parser.add_argument("--rows", nargs="+", default=all_rows())
    args = parser.parse_args()
    torch.manual_seed(0)
    gguf = cached_path(get_pretrained("smollm2-135m-instruct"))
    tokenizer = load_tokenizer(gguf)
    texts = {label: tokenizer.encode(path.read_text(encoding="utf-8"), bos=False)[:TOKENS] for label, path in TEXTS.items()}
    report = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": {}}
    report.update(producer="benchmarks/quality/scale_rules.py", command=" ".join(sys.argv), host=host_info(),
                  commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=ROOT).stdout.strip(),
                  texts={label: str(path) for label, path in TEXTS.items()}, tokens=TOKENS, context=CONTEXT,
                  stride=STRIDE, finetune={"steps": FT_STEPS, "lr": FT_LR, "batch": FT_BATCH, "seq_len": FT_SEQ,
                                           "data": "handheld/proxy/calib.txt", "phase": "float"})
    for which in args.checkpoints:
        path = gguf if which == "shipped" else finetuned_checkpoint(gguf, args.finetuned)
        base = build_model(read_checkpoint(path), max_seq_len=CONTEXT, full_logits=True).float().eval()
        for row in args.rows:
            started = time.perf_counter()
            model = build_row(row, base, tokenizer)
            built = time.perf_counter() - started
            result = score(model, base, texts)
            report["rows"][f"{which}:{row}"] = {"checkpoint": which, "row": row, "build_seconds": built, **result}
            print(f"{which:9s} {row:22s} " + "  ".join(f"{t} {r['perplexity']:.3f} kl {r['mean_kl']:.4f} "
                  f"top1 {r['top1_agreement']:.3f}" for t, r in result.items()) + f"  (build {built:.0f} s)", flush=True)
            RESULTS.write_text(json.dumps(report, indent=1) + "\n")
            RESULTS.with_suffix(".md").write_text(render(report))


def render(report: dict) -> str:
    """The table, from the results JSON alone."""
    lines = ["| checkpoint | row | test.txt ppl | vs float | KL | top-1 | GPL-3 ppl | vs float | KL | top-1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = report["rows"]
    for key, row in rows.items():
        base = rows.get(f"{row['checkpoint']}:float")
        cells = []
        for text in TEXTS:
            r = row[text]
            increase = f"{r['perplexity'] / base[text]['perplexity'] - 1:+.1%}" if base else ""
            cells += [f"{r['perplexity']:.3f}", increase, f"{r['mean_kl']:.4f}", f"{r['top1_agreement']:.3f}"]
        lines.append(f"| {row['checkpoint']} | {row['row']} | " + " | ".join(cells) + " |")
    base = rows.get("shipped:float")
    for name, ppls in PEERS.items():
        rel = [f"{p / base[t]['perplexity'] - 1:+.1%}" if base else "" for p, t in zip(ppls, TEXTS)]
        lines.append(f"| shipped (issue 27) | {name} | {ppls[0]:.3f} | {rel[0]} | | | {ppls[1]:.3f} | {rel[1]} | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
