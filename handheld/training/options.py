"""The training jobs' options, typed and validated once; their defaults are the CLI's defaults.

Kept free of torch so that `handheld spinquant --help` and `handheld qat --help` stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handheld.core.atomic import refuse_overwriting_inputs
from handheld.core.defaults import GROUP_SIZE, LORA_ALPHA, LORA_RANK, SCALE_RULE
from handheld.core.errors import HandheldError


def check_job_output(output: Path, inputs: list[Path | None]) -> None:
    """A training job writes a new directory: never an input, never inside one, never over a file."""
    refuse_overwriting_inputs(output, inputs)
    if output.exists() and not output.is_dir():
        raise HandheldError(f"output {output} is a file; the job writes a checkpoint directory")


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float
    batch_size: int = 8
    grad_accum: int = 1
    warmup: int = 10
    weight_decay: float = 0.0
    eval_every: int = 25
    save_every: int = 25
    seed: int = 0


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
    lora_steps: int | None = None  # steps of the lora phase; None: train.steps, as the qat phase
    seq_len: int = 256
    lora_rank: int = LORA_RANK
    lora_alpha: float = LORA_ALPHA
    group_size: int = GROUP_SIZE
    scale_rule: str = SCALE_RULE  # the 4-bit scales QAT trains on (absmax: torchao's, recomputed every step)
    resume: bool = False
    tokenizer: Path | None = None
    skip_memory_check: bool = False  # run even when the estimated peak exceeds the memory available

    @property
    def lora_steps_or_default(self) -> int:
        return self.train.steps if self.lora_steps is None else self.lora_steps

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise HandheldError(f"unknown --phase {self.phase!r}; known phases: {', '.join(PHASES)}")
        from handheld.quant.scale_rules import check_scale_rule  # at run time only: --help stays torch-free

        check_scale_rule(self.scale_rule)
        t = self.train
        if t.steps < 1 or t.batch_size < 1 or t.grad_accum < 1 or self.seq_len < 2 or self.lora_steps_or_default < 1:
            raise HandheldError("--steps, --lora-steps, --batch-size and --grad-accum must be >= 1 and --seq-len >= 2")
        if self.output != Path("-"):  # "-": the run's fingerprint, which names no output
            check_job_output(self.output, [self.checkpoint, self.data, self.tokenizer])


# "float": the rotated float weights (R1, R2 folded; R4 unfolded), the input of NPU schemes.
WEIGHT_QUANT = ("rtn", "gptq", "float")
# keep: left out of R1, their norm gains unfolded; rotate: rotated with the rest (the paper's way); auto: keep for RTN,
# rotate otherwise (on SmolLM2 keeping wins with RTN, rotating with GPTQ: benchmarks/results/rotations_smollm2.json).
MASSIVE_CHANNELS = ("auto", "keep", "rotate")


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
    rotations: bool = True  # False: the same RTN/GPTQ on the unrotated model, the baseline that credits R1/R2/R4
    massive_channels: str = "auto"  # MASSIVE_CHANNELS: what R1 does with the residual stream's massive channels
    group_size: int = GROUP_SIZE
    seed: int = 0
    resume: bool = False
    save_every: int = 10
    tokenizer: Path | None = None
    skip_memory_check: bool = False

    @property
    def keeps_massive_channels(self) -> bool:
        return self.massive_channels == "keep" or (self.massive_channels == "auto" and self.weight_quant == "rtn")

    def __post_init__(self) -> None:
        if self.weight_quant not in WEIGHT_QUANT:
            raise HandheldError(f"unknown --weight-quant {self.weight_quant!r}; known: {', '.join(WEIGHT_QUANT)}")
        if self.massive_channels not in MASSIVE_CHANNELS:
            raise HandheldError(f"unknown --massive-channels {self.massive_channels!r}; known: {', '.join(MASSIVE_CHANNELS)}")
        if self.steps < 0 or self.batch_size < 1 or self.seq_len < 2 or self.save_every < 1:
            raise HandheldError("--steps must be >= 0, --batch-size >= 1, --seq-len >= 2, --save-every >= 1")
        if self.output != Path("-"):
            check_job_output(self.output, [self.checkpoint, self.calib, self.tokenizer])
