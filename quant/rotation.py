"""Rotations applied before calibrated 4-bit rounding, as one explicit table of transforms `model -> model`.

- `none`: the model as it is.
- `quarot` (Ashkboos et al. 2024, QuaRot; SpinQuant's starting point, nothing learned): every RMSNorm gain folded
  into the linears that read it (the classifier untied from the embedding), a Hadamard R4 on each down projection's
  input (folded into w2, applied online by the model), and random Hadamard R1 (the residual stream) and R2 (each
  head's values) merged into the weights. The float function is unchanged; the weights' and the 8-bit
  activations' outliers are spread over many channels, which GPTQ then rounds well. Every channel is rotated,
  the massive ones too: with GPTQ that measured better than keeping them out
  (benchmarks/results/rotations_smollm2.json). Rounded without calibration, rotated SmolLM2 loses more than the
  unrotated default, so a rotation needs --calib.
Cost: each layer runs one small online Hadamard (two Kronecker factors). The untied classifier costs nothing
more: 8da4w stores its 8-bit embedding and classifier apart anyway.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from handheld.core.defaults import ROTATION_SEED
from handheld.core.errors import HandheldError
from handheld.quant.spinquant import apply_rotations, check_rotatable, fold_norms, initial_rotations
from handheld.quant.spinquant_r4 import fold_r4


def _quarot(model: nn.Module) -> nn.Module:
    try:
        check_rotatable(model.args)
    except HandheldError as error:
        raise HandheldError(f"--rotation quarot: {error}; leave --rotation out") from None
    rotated = fold_r4(fold_norms(model.float()))
    return apply_rotations(rotated, initial_rotations(rotated.args, ROTATION_SEED))


ROTATIONS: dict[str, Callable[[nn.Module], nn.Module] | None] = {"none": None, "quarot": _quarot}


def check_rotation(name: str) -> None:
    if name not in ROTATIONS:
        raise HandheldError(f"unknown rotation {name!r}; known rotations: {', '.join(ROTATIONS)}")


def rotate(model: nn.Module, name: str) -> nn.Module:
    """`model` under rotation `name` (unchanged for "none")."""
    check_rotation(name)
    transform = ROTATIONS[name]
    return model if transform is None else transform(model)


def rotation_record(name: str) -> dict | None:
    """What the .pte's quantization metadata says about the rotation (None: none)."""
    return None if ROTATIONS.get(name) is None else {"method": name, "seed": ROTATION_SEED}
