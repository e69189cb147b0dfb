"""`handheld qat`: Meta's QAT+LoRA recipe for the Llama 3.2 QLoRA models, done faithfully.

Phases (`--phase`):
- `qat`: full fine-tuning under fake quantization of the exact 8da4w scheme (4-bit g32 linears with 8-bit
  per-token activations, 8-bit classifier and embedding; the 4-bit scales by `--scale-rule`, as export's);
- `lora`: the backbone frozen (still fake-quantized) and LoRA adapters trained on every block linear,
  unquantized;
- `both`: `qat`, then `lora` on its result (Meta's recipe); `--lora-steps` sets the lora phase's length;
- `float`: the same fine-tuning without quantization, the baseline; `both` trains `steps` twice (QAT, then
  LoRA), so a fair float baseline runs twice the steps on the same data.
Then convert: the backbone to the real quantized scheme with the adapters unmerged, written in Meta's
pre-quantized QLoRA layout (`quantization_args` and `lora_args` in params.json); `float` writes a float
checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from handheld.core.atomic import atomic_dir
from handheld.core.checkpoints import TOKENIZER, Checkpoint, build_model, read_checkpoint, write_checkpoint
from handheld.core.llama.config import LoraArgs, QuantizationArgs
from handheld.core.errors import HandheldError
from handheld.export.memory_check import check_memory, checkpoint_parameters
from handheld.quant.fake_quant import prepare_fake_quant, trained_int_weights
from handheld.quant.linears import untie_embedding
from handheld.quant.lora import add_lora, freeze_all_but_adapters
from handheld.quant.prequantized import quantized_model
from handheld.quant.calibration import choose_samples
from handheld.training.common import (check_ids_fit, job_tokenizer, job_tokenizer_path, progress_bar, require_float,
                                      write_quantized_output)
from handheld.training.distributed import Group
from handheld.training.finetune_data import load_examples
from handheld.training.loop import TrainState, make_optimizer, train
from handheld.training.options import PHASES, VALIDATION_FRACTION, QatOptions
from handheld.training.resume import discard_state, fingerprint, save_state, start_or_resume, weights_digest

@dataclass(frozen=True)
class PhaseResult:
    phase: str
    steps: int
    first_loss: float
    last_loss: float
    validation: list[tuple[int, float]]
    tokens_per_s: float


def run_qat(options: QatOptions, group: Group, progress: bool = True) -> list[PhaseResult]:
    checkpoint = read_checkpoint(options.checkpoint)
    require_float(checkpoint, "QAT")
    check_memory(f"qat of {options.checkpoint}", checkpoint_parameters(checkpoint), "training", options.skip_memory_check)
    train_set, val_set = _datasets(options, checkpoint)
    run_identity = fingerprint(weights=weights_digest(checkpoint.state), tokens=train_set.tokens, mask=train_set.mask,
                         options=dataclasses.asdict(dataclasses.replace(options, resume=False, output=Path("-"),
                                                                          skip_memory_check=False)))
    saved = start_or_resume(options.output, options.resume, run_identity)
    model = _float_model(checkpoint, options)
    phases = PHASES[options.phase]
    first = phases.index(saved["phase"]) if saved is not None else 0
    results = []
    for i, phase in enumerate(phases):
        model = _prepare(model, phase, options).to(group.device)  # new adapters start on the CPU
        if i < first:
            continue  # trained before the interruption: its weights are in the saved state
        results.append(_train_phase(model, phase, train_set, val_set, options, group, run_identity,
                                    saved if i == first else None, progress))
    if group.is_main:
        _write(model, checkpoint, options)
        discard_state(options.output)
    group.barrier()
    return results


def _datasets(options: QatOptions, checkpoint: Checkpoint):
    examples = load_examples(options.data, job_tokenizer(options.tokenizer, checkpoint), options.seq_len)
    check_ids_fit(examples.tokens, checkpoint.args)
    if len(examples) < 2:
        raise HandheldError(f"{options.data} yields {len(examples)} sequence(s) of {options.seq_len} tokens; "
                            "training and validation need at least 2")
    order = choose_samples(torch.arange(len(examples)), None, options.train.seed)
    n_val = max(1, int(len(examples) * VALIDATION_FRACTION))
    return examples.rows(order[n_val:]), examples.rows(order[:n_val])


def _float_model(checkpoint: Checkpoint, options: QatOptions) -> nn.Module:
    return untie_embedding(build_model(checkpoint, max_seq_len=options.seq_len, full_logits=True).float())


def _prepare(model: nn.Module, phase: str, options: QatOptions) -> nn.Module:
    """The structure a phase trains: fake quantization for qat and lora (once), adapters for lora."""
    if phase in ("qat", "lora") and not _is_fake_quantized(model):
        model = prepare_fake_quant(model, options.group_size, options.scale_rule)
    if phase == "lora":
        model = add_lora(model, options.lora_rank, options.lora_alpha / options.lora_rank, seed=options.train.seed)
    return model


def _is_fake_quantized(model: nn.Module) -> bool:
    return any(hasattr(m, "weight_fake_quantizer") for m in model.modules())


def _train_phase(model, phase, train_set, val_set, options, group, run_identity, saved, progress) -> PhaseResult:
    if phase == "lora":
        params = freeze_all_but_adapters(model)
        config = dataclasses.replace(options.train, lr=options.lora_lr, steps=options.lora_steps_or_default)
    else:
        params = list(model.parameters())
        for param in params:
            param.requires_grad_(True)
        config = options.train
    optimizer = make_optimizer(params, config)
    state = TrainState()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(int(saved["step"]), list(saved["losses"]), [tuple(v) for v in saved["validation"]])

    def save(s: TrainState) -> None:
        if group.is_main:
            save_state(options.output, {"fingerprint": run_identity, "phase": phase, "step": s.step, "model": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "losses": s.losses, "validation": s.validation})

    bar = progress_bar(config.steps, f"{phase} fine-tuning", progress and group.is_main, done=state.step)

    def show(s: TrainState) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{s.losses[-1]:.4f}", val=f"{s.validation[-1][1]:.4f}" if s.validation else "-",
                        tok_s=f"{s.tokens_per_s:.0f}")

    state = train(model, optimizer, train_set, val_set, config, group, state, save, show)
    save(state)  # before the next risky step (the next phase, or converting and writing): a crash there keeps this phase
    bar.close()
    return PhaseResult(phase, state.step, state.losses[0], state.losses[-1], state.validation, state.tokens_per_s)


def _quantized_args(checkpoint: Checkpoint, options: QatOptions):
    lora = None
    if "lora" in PHASES[options.phase]:
        lora = LoraArgs(options.lora_rank, options.lora_alpha / options.lora_rank)
    return dataclasses.replace(checkpoint.args, quantization_args=QuantizationArgs(group_size=options.group_size),
                               lora_args=lora)


def convert(model: nn.Module, args) -> nn.Module:
    """The trained model with its backbone really quantized (same configs and scales as the fake quantization,
    so the same integers) and any adapters kept unmerged beside it."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return quantized_model(args, state, max_seq_len=model.max_seq_len, full_logits=model.full_logits,
                           int_weights=trained_int_weights(model))


def _write(model: nn.Module, checkpoint: Checkpoint, options: QatOptions) -> None:
    tokenizer = job_tokenizer_path(options.tokenizer, checkpoint)
    if options.phase != "float":
        args = _quantized_args(checkpoint, options)
        write_quantized_output(options.output, args, convert(model, args), tokenizer)
        return
    with atomic_dir(options.output) as tmp:
        write_checkpoint(tmp, checkpoint.args, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, "meta")
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
