"""`handheld qat`: quantization-aware fine-tuning, then LoRA on the frozen backbone (Meta's QLoRA recipe)."""

from __future__ import annotations

import argparse
from pathlib import Path

from handheld.cli._shared import add_job_arguments, optional_path
from handheld.core.defaults import LORA_ALPHA, LORA_RANK
from handheld.training.options import PHASES, QatOptions, TrainConfig

HELP = "quantization-aware fine-tuning, then LoRA on the frozen QAT backbone (Meta's QLoRA recipe)"
DESCRIPTION = ("Fine-tune under 8da4w fake quantization (phase qat), then train LoRA adapters on the frozen "
               "fake-quantized backbone (phase lora), and write Meta's pre-quantized QLoRA layout with the adapters "
               "unmerged. --phase float fine-tunes without quantization. Data: plain text, or .jsonl chat dialogs "
               '({"messages": [{"role", "content"}, ...]}, loss on assistant tokens). Data-parallel under torchrun.')
_TRAIN = QatOptions.train


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_job_arguments(p)
    p.add_argument("--data", required=True, help="plain UTF-8 text, or .jsonl chat dialogs")
    p.add_argument("--phase", default=QatOptions.phase, help=f"{', '.join(PHASES)} (default {QatOptions.phase}: qat then lora)")
    p.add_argument("--steps", type=int, default=_TRAIN.steps, help=f"optimizer steps per phase (default {_TRAIN.steps})")
    p.add_argument("--lr", type=float, default=_TRAIN.lr, help="peak learning rate of full fine-tuning (qat, float)")
    p.add_argument("--scale-rule", default=QatOptions.scale_rule, help="how the 4-bit groups' scales are chosen, "
                   "as `handheld export --scale-rule`: fixed from the starting weights (weighted, the default; extreme), "
                   "or absmax (torchao's, recomputed every step)")
    p.add_argument("--lora-steps", type=int, default=None, help="optimizer steps of the lora phase (default: --steps)")
    p.add_argument("--lora-lr", type=float, default=QatOptions.lora_lr, help="peak learning rate of the adapters (lora)")
    p.add_argument("--warmup", type=int, default=_TRAIN.warmup, help="linear warm-up steps before the cosine decay")
    p.add_argument("--batch-size", type=int, default=_TRAIN.batch_size, help="sequences per micro-batch, over all processes")
    p.add_argument("--grad-accum", type=int, default=_TRAIN.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, default=QatOptions.seq_len, help="tokens per sequence")
    p.add_argument("--lora-rank", type=int, default=LORA_RANK, help=f"adapter rank (Meta's files: {LORA_RANK})")
    p.add_argument("--lora-alpha", type=float, default=LORA_ALPHA,
                   help=f"adapter alpha; scale = alpha / rank (Meta's: {LORA_ALPHA:g})")
    p.add_argument("--eval-every", type=int, default=_TRAIN.eval_every, help="validation loss every N steps (5%% held out)")
    p.add_argument("--save-every", type=int, default=_TRAIN.save_every, help="save resumable state every N steps")
    p.add_argument("--seed", type=int, default=_TRAIN.seed, help="seeds the data order and the validation split")


def run(args: argparse.Namespace) -> None:
    from handheld.core.checkpoints.prequantized import executorch_loader_notes
    from handheld.core.llama.config import read_params_json
    from handheld.training.distributed import process_group
    from handheld.training.qat import run_qat

    train = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                        warmup=args.warmup, eval_every=args.eval_every, save_every=args.save_every, seed=args.seed)
    options = QatOptions(
        checkpoint=Path(args.checkpoint), data=Path(args.data), output=Path(args.output), phase=args.phase, train=train,
        lora_lr=args.lora_lr, lora_steps=args.lora_steps, scale_rule=args.scale_rule, seq_len=args.seq_len, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        group_size=args.group_size, resume=args.resume, tokenizer=optional_path(args.tokenizer),
        skip_memory_check=args.skip_memory_check,
    )
    with process_group(args.device) as group:
        results = run_qat(options, group)
    if group.is_main:
        for r in results:
            val = f", validation {r.validation[-1][1]:.4f}" if r.validation else ""
            print(f"{r.phase}: {r.steps} steps, loss {r.first_loss:.4f} -> {r.last_loss:.4f}{val}, {r.tokens_per_s:.0f} tok/s")
        print(f"wrote {options.phase} checkpoint to {options.output}")
        for note in executorch_loader_notes(read_params_json(options.output / "params.json")):
            print(note)
