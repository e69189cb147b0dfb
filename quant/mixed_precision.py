"""Mixed precision under a byte budget: which block linears of an 8da4w program stay 8-bit.

Each block linear's sensitivity is measured on calibration text: the loss increase its rounding causes,
estimated to second order with the empirical Fisher information (squared per-sequence gradients of the
next-token loss, as HAWQ and SqueezeLLM do): s(bits) = 1/2 sum F * (W - Q_bits(W))^2. Moving a linear from 4 to
8 bits saves s(4) - s(8) and costs the extra bytes a decoded token reads; linears are promoted in order of saving
per byte while the program's bytes per token stay within the budget (greedy knapsack).

Memory: the float model, one weight-sized difference tensor per linear and one gradient at a time (each is
consumed by a hook as soon as it is accumulated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from handheld.core.errors import HandheldError
from handheld.quant.gptq import dequantized
from handheld.quant.linears import CLASSIFIER, block_linears, input_importance
from handheld.quant.scale_rules import quantize_groups

FOUR_BIT_SCALE_BYTES = 2  # XNNPACK stores 4-bit group scales as bf16
EIGHT_BIT_SCALE_BYTES = 4  # one float32 scale per output channel of an 8-bit linear


def linear_bytes(out_features: int, in_features: int, bits: int, group_size: int) -> int:
    """Bytes XNNPACK stores for one linear: values and scales (export/weight_bytes.py measures the same)."""
    if bits == 4:
        return out_features * in_features // 2 + out_features * (in_features // group_size) * FOUR_BIT_SCALE_BYTES
    return out_features * in_features + out_features * EIGHT_BIT_SCALE_BYTES


def planned_bytes_per_token(model: nn.Module, group_size: int, classifier_bits: int, eight_bit: frozenset[str]) -> int:
    """Weight bytes a decoded token of the 8da4w program would read: every linear, the float norm gains, and one
    row of the 8-bit embedding table with all its scales (what ProgramMetadata.bytes_per_token counts)."""
    total = 0
    for name, linear in block_linears(model).items():
        total += linear_bytes(linear.out_features, linear.in_features, 8 if name in eight_bit else 4, group_size)
    classifier = getattr(model, CLASSIFIER)
    total += linear_bytes(classifier.out_features, classifier.in_features, classifier_bits, group_size)
    table = model.tok_embeddings.weight
    total += table.shape[1] + table.shape[0] * EIGHT_BIT_SCALE_BYTES  # one row of values, every row's scale
    others = [p for n, p in model.named_parameters() if not n.startswith(("tok_embeddings.", CLASSIFIER + "."))]
    return total + sum(p.numel() * 4 for p in others if p.dim() == 1)  # norm gains stay float32


@dataclass(frozen=True)
class Sensitivity:
    """Estimated loss increase of one linear's rounding at 4 and at 8 bits, and what promoting it costs."""
    four_bit: float
    eight_bit: float
    extra_bytes: int

    @property
    def saving_per_byte(self) -> float:
        return (self.four_bit - self.eight_bit) / self.extra_bytes


def _eight_bit_error(weight: torch.Tensor) -> torch.Tensor:
    """Rounding error of torchao's symmetric 8-bit per-channel rule (scale = max |w| / 127.5, levels -128..127)."""
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127.5).clamp_min(1e-12)
    return weight - torch.clamp(torch.round(weight / scale), -128, 127) * scale


def _squared_error_gaps(model: nn.Module, group_size: int, scale_rule: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    errors = {}
    for name, linear in block_linears(model).items():
        weight = linear.weight.detach().float()
        four = weight - dequantized(*quantize_groups(weight, group_size, scale_rule, input_importance(model, name)))
        errors[name] = (four.square(), _eight_bit_error(weight).square())
    return errors


def measure_sensitivity(model: nn.Module, sequences: torch.Tensor, group_size: int,
                        scale_rule: str) -> dict[str, Sensitivity]:
    """Each block linear's Fisher-weighted rounding error at 4 and 8 bits over `sequences` [N, T] (float model)."""
    linears = block_linears(model)
    squared = _squared_error_gaps(model, group_size, scale_rule)
    sums = {name: [0.0, 0.0] for name in linears}
    previous = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    for name, linear in linears.items():
        linear.weight.requires_grad_(True)
        handles.append(linear.weight.register_post_accumulate_grad_hook(_accumulator(squared[name], sums[name])))
    try:
        for sequence in sequences:  # one at a time: the Fisher is a sum of per-sequence squared gradients
            logits = model.forward_batch(sequence[None, :-1])
            torch.nn.functional.cross_entropy(logits[0].float(), sequence[1:]).backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, wanted in previous.items():
            p.requires_grad_(wanted)
            p.grad = None
    return {name: Sensitivity(0.5 * four, 0.5 * eight,
                              linear_bytes(m.out_features, m.in_features, 8, group_size)
                              - linear_bytes(m.out_features, m.in_features, 4, group_size))
            for (name, m), (four, eight) in zip(linears.items(), sums.values())}


def _accumulator(squared: tuple[torch.Tensor, torch.Tensor], sums: list[float]):
    def accumulate(param: torch.Tensor) -> None:
        fisher = param.grad.detach().float().square()
        sums[0] += float((fisher * squared[0]).sum())
        sums[1] += float((fisher * squared[1]).sum())
        param.grad = None  # consumed: only one gradient is alive at a time
    return accumulate


def promote_within_budget(sensitivity: dict[str, Sensitivity], spare_bytes: int) -> frozenset[str]:
    """The linears to keep 8-bit: best saving per byte first, while their extra bytes fit in `spare_bytes`."""
    chosen, spent = [], 0
    for name, s in sorted(sensitivity.items(), key=lambda kv: kv[1].saving_per_byte, reverse=True):
        if s.four_bit <= s.eight_bit:
            break  # no saving left to buy
        if spent + s.extra_bytes <= spare_bytes:
            chosen.append(name)
            spent += s.extra_bytes
    return frozenset(chosen)


def choose_eight_bit(model: nn.Module, sequences: torch.Tensor, group_size: int, classifier_bits: int,
                     scale_rule: str, budget_bytes: int) -> frozenset[str]:
    """Block linears to keep at 8 bits so that a decoded token reads at most `budget_bytes` of weights."""
    floor = planned_bytes_per_token(model, group_size, classifier_bits, frozenset())
    if budget_bytes < floor:
        raise HandheldError(f"--budget-mb {budget_bytes / 1e6:g} is below the {floor / 1e6:.2f} MB a token of the "
                            f"all-4-bit program reads; raise it or leave it out")
    return promote_within_budget(measure_sensitivity(model, sequences, group_size, scale_rule), budget_bytes - floor)
