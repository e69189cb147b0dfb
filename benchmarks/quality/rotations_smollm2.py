"""Why rotations hurt SmolLM2's 8da4w, and what fixes it (issue 28, item 1): every row through the product's code.

Rows, per checkpoint (the shipped GGUF, on a Q4_1 grid, and the off-grid float fine-tune benchmarks/quality/table.py
uses), scored in eager PyTorch on the exact quantized model `handheld export` lowers:
- `float`; `rtn` (the data-free default, `handheld export --scheme 8da4w`); `rtn absmax` (torchao's scales, the
  grid SpinQuant's RTN learns under); `calibrated` (`--calib`: GPTQ, act order, on calib.txt);
- `folded norms, rtn absmax`: no rotation, only the norm gains folded into the linears (what every rotation needs
  first), to separate the fold from the rotation;
- `quarot-*`: `handheld spinquant --steps 0` (QuaRot: random R1/R2 and the Hadamard R4, nothing learned), with
  `--massive-channels rotate` (the paper's way: R1 over every channel) or `keep` (the massive channels found
  on --calib keep their gains and are not rotated), RTN or GPTQ;
- `spinquant-*`: the same with `--steps` of Cayley SGD (learned R1/R2).
GPTQ reads as many calibration tokens in every row (64 windows of 256 from calib.txt, held out from both texts).

Texts and windows: the quality table's (test.txt and GPL-3, first 4,096 tokens, context 256, stride 128, no BOS).

    python benchmarks/quality/rotations_smollm2.py [--work /tmp/quality-work] [--checkpoints shipped finetuned]
                                                   [--seeds 0] [--steps 24]

Rows are merged into benchmarks/results/rotations_smollm2.json as they finish, each with its commit (a rerun skips
rows already there); rotations_smollm2.md beside it is rendered from that JSON. KL is 0 unless --kl.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "quality"))

from table import CALIB, CONTEXT, TEXTS, TOKENS, Table, commit, scores  # noqa: E402

from handheld.core.fetch.catalog import cached_path, get_pretrained  # noqa: E402
from handheld.core.checkpoints import build_model, read_checkpoint  # noqa: E402
from handheld.core.defaults import GPTQ_CALIB_TOKENS  # noqa: E402
from handheld.core.tokenizers.tokenizer import load_tokenizer  # noqa: E402
from handheld.measure.quality import eager_logits_fn  # noqa: E402
from handheld.quant.mobile_8da4w import quantize_8da4w  # noqa: E402
from handheld.quant.schemes import SchemeOptions, apply_scheme, prepare_model, read_calibration  # noqa: E402
from handheld.quant.spinquant import fold_norms  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rotations_smollm2.json"
SQ_SEQ_LEN, SQ_BATCH, SQ_LR = 256, 4, 1.5
SQ_SAMPLES = GPTQ_CALIB_TOKENS // SQ_SEQ_LEN  # GPTQ sees as many calibration tokens as `--calib` does


def plain_rows() -> dict:
    """Rows made from the float model in this process: name -> (model -> quantized model)."""
    calibrated = SchemeOptions(calib=CALIB)
    return {
        "float": lambda m, tok: m,
        "rtn": lambda m, tok: apply_scheme(m, "8da4w", SchemeOptions()),
        "rtn absmax": lambda m, tok: apply_scheme(m, "8da4w", SchemeOptions(scale_rule="absmax")),
        "folded norms, rtn absmax": lambda m, tok: quantize_8da4w(fold_norms(m), scale_rule="absmax"),
        "calibrated": lambda m, tok: apply_scheme(m, "8da4w", calibrated, read_calibration(calibrated, tok, CONTEXT)),
    }


def rotation_rows(steps: int) -> dict:
    """Rows made by the spinquant job: name -> (steps, weight quantizer, rotate the massive channels)."""
    return {
        "quarot-rtn, every channel rotated": (0, "rtn", True),
        "quarot-rtn": (0, "rtn", False),
        "quarot-gptq, every channel rotated": (0, "gptq", True),
        "quarot-gptq": (0, "gptq", False),
        f"spinquant-rtn ({steps} steps)": (steps, "rtn", False),
        f"spinquant-gptq ({steps} steps), every channel rotated": (steps, "gptq", True),
        f"spinquant-gptq ({steps} steps)": (steps, "gptq", False),
    }


def spinquant_checkpoint(source: Path, out: Path, seed: int, steps: int, weight_quant: str, rotate_massive: bool) -> Path:
    from handheld.training.distributed import Group
    from handheld.training.options import SpinQuantOptions
    from handheld.training.spinquant import run_spinquant

    if not out.exists():
        run_spinquant(SpinQuantOptions(checkpoint=source, calib=CALIB, output=out, steps=steps, lr=SQ_LR,
                                       seq_len=SQ_SEQ_LEN, samples=SQ_SAMPLES, batch_size=SQ_BATCH,
                                       weight_quant=weight_quant, massive_channels="rotate" if rotate_massive else "keep", seed=seed),
                      Group(), progress=False)
    return out


def channel_facts(model: torch.nn.Module, tokenizer) -> dict:
    """The residual channels with the largest share of the normalized stream's energy (on the spinquant job's
    calibration rows, as it measures them), the ones it keeps, and the norms' gains on those."""
    from handheld.quant.calibration import choose_samples, text_sequences
    from handheld.quant.spinquant import channel_energy, channels_over
    from handheld.training.spinquant import MASSIVE_ROWS

    rows = choose_samples(text_sequences(CALIB, tokenizer, SQ_SEQ_LEN), SQ_SAMPLES, 0)[:MASSIVE_ROWS]
    energy = channel_energy(model, rows)
    share = energy / energy.sum()
    top = share.argsort(descending=True)[:8].tolist()
    kept = list(channels_over(energy))  # what the spinquant job keeps
    gains = {str(c): {name: [round(float(getattr(layer, name).weight.detach()[c]), 4) for layer in model.layers]
                      for name in ("attention_norm", "ffn_norm")} for c in kept}
    return {"kept": kept, "energy_share": {str(c): round(float(share[c]), 4) for c in top}, "gains_on_kept": gains}


