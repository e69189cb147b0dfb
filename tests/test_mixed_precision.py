"""Mixed precision under a byte budget (quant/mixed_precision.py): the byte plan matches what the program stores,
the Fisher sensitivity is what it says, the greedy choice respects the budget, and bad budgets are refused."""

import pytest
import torch
from torch import nn

from conftest import ODD_ARGS, PARITY_MAX_SEQ_LEN, odd_state
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer
from handheld.core.pte_metadata import ProgramMetadata
from handheld.export.weight_bytes import weight_bytes_by_kind
from handheld.quant.linears import block_linears
from handheld.quant.mixed_precision import (Sensitivity, choose_eight_bit, measure_sensitivity, planned_bytes_per_token,
                                            promote_within_budget)
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.schemes import SchemeOptions, eight_bit_linears
from handheld.quant.torchao_adapter import int_bits

SOME = frozenset({"layers.0.feed_forward.w2", "layers.1.attention.wv"})


def _float_model():
    model = Transformer(ODD_ARGS, max_seq_len=PARITY_MAX_SEQ_LEN, full_logits=True)
    model.load_state_dict(odd_state(), strict=False)
    return model.eval()


@pytest.mark.parametrize("classifier_bits", [8, 4])
@pytest.mark.parametrize("eight_bit", [frozenset(), SOME])
def test_planned_bytes_are_the_bytes_the_program_stores(classifier_bits, eight_bit):
    planned = planned_bytes_per_token(_float_model(), 32, classifier_bits, eight_bit)
    quantized = quantize_8da4w(_float_model(), classifier_bits=classifier_bits, eight_bit=eight_bit)
    stored = ProgramMetadata(max_seq_len=8, vocab_size=ODD_ARGS.vocab_size, n_layers=2, bos_id=0, eos_ids=(1,),
                             weight_bytes=weight_bytes_by_kind(quantized)).bytes_per_token()
    assert planned == stored
    assert set(eight_bit_linears(quantized)) == eight_bit


def test_eight_bit_linears_are_eight_bit_and_closer_to_float():
    floating, mixed = _float_model(), quantize_8da4w(_float_model(), eight_bit=SOME)
    four = quantize_8da4w(_float_model())
    for name, linear in block_linears(mixed).items():
        assert int_bits(linear.weight) == (8 if name in SOME else 4), name
        if name in SOME:
            reference = floating.get_submodule(name).weight
            error8 = (linear.weight.dequantize() - reference).abs().mean()
            error4 = (four.get_submodule(name).weight.dequantize() - reference).abs().mean()
            assert error8 < 0.2 * error4, name
    with pytest.raises(HandheldError, match="not block linears of this model: output"):
        quantize_8da4w(_float_model(), eight_bit=frozenset({"output"}))


def test_sensitivity_is_the_fisher_weighted_rounding_error():
    """The hooks' running sums equal sum over sequences of grad^2 * error^2, computed here directly."""
    model, sequences = _float_model(), torch.randint(0, ODD_ARGS.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    measured = measure_sensitivity(model, sequences, 32, "weighted")
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    name = "layers.1.feed_forward.w2"
    weight = model.get_submodule(name).weight
    four = weight.detach() - quantize_8da4w(_float_model()).get_submodule(name).weight.dequantize()
    fisher = torch.zeros_like(weight)
    for sequence in sequences:
        model.zero_grad()
        logits = model.forward_batch(sequence[None, :-1])
        grad, = torch.autograd.grad(nn.functional.cross_entropy(logits[0], sequence[1:]), weight)
        fisher += grad.square()
    assert measured[name].four_bit == pytest.approx(0.5 * float((fisher * four.square()).sum()), rel=1e-4)
    assert all(s.eight_bit < 0.05 * s.four_bit for s in measured.values())


def test_the_greedy_choice_buys_saving_per_byte_within_the_budget():
    sensitivity = {"a": Sensitivity(10.0, 0.0, 100), "b": Sensitivity(9.0, 0.0, 30), "c": Sensitivity(4.0, 0.0, 60),
                   "d": Sensitivity(1.0, 2.0, 1)}  # d: 8 bits measured worse, never bought
    assert promote_within_budget(sensitivity, 0) == frozenset()
    assert promote_within_budget(sensitivity, 30) == {"b"}
    assert promote_within_budget(sensitivity, 130) == {"b", "a"}  # then c (60) no longer fits
    assert promote_within_budget(sensitivity, 129) == {"b", "c"}  # a does not fit; the next best that does fills in
    assert promote_within_budget(sensitivity, 10**6) == {"a", "b", "c"}


def test_budget_below_the_all_four_bit_program_is_refused():
    model = _float_model()
    floor = planned_bytes_per_token(model, 32, 8, frozenset())
    with pytest.raises(HandheldError, match=rf"--budget-mb {(floor - 1) / 1e6:g} is below the {floor / 1e6:.2f} MB"):
        choose_eight_bit(model, torch.zeros(1, 8, dtype=torch.long), 32, 8, "weighted", floor - 1)
    assert choose_eight_bit(model, torch.ones(2, 8, dtype=torch.long), 32, 8, "weighted", floor) == frozenset()
