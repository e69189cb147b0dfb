"""Where 8da4w's quality loss on SmolLM2-135M-Instruct comes from, and what a rotation does to it.

SmolLM2 reaches handheld as a Q4_1 GGUF: every block linear is stored as 4-bit asymmetric groups of 32
along the input, the same grouping as 8da4w's 4-bit weights. This program measures
1. per linear, the relative error ||W - Q(W)|| / ||W|| of symmetric int4 g32 RTN (8da4w's weights) and of
   asymmetric Q4_1-style g32 rounding, on the shipped weights and after SpinQuant's starting rotation
   (random Hadamard R1/R2 plus R4, function-preserving in float);
2. perplexity (eager, on the proxy's held-out test text) with weights only quantized (int4 g32 linears,
   int8 classifier/embedding), activations only (8-bit dynamic per token, 8-bit per-channel weights), and
   both (8da4w), on the plain and the rotated model.

    python benchmarks/quality/rtn_error_sources.py [--max-tokens 2048]

Writes benchmarks/results/rtn_error_sources_smollm2.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import time
from pathlib import Path

import torch
from torch import nn

from handheld.core.fetch.catalog import cached_path, get_pretrained, proxy_dir
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.tokenizers.tokenizer import load_tokenizer
from handheld.measure.host import host_info
from handheld.measure.quality import eager_logits_fn, evaluate
from handheld.quant.linears import CLASSIFIER, block_linears, untie_embedding
from handheld.quant.spinquant import apply_rotations, fold_norms, initial_rotations
from handheld.quant.spinquant_r4 import fold_r4

ROOT = Path(__file__).resolve().parents[2]
GROUP = 32
CONTEXT, STRIDE = 256, 128


def symmetric_int4_error(w: torch.Tensor) -> float:
    groups = w.reshape(-1, GROUP).double()
    scale = groups.abs().amax(1, keepdim=True).clamp_min(1e-12) / 7.5  # torchao's symmetric int4 grid
    q = (groups / scale).round().clamp(-8, 7) * scale
    return float((groups - q).norm() / groups.norm())


def asymmetric_q4_1_error(w: torch.Tensor) -> float:
    groups = w.reshape(-1, GROUP).double()
    low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    scale = ((high - low) / 15).clamp_min(1e-12)
    q = ((groups - low) / scale).round().clamp(0, 15) * scale + low
    return float((groups - q).norm() / groups.norm())


def weight_errors(model: nn.Module) -> dict[str, dict[str, float]]:
    return {name: {"sym_int4": symmetric_int4_error(m.weight.detach()),
                   "q4_1": asymmetric_q4_1_error(m.weight.detach())}
            for name, m in block_linears(model).items()}


def quantized(model: nn.Module, variant: str) -> nn.Module:
    """`variant`: float, weights (int4 g32 + int8 classifier/embedding, float activations), activations
    (8-bit dynamic activations with 8-bit per-channel weights), both (8da4w)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    model = untie_embedding(copy.deepcopy(model))
    if variant == "float":
        return model
    is_block = lambda m, name: isinstance(m, nn.Linear) and name != CLASSIFIER  # noqa: E731
    is_classifier = lambda m, name: name == CLASSIFIER  # noqa: E731
    is_embedding = lambda m, name: isinstance(m, nn.Embedding)  # noqa: E731
    int8_channel = PerAxis(0)
    if variant == "weights":
        configs = [(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(GROUP)), is_block),
                   (IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=int8_channel), is_classifier)]
    elif variant == "activations":
        configs = [(Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=int8_channel),
                    lambda m, name: isinstance(m, nn.Linear))]
    else:
        configs = [(Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP)), is_block),
                   (Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=int8_channel), is_classifier)]
    configs.append((IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=int8_channel), is_embedding))
    for config, selects in configs:
        quantize_(model, config, filter_fn=selects)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gguf_path = cached_path(get_pretrained("smollm2-135m-instruct"))
    checkpoint = read_checkpoint(gguf_path)
    ids = load_tokenizer(gguf_path).encode((proxy_dir() / "test.txt").read_text(encoding="utf-8"), bos=False)
    ids = ids[: args.max_tokens]
    plain = build_model(checkpoint, max_seq_len=CONTEXT, full_logits=True).float().eval()
    rotated = fold_r4(fold_norms(copy.deepcopy(plain)))
    rotated = apply_rotations(rotated, initial_rotations(rotated.args, args.seed)).eval()
    from handheld.measure.host import run_record

    out = {"made_by": run_record(), "model": str(gguf_path.name), "eval_text": "handheld/proxy/test.txt", "tokens": len(ids),
           "context": CONTEXT, "stride": STRIDE, "rotation_seed": args.seed,
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip(),
           "host": host_info(), "python": platform.python_version(), "weight_error": {}, "perplexity": {}}
    for label, model in (("plain", plain), ("rotated", rotated)):
        out["weight_error"][label] = weight_errors(model)
        for variant in ("float", "weights", "activations", "both"):
            started = time.perf_counter()
            ppl = evaluate(eager_logits_fn(quantized(model, variant)), ids, CONTEXT, STRIDE, progress=False).perplexity
            out["perplexity"][f"{label}/{variant}"] = ppl
            print(f"{label:8s} {variant:12s} ppl {ppl:8.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    for label in ("plain", "rotated"):
        errs = out["weight_error"][label].values()
        mean = {k: sum(e[k] for e in errs) / len(errs) for k in ("sym_int4", "q4_1")}
        print(f"{label}: mean relative weight error sym int4 {mean['sym_int4']:.4f}, q4_1-style {mean['q4_1']:.4f}")
        out[f"mean_weight_error_{label}"] = mean
    target = ROOT / "benchmarks" / "results" / "rtn_error_sources_smollm2.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