def run_checkpoint(which: str, path: Path, table: Table, args: argparse.Namespace, tokenizer, texts: dict) -> None:
    base = build_model(read_checkpoint(path), max_seq_len=CONTEXT, full_logits=True).float().eval()
    table.report.setdefault("massive_channels", {})[which] = channel_facts(base, tokenizer)
    reference = eager_logits_fn(base)
    jobs = [(name, 0, lambda make=make: make(copy.deepcopy(base), tokenizer)) for name, make in plain_rows().items()]
    for seed in args.seeds:
        for name, (steps, quantizer, rotate_all) in rotation_rows(args.steps).items():
            out = args.work / f"{which}-{name.replace(' ', '_').replace(',', '')}-seed{seed}"

            def make(steps=steps, quantizer=quantizer, rotate_all=rotate_all, out=out, seed=seed):
                made = spinquant_checkpoint(path, out, seed, steps, quantizer, rotate_all)
                return prepare_model(read_checkpoint(made), None, max_seq_len=CONTEXT, full_logits=True).model
            jobs.append((name, seed, make))
    for name, seed, make in jobs:
        key = f"{which}:{name}:seed {seed}"
        if key in table.report["rows"] or (args.rows and name not in args.rows):
            continue  # each row records its own commit
        started = time.perf_counter()
        model = make().eval()
        built = time.perf_counter() - started
        table.add(key, {"checkpoint": which, "row": name, "seed": seed, "build_seconds": round(built, 1),
                        "scores": scores(eager_logits_fn(model), reference if args.kl and name != "float" else None, texts),
                        "bytes_per_token": 0, "file_bytes": 0})


def render(report: dict) -> str:
    rows = list(report["rows"].values())
    floats = {r["checkpoint"]: r["scores"] for r in rows if r["row"] == "float"}
    texts = list(next(iter(floats.values())))
    head = "| checkpoint | row | seed | " + " | ".join(f"{t} ppl | vs float | KL" for t in texts) + " |"
    lines = [head, "|" + "---|" * (3 + 3 * len(texts))]
    for r in rows:
        cells = []
        for t in texts:
            s, f = r["scores"][t], floats[r["checkpoint"]][t]
            kl = f"{s['mean_kl']:.4f}" if s["mean_kl"] or r["row"] == "float" else "–"  # scored without --kl
            cells += [f"{s['perplexity']:.3f}", f"{100 * (s['perplexity'] / f['perplexity'] - 1):+.1f}%", kl]
        lines.append(f"| {r['checkpoint']} | {r['row']} | {r['seed']} | " + " | ".join(cells) + " |")
    commits = sorted({r["commit"] for r in rows})
    lines.append(f"\nMade by `{report['producer']}` (last run: `{report['command']}`) on {report['host']['cpu']} "
                 f"({report['host']['cores']} cores); rows by commits {', '.join(commits)} (each row's in the JSON). "
                 "KL: – where scored without --kl.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/quality-work"), help="the quality table's: its fine-tune is reused")
    parser.add_argument("--checkpoints", nargs="+", default=["shipped", "finetuned"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=24, help="Cayley SGD steps of the spinquant rows")
    parser.add_argument("--rows", nargs="+", help="only these rows (default: all)")
    parser.add_argument("--kl", action="store_true", help="also KL and top-1 against float (doubles the scoring time)")
    args = parser.parse_args()
    from scale_rules import finetuned_checkpoint

    torch.manual_seed(0)
    args.work.mkdir(parents=True, exist_ok=True)
    gguf = cached_path(get_pretrained("smollm2-135m-instruct"))
    tokenizer = load_tokenizer(gguf)
    texts = {label: tokenizer.encode(p.read_text(encoding="utf-8"), bos=False)[:TOKENS] for label, p in TEXTS.items()}
    table = Table(RESULTS, "python benchmarks/quality/rotations_smollm2.py " + " ".join(sys.argv[1:]))
    table.report["producer"] = "benchmarks/quality/rotations_smollm2.py"
    for which in args.checkpoints:
        path = gguf if which == "shipped" else finetuned_checkpoint(gguf, args.work / "smollm2-finetuned")
        run_checkpoint(which, path, table, args, tokenizer, texts)
    partial = RESULTS.with_suffix(".partial")  # the channel facts, also when no row was added
    partial.write_text(json.dumps(table.report, indent=1) + "\n")
    partial.replace(RESULTS)
    RESULTS.with_suffix(".md").write_text(render(table.report))
    print(f"wrote {RESULTS} and {RESULTS.with_suffix('.md')} (commit {commit()})")


if __name__ == "__main__":
    main()
