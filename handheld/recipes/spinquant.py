"""`handheld spinquant`: learn R1/R2 on calibration text, then quantize the rotated weights (RTN or GPTQ)
into Meta's pre-quantized SpinQuant layout, which `handheld export` reads.

Pipeline: float checkpoint -> fold norms, untie -> fold R4 -> learn R1, R2 (Cayley SGD on the
fake-quantized loss; resumable; data-parallel under torchrun) -> merge them -> RTN or GPTQ -> write.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from handheld.distributed import Group
from handheld.errors import HandheldError

WEIGHT_QUANT = ("rtn", "gptq")


@dataclass(frozen=True)
class SpinQuantOptions:
    checkpoint: Path
    calib: Path
    output: Path
    steps: int = 100
    lr: float = 1.5
    seq_len: int = 256
    samples: int | None = 128
    batch_size: int = 4
    weight_quant: str = "rtn"
    group_size: int = 32
    seed: int = 0
    resume: bool = False
    save_every: int = 10
    tokenizer: Path | None = None

    def __post_init__(self) -> None:
        if self.weight_quant not in WEIGHT_QUANT:
            raise HandheldError(f"unknown --weight-quant {self.weight_quant!r}; known: {', '.join(WEIGHT_QUANT)}")
        if self.steps < 0 or self.batch_size < 1 or self.seq_len < 2 or self.save_every < 1:
            raise HandheldError("--steps must be >= 0, --batch-size >= 1, --seq-len >= 2, --save-every >= 1")


@dataclass(frozen=True)
class SpinQuantResult:
    first_loss: float | None
    last_loss: float | None
    steps: int
    learn_seconds: float
    quantize_seconds: float


def run_spinquant(options: SpinQuantOptions, group: Group, progress: bool = True) -> SpinQuantResult:
    from handheld.checkpoints import read_checkpoint
    from handheld.quant.spinquant import check_rotatable

    checkpoint = read_checkpoint(options.checkpoint)
    if checkpoint.args.prequantized:
        raise HandheldError(f"{options.checkpoint} is already quantized (its params.json has quantization_args); "
                            "SpinQuant needs the float checkpoint")
    check_rotatable(checkpoint.args)
    sequences = _calibration(options, checkpoint)
    base = _rotation_ready_model(checkpoint, options)

    start = time.perf_counter()
    rotations, losses = _learn(base, sequences, options, group, progress)
    learn_seconds = time.perf_counter() - start

    from handheld.quant.spinquant import apply_rotations

    start = time.perf_counter()
    quantized = _quantize(apply_rotations(base, rotations), sequences, options, group)
    if group.is_main:
        _write(quantized, checkpoint, options)
    group.barrier()
    return SpinQuantResult(losses[0] if losses else None, losses[-1] if losses else None, options.steps,
                           learn_seconds, time.perf_counter() - start)


def _calibration(options: SpinQuantOptions, checkpoint) -> torch.Tensor:
    from handheld.calibration import choose_samples, text_sequences
    from handheld.tokenizer import Tokenizer

    tokenizer_path = options.tokenizer or checkpoint.tokenizer_path
    if tokenizer_path is None:
        raise HandheldError(f"{options.checkpoint} has no tokenizer.model: pass --tokenizer")
    sequences = text_sequences(options.calib, Tokenizer(tokenizer_path), options.seq_len)
    if int(sequences.max()) >= checkpoint.args.vocab_size:
        raise HandheldError(f"the tokenizer produces ids up to {int(sequences.max())}, beyond the model's vocabulary")
    return choose_samples(sequences, options.samples, options.seed)


def _rotation_ready_model(checkpoint, options: SpinQuantOptions) -> nn.Module:
    """The float model with norms folded, classifier untied and R4 folded: what R1/R2 act on."""
    from handheld.checkpoints import build_model
    from handheld.quant.mobile_8da4w import check_group_size
    from handheld.quant.spinquant import fold_norms
    from handheld.quant.spinquant_r4 import fold_r4

    model = build_model(checkpoint, max_seq_len=options.seq_len, full_logits=True).float()
    check_group_size(model, options.group_size)
    return fold_r4(fold_norms(model)).eval()


def _learn(base: nn.Module, sequences: torch.Tensor, options: SpinQuantOptions, group: Group,
           progress: bool) -> tuple["Rotations", list[float]]:
    from handheld.calibration import batch_at
    from handheld.quant.fake_quant import prepare_fake_quant
    from handheld.quant.spinquant import Rotations, initial_rotations
    from handheld.quant.spinquant_learn import LearnState, learn_rotations
    from handheld.quant.spinquant import rotatable_state
    from handheld.recipes.resume import discard_state, fingerprint, save_state, start_or_resume, weights_digest

    run_identity = fingerprint(weights=weights_digest(rotatable_state(base)), sequences=sequences, lr=options.lr, seed=options.seed,
                         batch_size=options.batch_size, group_size=options.group_size)
    saved = start_or_resume(options.output, options.resume, run_identity)
    if saved is None:
        state = LearnState(0, initial_rotations(base.args, options.seed))
        losses: list[float] = []
    else:
        state = LearnState(int(saved["step"]), Rotations(saved["r1"], saved["r2"]))
        losses = list(saved["losses"])

    bar = _progress_bar(options.steps, state.step, progress and group.is_main)

    def on_step(new_state: LearnState, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if group.is_main and (new_state.step % options.save_every == 0 or new_state.step == options.steps):
            save_state(options.output, {"fingerprint": run_identity, "step": new_state.step, "r1": new_state.rotations.r1,
                                        "r2": new_state.rotations.r2, "losses": losses})

    fake_quant_model = prepare_fake_quant(copy.deepcopy(base), options.group_size)
    state = learn_rotations(fake_quant_model, state, options.steps, options.lr,
                            lambda step: batch_at(sequences, step, options.batch_size, options.seed), group, on_step)
    bar.close()
    group.barrier()
    if group.is_main:
        discard_state(options.output)
    return state.rotations, losses


def _progress_bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="learning R1/R2", unit="step", disable=not enabled)


def _quantize(rotated: nn.Module, sequences: torch.Tensor, options: SpinQuantOptions, group: Group) -> nn.Module:
    """8da4w of the rotated model; with GPTQ, the 4-bit block linears' integers and scales replaced."""
    from handheld.quant.mobile_8da4w import block_linears, quantize_8da4w

    hessians = _collect_hessians(rotated, sequences, options, group) if options.weight_quant == "gptq" else None
    gptq_results = {}
    if hessians is not None:
        from handheld.quant.gptq import gptq_quantize

        linears = block_linears(rotated)
        for name in _progress_items(linears, "GPTQ", group.is_main):
            gptq_results[name] = gptq_quantize(linears[name].weight.detach(), hessians[name], options.group_size)
    quantized = quantize_8da4w(rotated, group_size=options.group_size)
    with torch.no_grad():
        for name, (values, scales) in gptq_results.items():
            weight = quantized.get_submodule(name).weight
            weight.qdata.copy_(values)
            weight.scale.copy_(scales.reshape(weight.scale.shape))
    return quantized


