"""What a recipe's pre-quantized layout costs at decode time over plain 8da4w, on a checkpoint's shape:
SpinQuant's online R4 Hadamard (`--layout spinquant`) or QLoRA's unmerged rank-16 adapters (`--layout qlora`).

Builds two 8da4w programs from one float checkpoint (random weights are fine: speed does not depend
on values): plain, and in the layout. Then runs both alternately in this process on the same synthetic
prompt and prints decode/prefill tok/s for each (medians over --runs after one warm-up round).

    python benchmarks/layout_decode_cost.py --layout spinquant --checkpoint CKPT --work DIR [--baseline-pte PLAIN.pte]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch


LAYOUTS = ("spinquant", "qlora")


def write_layout_checkpoint(checkpoint: Path, out: Path, layout: str) -> None:
    from handheld.core.atomic import atomic_dir
    from handheld.core.checkpoints import load_model, read_checkpoint
    from handheld.quant.prequantized import write_prequantized
    from handheld.core.llama.config import LoraArgs, QuantizationArgs
    from handheld.quant.lora import add_lora
    from handheld.quant.mobile_8da4w import quantize_8da4w
    from handheld.quant.spinquant_r4 import fold_r4

    args = read_checkpoint(checkpoint).args
    model = load_model(checkpoint, max_seq_len=8).float()
    if layout == "spinquant":
        model = quantize_8da4w(fold_r4(model), group_size=32)
        layout_args = dataclasses.replace(args, quantization_args=QuantizationArgs(group_size=32, spinquant=True))
    else:
        model = add_lora(quantize_8da4w(model, group_size=32), rank=16, scale=2.0)  # Meta's released rank and alpha
        layout_args = dataclasses.replace(args, quantization_args=QuantizationArgs(group_size=32), lora_args=LoraArgs(16, 2.0))
    with atomic_dir(out) as tmp:
        write_prequantized(tmp, layout_args, model)


def export(checkpoint: Path, pte: Path, scheme: str | None, max_seq_len: int) -> None:
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    if not pte.exists():
        options = ExportOptions(scheme=scheme, max_seq_len=max_seq_len)
        export_program(checkpoint, pte, options, log=lambda m: print(f"[export {pte.name}] {m}", flush=True))


def measure(ptes: dict[str, Path], prompt_len: int, gen_len: int, runs: int) -> dict:
    from handheld.decoding.generation import generate
    from handheld.runtime_bindings.python.program import PteProgram

    programs = {name: PteProgram(path) for name, path in ptes.items()}
    prompt = [int(t) for t in torch.randint(1000, 100000, (prompt_len,), generator=torch.Generator().manual_seed(0))]
    rows = {name: [] for name in programs}
    for run in range(runs + 1):  # the first round warms up
        for name, program in programs.items():
            _, stats = generate(program, prompt, gen_len, stop_ids=[])
            print(f"run {run} {name}: {stats.line()}", flush=True)
            if run:
                rows[name].append(stats.as_dict())
    return {name: {k: statistics.median(r[k] for r in runs_) for k in ("decode_tok_s", "prefill_tok_s", "ttft_s")}
            for name, runs_ in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", required=True, choices=LAYOUTS)
    parser.add_argument("--checkpoint", type=Path, required=True, help="float checkpoint (e.g. handheld init-random --model llama3.2-1b)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the R4 checkpoint and the programs")
    parser.add_argument("--baseline-pte", type=Path, help="an existing plain 8da4w program of the same checkpoint")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=60)
    parser.add_argument("--max-seq-len", type=int, default=128, help="KV cache length of both programs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    layout_checkpoint = args.work / f"{args.layout}_checkpoint"
    if not layout_checkpoint.exists():
        write_layout_checkpoint(args.checkpoint, layout_checkpoint, args.layout)
    plain = args.baseline_pte or args.work / "8da4w.pte"
    export(args.checkpoint, plain, "8da4w", args.max_seq_len)
    layout_pte = args.work / f"{args.layout}.pte"
    export(layout_checkpoint, layout_pte, None, args.max_seq_len)
    result = measure({"8da4w": plain, args.layout: layout_pte}, args.prompt_len, args.gen_len, args.runs)
    base, other = result["8da4w"]["decode_tok_s"], result[args.layout]["decode_tok_s"]
    result["decode_cost_percent"] = 100 * (base - other) / base
    from handheld.measure.host import run_record

    result["made_by"] = run_record()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
