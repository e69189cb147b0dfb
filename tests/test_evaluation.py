"""Perplexity and agreement: the window arithmetic, and eager vs `.pte` on the same text."""

import math

import pytest
import torch

from conftest import PARITY_MAX_SEQ_LEN
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.errors import HandheldError
from handheld.measure.quality import eager_logits_fn, evaluate, pte_logits_fn, windows
from handheld.export.options import ExportOptions
from handheld.export.program import export_program
from handheld.runtime_bindings.python.program import PteProgram


def test_every_target_is_scored_exactly_once():
    for n, context, stride in [(10, 4, 2), (10, 4, 4), (100, 16, 5), (3, 8, 4)]:
        scored = []
        for begin, end, first in windows(n, context, stride):
            assert end - begin <= context and begin < first <= end
            scored += range(first, end)
        assert len(scored) == len(set(scored))
        assert set(scored) <= set(range(1, n))
        if stride < context:
            assert scored == list(range(1, n))


def test_uniform_model_has_perplexity_equal_to_vocab():
    result = evaluate(lambda window: torch.zeros(len(window), 50), list(range(40)), context=8, stride=4, progress=False)
    assert math.isclose(result.perplexity, 50, rel_tol=1e-5)
    assert result.tokens_scored == 39


def test_a_model_equal_to_its_reference_agrees_fully():
    fn = lambda window: torch.randn(len(window), 30, generator=torch.Generator().manual_seed(len(window)))  # noqa: E731
    result = evaluate(fn, list(range(25)), 8, 4, reference_fn=fn, progress=False)
    assert result.top1_agreement == 1.0 and abs(result.mean_kl) < 1e-6


def test_bad_window_arguments():
    with pytest.raises(HandheldError, match="stride"):
        list(windows(10, 4, 0))


@pytest.fixture(scope="module")
def odd_full_logits_pte(odd_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("pte") / "odd_full.pte"
    options = ExportOptions(scheme="fp32", max_seq_len=PARITY_MAX_SEQ_LEN, full_logits=True)
    export_program(odd_checkpoint, out, options, log=lambda _: None)
    return out


def test_eager_and_pte_perplexity_agree(odd_checkpoint, odd_full_logits_pte):
    ids = torch.randint(44, 300, (400,), generator=torch.Generator().manual_seed(9)).tolist()
    eager = evaluate(eager_logits_fn(build_model(read_checkpoint(odd_checkpoint), PARITY_MAX_SEQ_LEN)), ids, 48, 24, progress=False)
    program = PteProgram(odd_full_logits_pte)
    assert program.metadata.full_logits is True
    on_pte = evaluate(pte_logits_fn(program), ids, 48, 24, progress=False)
    assert on_pte.tokens_scored == eager.tokens_scored == 399
    assert abs(on_pte.perplexity / eager.perplexity - 1) < 0.005


def test_int8_kv_cache_is_scored_through_the_cache_as_its_program_runs(byte_checkpoint, tmp_path):
    """`handheld eval CHECKPOINT --kv-cache int8` scores the eager model through its quantized cache (a batched
    forward has no cache to round): it equals the exported int8-cache program's perplexity to float32 rounding,
    and differs from the float cache's (the rounding is scored). A .pte has its cache already: the flag is refused."""
    from handheld import api

    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i % 37} x{(i * 7) % 23}" for i in range(200)), encoding="utf-8")
    window = dict(tokenizer=byte_checkpoint / "tokenizer.model", context=PARITY_MAX_SEQ_LEN, stride=24, max_tokens=300)
    eager = api.evaluate(byte_checkpoint, text, kv_cache="int8", **window)
    float_cache = api.evaluate(byte_checkpoint, text, **window)
    pte = api.export(byte_checkpoint, tmp_path / "int8.pte", scheme="fp32", max_seq_len=PARITY_MAX_SEQ_LEN,
                     full_logits=True, kv_cache="int8").path
    program = api.evaluate(pte, text, **window)
    assert eager.scheme == program.scheme == "fp32, int8 KV cache" and eager.mode == "eager"
    assert program.perplexity == pytest.approx(eager.perplexity, rel=1e-4)
    assert eager.perplexity != float_cache.perplexity
    with pytest.raises(HandheldError, match="--kv-cache applies to checkpoints"):
        api.evaluate(pte, text, kv_cache="int8", **window)


def test_last_logits_pte_cannot_be_evaluated(odd_fp32_pte):
    with pytest.raises(HandheldError, match="re-export it with --full-logits"):
        pte_logits_fn(PteProgram(odd_fp32_pte))
