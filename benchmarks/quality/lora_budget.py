"""At which budget does QAT+LoRA's LoRA phase measurably recover quality on SmolLM2? A sweep of the adapters'
learning rate and steps after one fixed QAT phase.

Each configuration runs `handheld qat --phase both` (the same QAT phase: same seed, steps, data and learning
rate, so the same backbone) and scores the result with and without its adapters (B zeroed: exactly the
backbone after QAT, since LoRA freezes it), on the recipe benchmark's tokens, context and stride. Training
reads the proxy's calib.txt, scoring its test.txt (held out by file).

    python benchmarks/quality/lora_budget.py --work /tmp/lora_budget [--lr 1e-3 4e-3 1.6e-2] [--lora-steps 10 30]

Writes benchmarks/results/lora_budget_smollm2.json (rows appended as they finish; a rerun skips finished rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "lora_budget_smollm2.json"
QAT_STEPS, QAT_LR, BATCH, SEQ_LEN = 10, 2e-4, 4, 128  # the recipe benchmark's QAT phase


def train(model: Path, data: Path, out: Path, seed: int, lora_lr: float, lora_steps: int) -> list:
    from handheld.training.distributed import Group
    from handheld.training.options import QatOptions, TrainConfig
    from handheld.training.qat import run_qat

    config = TrainConfig(steps=QAT_STEPS, lr=QAT_LR, batch_size=BATCH, warmup=1, eval_every=10**6,
                         save_every=10**6, seed=seed)
    options = QatOptions(checkpoint=model, data=data, output=out, phase="both", train=config, lora_lr=lora_lr,
                         lora_steps=lora_steps, seq_len=SEQ_LEN)
    return run_qat(options, Group(), progress=False)


def backbone_digest(checkpoint: Path) -> str:
    """Every tensor but the adapters: equal digests mean the same QAT backbone."""
    state = torch.load(checkpoint / "consolidated.00.pth", weights_only=True)
    digest = hashlib.sha256()
    for name in sorted(k for k in state if ".adaptor." not in k):
        digest.update(name.encode())
        digest.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    sys.path.insert(0, str(HERE))
    from recipes_smollm2 import CONTEXT, EVAL_TOKENS, STRIDE, Row, adapter_update_ratio, perplexities, smollm2, without_adapters

    from handheld.core.checkpoints import read_checkpoint
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.export.provenance import export_provenance
    from handheld.measure.host import host_info

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 4e-3, 1.6e-2])
    parser.add_argument("--lora-steps", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, calib, test = smollm2()
    test_ids = load_tokenizer(model).encode(test.read_text(encoding="utf-8"), bos=False)[:EVAL_TOKENS]
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    report.update({"script": "benchmarks/quality/lora_budget.py", "arguments": sys.argv[1:], "model": model.name,
                   "eval_text": "handheld/proxy/test.txt", "train_text": "handheld/proxy/calib.txt",
                   "eval_tokens": len(test_ids), "context": CONTEXT, "stride": STRIDE,
                   "qat_phase": {"steps": QAT_STEPS, "lr": QAT_LR, "batch": BATCH, "seq_len": SEQ_LEN},
                   "host": host_info(), "torch_threads": torch.get_num_threads()})

    def score(checkpoint: Path) -> float:
        return perplexities(Row("qat-lora", args.seed, checkpoint), calib, {"test.txt": test_ids})["test.txt"]

    done = {(r["seed"], r["lora_lr"], r["lora_steps"]) for r in report["rows"]}
    without: dict[str, float] = {r["backbone"]: r["without_adapters"] for r in report["rows"]}
    for steps in args.lora_steps:
        for lr in args.lr:
            if (args.seed, lr, steps) in done:
                continue
            out = args.work / f"seed{args.seed}_lr{lr:g}_steps{steps}"
            started = time.perf_counter()
            phases = train(model, calib, out, args.seed, lr, steps) if not out.exists() else []
            seconds = time.perf_counter() - started
            backbone = backbone_digest(out)
            if backbone not in without:
                without_adapters(out)
                without[backbone] = score(out.with_name(out.name + "_off"))
            lora = read_checkpoint(out).args.lora_args
            row = {"seed": args.seed, "lora_lr": lr, "lora_steps": steps, "backbone": backbone,
                   "with_adapters": score(out), "without_adapters": without[backbone],
                   "median_update_ratio": adapter_update_ratio(out, lora.scale), "train_seconds": seconds,
                   "phases": [{"phase": p.phase, "steps": p.steps, "first_loss": p.first_loss, "last_loss": p.last_loss}
                              for p in phases], **{k: export_provenance()[k] for k in ("commit", "dirty")}}
            row["lora_gain"] = row["without_adapters"] - row["with_adapters"]
            print(json.dumps(row), flush=True)
            report["rows"].append(row)
            _write(report)


def _write(report: dict) -> None:
    from handheld.core.atomic import atomic_path

    with atomic_path(RESULTS) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
