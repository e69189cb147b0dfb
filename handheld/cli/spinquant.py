"""`handheld spinquant`: learn SpinQuant rotations and write Meta's pre-quantized SpinQuant checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from handheld.cli._shared import add_job_arguments, optional_path
from handheld.training.options import MASSIVE_CHANNELS, WEIGHT_QUANT, SpinQuantOptions as Defaults

HELP = "learn SpinQuant rotations on calibration text and write Meta's SpinQuant checkpoint"
DESCRIPTION = ("Fold norms, learn R1/R2 by Cayley SGD on the 8da4w fake-quantized loss, fold R4 (online Hadamard), "
               "quantize with RTN or GPTQ, and write Meta's pre-quantized SpinQuant layout. Runs data-parallel under "
               "`torchrun --nproc-per-node N` (gloo, on the CPU).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.add_argument("--calib", required=True, help="plain UTF-8 calibration text")
    p.add_argument("--steps", type=int, default=Defaults.steps, help=f"Cayley SGD steps (default {Defaults.steps}, as the paper)")
    p.add_argument("--lr", type=float, default=Defaults.lr, help=f"Cayley SGD learning rate (default {Defaults.lr}, as the paper)")
    p.add_argument("--seq-len", type=int, default=Defaults.seq_len, help="calibration sequence length in tokens")
    p.add_argument("--samples", type=int, default=Defaults.samples,
                   help=f"calibration sequences drawn from the text (default {Defaults.samples})")
    p.add_argument("--batch-size", type=int, default=Defaults.batch_size, help="sequences per step, over all processes")
    p.add_argument("--weight-quant", default=Defaults.weight_quant,
                   help=f"{', '.join(WEIGHT_QUANT)}: GPTQ runs its own calibration pass; float writes the rotated "
                   "float weights (a float Meta checkpoint) for NPU schemes (`handheld quantize`)")
    p.add_argument("--no-rotations", action="store_true",
                   help="quantize the unrotated model (RTN or GPTQ alone): the baseline that shows what the rotations add")
    p.add_argument("--massive-channels", default=Defaults.massive_channels, choices=MASSIVE_CHANNELS,
                   help="the few residual channels with massive activations (found on --calib): keep (out of R1, their "
                   "norm gains unfolded), rotate (with the rest, the paper's way), auto (default: keep with RTN, "
                   "rotate with GPTQ, what measured best on SmolLM2: BENCHMARKS.md)")
    p.add_argument("--seed", type=int, default=Defaults.seed, help="seeds the initial random Hadamards and the sample order")
    p.add_argument("--save-every", type=int, default=Defaults.save_every, help="save resumable state every N steps")


def run(args: argparse.Namespace) -> None:
    from handheld.training.distributed import process_group
    from handheld.training.spinquant import run_spinquant

    options = Defaults(
        checkpoint=Path(args.checkpoint), calib=Path(args.calib), output=Path(args.output), steps=args.steps, lr=args.lr,
        seq_len=args.seq_len, samples=args.samples, batch_size=args.batch_size, weight_quant=args.weight_quant,
        rotations=not args.no_rotations, massive_channels=args.massive_channels, group_size=args.group_size, seed=args.seed, resume=args.resume, save_every=args.save_every,
        tokenizer=optional_path(args.tokenizer), skip_memory_check=args.skip_memory_check,
    )
    with process_group(args.device) as group:
        result = run_spinquant(options, group)
    if group.is_main:
        losses = f"quantized loss {result.first_loss:.4f} -> {result.last_loss:.4f} | " if result.steps else ""
        kind = "SpinQuant" if options.rotations else "unrotated 8da4w"
        print(f"wrote {kind} checkpoint ({options.weight_quant.upper()}) to {options.output} | {losses}"
              f"learning {result.learn_seconds:.0f} s, quantization {result.quantize_seconds:.0f} s")
