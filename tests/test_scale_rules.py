"""4-bit scale rules (quant/scale_rules.py) and how 8da4w stores their integers in torchao's structure."""

import pytest
import torch

from conftest import ODD_ARGS, PARITY_MAX_SEQ_LEN, odd_state
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer
from handheld.quant.linears import input_importance
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.scale_rules import SCALE_RULES, check_scale_rule, quantize_groups


def heavy_tailed(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    """Weights like a trained linear's: mostly small, a few large ones per row (Student-t, 4 degrees)."""
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=gen)
    chi = torch.randn(4, rows, cols, generator=gen).pow(2).sum(0) / 4
    return 0.02 * normal / chi.sqrt()


def dequantized(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return values.float() * scales.repeat_interleave(values.shape[1] // scales.shape[1], dim=1)


@pytest.mark.parametrize("rule", list(SCALE_RULES))
def test_every_rule_stores_xnnpack_format(rule):
    w = heavy_tailed()
    w[3, :32] = 0  # an all-zero group
    values, scales = quantize_groups(w, 32, rule)
    assert values.dtype == torch.int8 and values.min() >= -8 and values.max() <= 7
    assert (scales > 0).all() and torch.isfinite(scales).all()  # XNNPACK refuses a negative or zero scale
    assert torch.equal(scales, scales.bfloat16().float())  # the integers fit the bf16 scale XNNPACK stores
    assert torch.equal(dequantized(values, scales)[3, :32], torch.zeros(32))
    assert torch.equal(values, torch.clamp(torch.round(w / scales.repeat_interleave(32, 1)), -8, 7).to(torch.int8))


def test_extreme_rule_stores_each_groups_extreme_exactly():
    w = heavy_tailed().bfloat16().float()
    values, scales = quantize_groups(w, 32, "extreme")
    groups, restored = w.reshape(-1, 32), dequantized(values, scales).reshape(-1, 32)
    at = groups.abs().argmax(1, keepdim=True)
    # Exact up to the bf16 rounding of the scale (relative 2^-8), far below a level's width (1/8 of the extreme).
    torch.testing.assert_close(restored.gather(1, at), groups.gather(1, at), rtol=2 ** -7, atol=0)


def test_weighted_rule_has_the_least_weighted_error():
    w = heavy_tailed(seed=1)
    importance = 0.5 + torch.rand(w.shape[1], generator=torch.Generator().manual_seed(2))
    errors = {}
    for rule in SCALE_RULES:
        values, scales = quantize_groups(w, 32, rule, importance)
        errors[rule] = float((importance * w.abs() * (w - dequantized(values, scales)) ** 2).sum())
    assert errors["weighted"] < 0.97 * min(errors["absmax"], errors["extreme"]), errors


def test_unknown_rule_lists_the_known_ones():
    with pytest.raises(HandheldError, match=r"unknown scale rule 'q9'; known scale rules: weighted, extreme, absmax"):
        check_scale_rule("q9")


def _float_model():
    model = Transformer(ODD_ARGS, max_seq_len=PARITY_MAX_SEQ_LEN, full_logits=False)
    model.load_state_dict(odd_state(), strict=False)
    with torch.no_grad():  # norm gains that differ, so the data-free importance matters
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(0.5 + torch.rand(param.shape, generator=torch.Generator().manual_seed(len(name))))
    return model.eval()


def test_8da4w_holds_the_rules_integers_and_absmax_is_torchaos_own():
    reference = _float_model()
    model = quantize_8da4w(_float_model(), scale_rule="weighted")
    for name in ("layers.0.attention.wq", "layers.1.feed_forward.w2"):
        stored = model.get_submodule(name).weight
        values, scales = quantize_groups(reference.get_submodule(name).weight, 32, "weighted",
                                         input_importance(reference, name))
        assert torch.equal(stored.qdata, values) and torch.equal(stored.scale, scales)
    torchao_own = quantize_8da4w(_float_model(), scale_rule="absmax").layers[0].attention.wq.weight
    weighted = model.layers[0].attention.wq.weight
    assert not torch.equal(torchao_own.scale, weighted.scale)  # the rules differ on this weight: the test can tell
    assert torchao_own.scale.dtype == torch.float32 and not torch.equal(torchao_own.scale, torchao_own.scale.bfloat16().float())


def test_importance_follows_the_norm_that_feeds_each_linear():
    model = _float_model()
    gain = model.layers[1].ffn_norm.weight.detach().abs()
    assert torch.equal(input_importance(model, "layers.1.feed_forward.w3"), gain)
    assert torch.equal(input_importance(model, "layers.0.attention.wk"), model.layers[0].attention_norm.weight.detach().abs())
    assert input_importance(model, "layers.0.attention.wo") is None  # reads attention, not a norm
    assert torch.equal(input_importance(model, "output"), model.norm.weight.detach().abs())
