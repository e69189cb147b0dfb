"""`handheld spinquant`: learn R1/R2 on calibration text, then quantize the rotated weights (RTN or GPTQ)
into Meta's pre-quantized SpinQuant layout, which `handheld export` reads.

Pipeline: float checkpoint -> fold norms, untie -> fold R4 -> learn R1, R2 (Cayley SGD on the
fake-quantized loss; resumable; data-parallel under torchrun) -> merge them -> RTN or GPTQ -> write.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import nn

from handheld.core.checkpoints import Checkpoint, build_model, read_checkpoint
from handheld.export.memory_check import check_memory, checkpoint_parameters
from handheld.core.llama.config import QuantizationArgs
from handheld.core.defaults import SCALE_RULE
from handheld.quant.fake_quant import prepare_activation_fake_quant, prepare_fake_quant
from handheld.quant.gptq import sequential_gptq
from handheld.quant.linears import check_group_size
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.spinquant import (Rotations, apply_rotations, check_rotatable, fold_norms, initial_rotations,
                                      massive_channels, rotatable_state)
from handheld.quant.spinquant_r4 import fold_r4, unfold_r4
from handheld.quant.calibration import choose_samples, text_sequences
from handheld.training.batches import batch_at
from handheld.training.cayley import LearnState, learn_rotations
from handheld.training.common import (check_ids_fit, job_tokenizer, job_tokenizer_path, progress_bar, require_float,
                                      write_float_output, write_quantized_output)
from handheld.training.distributed import Group
from handheld.training.options import SpinQuantOptions
from handheld.training.resume import discard_state, fingerprint, save_state, start_or_resume, weights_digest

MASSIVE_ROWS = 8  # calibration rows the massive channels are found on (they show on nearly every token)


@dataclass(frozen=True)
class SpinQuantResult:
    first_loss: float | None
    last_loss: float | None
    steps: int
    learn_seconds: float
    quantize_seconds: float


def run_spinquant(options: SpinQuantOptions, group: Group, progress: bool = True) -> SpinQuantResult:
    checkpoint = read_checkpoint(options.checkpoint)
    check_memory(f"spinquant of {options.checkpoint}", checkpoint_parameters(checkpoint), "training",
                 options.skip_memory_check)
    require_float(checkpoint, "SpinQuant")
    if options.rotations:
        check_rotatable(checkpoint.args)
    sequences = _calibration(options, checkpoint).to(group.device)

    start = time.perf_counter()
    if options.rotations:
        base, kept = _rotation_ready_model(checkpoint, options, sequences.cpu())  # folded on the CPU (float64 Hadamards)
        rotations, losses = _learn(base.to(group.device), kept, sequences, options, group, progress)
        model = apply_rotations(base, rotations)
    else:
        model, losses = _plain_model(checkpoint, options).to(group.device), []
    learn_seconds = time.perf_counter() - start

    start = time.perf_counter()
    quantized = unfold_r4(model.cpu()) if options.weight_quant == "float" else _quantize(model, sequences, options, group)
    if group.is_main:
        _write(quantized, checkpoint, options)
        discard_state(options.output)  # only now: a crash in GPTQ or the write keeps the learned rotations
    group.barrier()
    return SpinQuantResult(losses[0] if losses else None, losses[-1] if losses else None,
                           options.steps if options.rotations else 0, learn_seconds, time.perf_counter() - start)


def _calibration(options: SpinQuantOptions, checkpoint: Checkpoint) -> torch.Tensor:
    sequences = text_sequences(options.calib, job_tokenizer(options.tokenizer, checkpoint), options.seq_len)
    check_ids_fit(sequences, checkpoint.args)
    return choose_samples(sequences, options.samples, options.seed)


def _rotation_ready_model(checkpoint: Checkpoint, options: SpinQuantOptions,
                          sequences: torch.Tensor) -> tuple[nn.Module, tuple[int, ...]]:
    """The float model with norms folded (but for its massive channels, found on a few calibration rows),
    classifier untied and R4 folded: what R1/R2 act on."""
    model = build_model(checkpoint, max_seq_len=options.seq_len, full_logits=True).float().eval()
    check_group_size(model, options.group_size)
    kept = massive_channels(model, sequences[:MASSIVE_ROWS]) if options.keeps_massive_channels else ()
    return fold_r4(fold_norms(model, kept)).eval(), kept


def _on(rotations: Rotations, device: torch.device) -> Rotations:
    return Rotations(rotations.r1.to(device), rotations.r2.to(device), rotations.kept)


def _plain_model(checkpoint: Checkpoint, options: SpinQuantOptions) -> nn.Module:
    model = build_model(checkpoint, max_seq_len=options.seq_len, full_logits=True).float()
    check_group_size(model, options.group_size)
    return model.eval()


def _learn(base: nn.Module, kept: tuple[int, ...], sequences: torch.Tensor, options: SpinQuantOptions, group: Group,
           progress: bool) -> tuple[Rotations, list[float]]:
    run_identity = fingerprint(weights=weights_digest(rotatable_state(base)), sequences=sequences.cpu(), lr=options.lr, seed=options.seed,
                                 batch_size=options.batch_size, group_size=options.group_size,
                                 weight_quant=options.weight_quant, kept=list(kept))
    saved = start_or_resume(options.output, options.resume, run_identity)
    if saved is None:
        state = LearnState(0, _on(initial_rotations(base.args, options.seed, kept), group.device))
        losses: list[float] = []
    else:
        state = LearnState(int(saved["step"]), _on(Rotations(saved["r1"], saved["r2"], kept), group.device))
        losses = list(saved["losses"])

    bar = progress_bar(options.steps, "learning R1/R2", progress and group.is_main, done=state.step)

    def on_step(new_state: LearnState, loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if group.is_main and (new_state.step % options.save_every == 0 or new_state.step == options.steps):
            save_state(options.output, {"fingerprint": run_identity, "step": new_state.step, "r1": new_state.rotations.r1.cpu(),
                                        "r2": new_state.rotations.r2.cpu(), "losses": losses})

    # The paper's GPTQ variant learns the rotations under activation quantization only: GPTQ then fits the weights.
    if options.weight_quant == "gptq":
        fake_quant_model = prepare_activation_fake_quant(copy.deepcopy(base))
    else:
        fake_quant_model = prepare_fake_quant(copy.deepcopy(base), options.group_size)
    state = learn_rotations(fake_quant_model, state, options.steps, options.lr,
                            lambda step: batch_at(sequences, step, options.batch_size, options.seed), group, on_step)
    bar.close()
    group.barrier()
    return state.rotations, losses


def _quantize(rotated: nn.Module, sequences: torch.Tensor, options: SpinQuantOptions, group: Group) -> nn.Module:
    """8da4w of the rotated model. RTN: torchao's absmax grid, the one the rotations were learned under. GPTQ: the
    calibrated export's own (block by block through the quantized prefix, act order, the default scale rule),
    the block linears' integers and scales replaced by GPTQ's."""
    if options.weight_quant != "gptq":
        return quantize_8da4w(rotated.cpu(), group_size=options.group_size, scale_rule="absmax")
    mine = sequences[group.rank :: group.world]
    gptq_results = sequential_gptq(rotated, mine, options.group_size, options.batch_size, scale_rule=SCALE_RULE,
                                   act_order=True, reduce=group.sum_)
    return quantize_8da4w(rotated.cpu(), group_size=options.group_size, scale_rule=SCALE_RULE,
                          int_weights={name: (v.cpu(), s.cpu()) for name, (v, s) in gptq_results.items()})


def _write(quantized: nn.Module, checkpoint: Checkpoint, options: SpinQuantOptions) -> None:
    if options.weight_quant == "float":  # rotated float weights, for NPU schemes
        return write_float_output(options.output, checkpoint.args, quantized, job_tokenizer_path(options.tokenizer, checkpoint))
    quant = QuantizationArgs(group_size=options.group_size, spinquant=options.rotations)
    args = dataclasses.replace(checkpoint.args, quantization_args=quant)
    write_quantized_output(options.output, args, quantized, job_tokenizer_path(options.tokenizer, checkpoint))