def _progress_items(items: dict, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(list(items), desc=desc, unit="linear", disable=not enabled)


def _collect_hessians(model: nn.Module, sequences: torch.Tensor, options: SpinQuantOptions,
                      group: Group) -> dict[str, torch.Tensor]:
    """GPTQ's calibration pass: X^T X of every block linear's input in the rotated float model."""
    from handheld.quant.gptq import HessianCollector
    from handheld.quant.mobile_8da4w import block_linears

    collector = HessianCollector(block_linears(model))
    mine = sequences[group.rank :: group.world]
    with torch.no_grad():
        for start in range(0, mine.shape[0], options.batch_size):
            model.forward_batch(mine[start : start + options.batch_size])
    collector.close()
    return {name: group.sum_(h) for name, h in collector.hessians.items()}


def _write(quantized: nn.Module, checkpoint, options: SpinQuantOptions) -> None:
    from handheld.atomic import atomic_dir
    from handheld.checkpoints import TOKENIZER
    from handheld.checkpoints.prequantized import write_prequantized
    from handheld.config import QuantizationArgs

    args = dataclasses.replace(checkpoint.args, quantization_args=QuantizationArgs(group_size=options.group_size, spinquant=True))
    tokenizer = options.tokenizer or checkpoint.tokenizer_path
    with atomic_dir(options.output) as tmp:
        write_prequantized(tmp, args, quantized)
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
