"""`handheld qat`: Meta's QAT+LoRA recipe for the Llama 3.2 QLoRA models, done faithfully.

Phases (`--phase`):
- `qat`: full fine-tuning under torchao's fake quantization of the exact 8da4w scheme (4-bit g32
  linears with 8-bit per-token activations, 8-bit classifier and embedding);
- `lora`: the backbone frozen (still fake-quantized) and LoRA adapters trained on every block linear,
  unquantized;
- `both`: `qat`, then `lora` on its result (Meta's recipe);
- `float`: the same fine-tuning without quantization: the fair baseline (same data, same steps).
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

from handheld.distributed import Group
from handheld.errors import HandheldError
from handheld.training import TrainConfig, TrainState

PHASES = {
    "qat": ("qat",),
    "lora": ("lora",),
    "both": ("qat", "lora"),
    "float": ("float",),
}
VALIDATION_FRACTION = 0.05


@dataclass(frozen=True)
class QatOptions:
    checkpoint: Path
    data: Path
    output: Path
    phase: str = "both"
    train: TrainConfig = TrainConfig(steps=100, lr=2e-4)
    lora_lr: float = 1e-3
    seq_len: int = 256
    lora_rank: int = 16
    lora_alpha: float = 32.0
    group_size: int = 32
    resume: bool = False
    tokenizer: Path | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise HandheldError(f"unknown --phase {self.phase!r}; known phases: {', '.join(PHASES)}")
        t = self.train
        if t.steps < 1 or t.batch_size < 1 or t.grad_accum < 1 or self.seq_len < 2:
            raise HandheldError("--steps, --batch-size and --grad-accum must be >= 1 and --seq-len >= 2")


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    steps: int
    first_loss: float
    last_loss: float
    validation: list[tuple[int, float]]
    tokens_per_s: float


def run_qat(options: QatOptions, group: Group, progress: bool = True) -> list[PhaseResult]:
    from handheld.checkpoints import read_checkpoint

    checkpoint = read_checkpoint(options.checkpoint)
    if checkpoint.args.prequantized:
        raise HandheldError(f"{options.checkpoint} is already quantized; QAT starts from a float checkpoint")
    train_set, val_set = _datasets(options, checkpoint)
    from handheld.recipes.resume import discard_state, fingerprint, start_or_resume, weights_digest

    run_identity = fingerprint(weights=weights_digest(checkpoint.state), tokens=train_set.tokens, mask=train_set.mask,
                         options=dataclasses.asdict(dataclasses.replace(options, resume=False, output=Path("-"))))
    saved = start_or_resume(options.output, options.resume, run_identity)
    model = _float_model(checkpoint, options)
    phases = PHASES[options.phase]
    first = phases.index(saved["phase"]) if saved is not None else 0
    results = []
    for i, phase in enumerate(phases):
        model = _prepare(model, phase, options)
        if i < first:
            continue  # trained before the interruption: its weights are in the saved state
        results.append(_train_phase(model, phase, train_set, val_set, options, group, run_identity,
                                    saved if i == first else None, progress))
    if group.is_main:
        _write(model, checkpoint, options)
        discard_state(options.output)
    group.barrier()
    return results


def _datasets(options: QatOptions, checkpoint):
    from handheld.calibration import choose_samples
    from handheld.finetune_data import load_examples
    from handheld.tokenizer import Tokenizer

    tokenizer_path = options.tokenizer or checkpoint.tokenizer_path
    if tokenizer_path is None:
        raise HandheldError(f"{options.checkpoint} has no tokenizer.model: pass --tokenizer")
    examples = load_examples(options.data, Tokenizer(tokenizer_path), options.seq_len)
    if int(examples.tokens.max()) >= checkpoint.args.vocab_size:
        raise HandheldError(f"the tokenizer produces ids up to {int(examples.tokens.max())}, beyond the model's vocabulary")
    if len(examples) < 2:
        raise HandheldError(f"{options.data} yields {len(examples)} sequence(s) of {options.seq_len} tokens; "
                            "training and validation need at least 2")
    order = choose_samples(torch.arange(len(examples)), None, options.train.seed)
    n_val = max(1, int(len(examples) * VALIDATION_FRACTION))
    return examples.rows(order[n_val:]), examples.rows(order[:n_val])


def _float_model(checkpoint, options: QatOptions) -> nn.Module:
    from handheld.checkpoints import build_model
    from handheld.quant.mobile_8da4w import untie_embedding

    return untie_embedding(build_model(checkpoint, max_seq_len=options.seq_len, full_logits=True).float())


def _prepare(model: nn.Module, phase: str, options: QatOptions) -> nn.Module:
    """The structure a phase trains: fake quantization for qat and lora (once), adapters for lora."""
    from handheld.quant.fake_quant import prepare_fake_quant
    from handheld.quant.lora import add_lora

    if phase in ("qat", "lora") and not _is_fake_quantized(model):
        model = prepare_fake_quant(model, options.group_size)
    if phase == "lora":
        model = add_lora(model, options.lora_rank, options.lora_alpha / options.lora_rank, seed=options.train.seed)
    return model


def _is_fake_quantized(model: nn.Module) -> bool:
    return any(hasattr(m, "weight_fake_quantizer") for m in model.modules())


def _train_phase(model, phase, train_set, val_set, options, group, run_identity, saved, progress) -> PhaseResult:
    from handheld.quant.lora import freeze_all_but_adapters
    from handheld.recipes.resume import save_state
    from handheld.training import make_optimizer, train

    if phase == "lora":
        params = freeze_all_but_adapters(model)
        config = dataclasses.replace(options.train, lr=options.lora_lr)
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

    bar = _bar(config.steps, state.step, f"{phase} fine-tuning", progress and group.is_main)

    def show(s: TrainState) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{s.losses[-1]:.4f}", val=f"{s.validation[-1][1]:.4f}" if s.validation else "-",
                        tok_s=f"{s.tokens_per_s:.0f}")

    state = train(model, optimizer, train_set, val_set, config, group, state, save, show)
    bar.close()
    return PhaseResult(phase, state.step, state.losses[0], state.losses[-1], state.validation, state.tokens_per_s)


def _bar(total: int, done: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="step", disable=not enabled)


def convert(model: nn.Module, options: QatOptions) -> nn.Module:
    """The trained model with its backbone really quantized (same configs as the fake quantization, so the
    same integers) and any adapters kept unmerged beside it."""
    from handheld.checkpoints.prequantized import float_args
    from handheld.model import Transformer
    from handheld.quant.lora import add_lora
    from handheld.quant.mobile_8da4w import quantize_8da4w

    state = {k: v.detach() for k, v in model.state_dict().items()}
    backbone = Transformer(float_args(model.args), max_seq_len=model.max_seq_len, full_logits=model.full_logits, tied=False)
    backbone.load_state_dict({k: v for k, v in state.items() if ".adaptor." not in k})
    quantized = quantize_8da4w(backbone, group_size=options.group_size)
    if any(".adaptor." in k for k in state):
        quantized = add_lora(quantized, options.lora_rank, options.lora_alpha / options.lora_rank)
        quantized.load_state_dict({k: v for k, v in state.items() if ".adaptor." in k}, strict=False)
    return quantized.eval()


def _write(model: nn.Module, checkpoint, options: QatOptions) -> None:
    from handheld.atomic import atomic_dir
    from handheld.checkpoints import TOKENIZER, write_checkpoint
    from handheld.checkpoints.prequantized import write_prequantized
    from handheld.config import LoraArgs, QuantizationArgs

    tokenizer = options.tokenizer or checkpoint.tokenizer_path
    with atomic_dir(options.output) as tmp:
        if options.phase == "float":
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            write_checkpoint(tmp, checkpoint.args, state, "meta")
        else:
            lora = LoraArgs(options.lora_rank, options.lora_alpha / options.lora_rank) if "lora" in PHASES[options.phase] else None
            args = dataclasses.replace(checkpoint.args, quantization_args=QuantizationArgs(group_size=options.group_size),
                                       lora_args=lora)
            write_prequantized(tmp, args, convert(model, options))
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
