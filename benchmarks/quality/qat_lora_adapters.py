"""What the LoRA phase of QAT+LoRA adds on SmolLM2: each recipe-benchmark QAT+LoRA checkpoint scored with and
without its adapters (the backbone is frozen during LoRA, so "without" is exactly the model after the QAT
phase), and how large the adapters' updates are against the weights they adjust.

    python benchmarks/quality/qat_lora_adapters.py --work /tmp/recipes     # after recipes_smollm2.py

Writes benchmarks/results/qat_lora_adapters_smollm2.json. Same evaluation tokens, context and stride as the
recipe benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "qat_lora_adapters_smollm2.json"


def without_adapters(checkpoint: Path, out: Path) -> Path:
    """The same checkpoint with every adapter's B zeroed: the adapters then add nothing."""
    import shutil

    if not out.exists():
        shutil.copytree(checkpoint, out)
        state = torch.load(checkpoint / "consolidated.00.pth", weights_only=True)
        state = {k: torch.zeros_like(v) if k.endswith(".adaptor.B.weight") else v for k, v in state.items()}
        torch.save(state, out / "consolidated.00.pth")
    return out


def adapter_update_ratio(checkpoint: Path, scale: float) -> float:
    """Median over linears of ||scale * B @ A|| / ||dequantized W||: how far LoRA moved each linear."""
    state = torch.load(checkpoint / "consolidated.00.pth", weights_only=True)
    ratios = []
    for name in (k[: -len(".adaptor.A.weight")] for k in state if k.endswith(".adaptor.A.weight")):
        update = scale * state[f"{name}.adaptor.B.weight"].float() @ state[f"{name}.adaptor.A.weight"].float()
        weight = state[f"{name}.weight"].float()
        scales = state[f"{name}.scales"].float().repeat_interleave(weight.shape[1] // state[f"{name}.scales"].shape[1], 1)
        ratios.append(float(update.norm() / (weight * scales).norm()))
    return float(torch.tensor(ratios).median())


def main() -> None:
    sys.path.insert(0, str(HERE))
    from recipes_smollm2 import EVAL_TOKENS, perplexity, smollm2

    from handheld.core.checkpoints import read_checkpoint
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, nargs="+", required=True, help="the recipe benchmark's work folder(s)")
    args = parser.parse_args()
    model, _, test = smollm2()
    test_ids = load_tokenizer(model).encode(test.read_text(encoding="utf-8"), bos=False)[:EVAL_TOKENS]
    rows = []
    for checkpoint in sorted(c for work in args.work for c in work.glob("qat_lora_[0-9]")):
        seed = int(checkpoint.name.rsplit("_", 1)[1])
        lora = read_checkpoint(checkpoint).args.lora_args
        row = {"seed": seed, "with_adapters": perplexity(checkpoint, None, test_ids),
               "without_adapters": perplexity(without_adapters(checkpoint, checkpoint.with_name(f"{checkpoint.name}_no_adapters")),
                                              None, test_ids),
               "lora_rank": lora.rank, "lora_scale": lora.scale,
               "median_update_ratio": adapter_update_ratio(checkpoint, lora.scale)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    RESULTS.write_text(json.dumps({"model": model.name, "eval_tokens": len(test_ids), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
