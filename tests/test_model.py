"""The eager model against an independent reference, and its KV cache against full recomputation."""

import torch

from handheld.core.checkpoints import build_model, read_checkpoint
from reference_llama import reference_logits
from conftest import ODD_ARGS, odd_state
from handheld.core.llama.model import Transformer


def _model(max_seq_len=32):
    model = Transformer(ODD_ARGS, max_seq_len=max_seq_len)
    model.load_state_dict(odd_state(), strict=False)
    return model.eval()


@torch.no_grad()
def test_matches_independent_reference():
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (20,), generator=torch.Generator().manual_seed(3)).tolist()
    ours = _model()(torch.tensor([tokens]), torch.tensor([0]))[0]
    torch.testing.assert_close(ours, reference_logits(ODD_ARGS, odd_state(), tokens), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_kv_cache_decode_equals_full_forward():
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (1, 16), generator=torch.Generator().manual_seed(4))
    model = _model()
    full = model(tokens, torch.tensor([0]))
    model.reset_cache()
    steps = [model(tokens[:, :9], torch.tensor([0]))]
    steps += [model(tokens[:, i : i + 1], torch.tensor([i])) for i in range(9, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_llm_kv_ops_compute_what_the_indexed_cache_does():
    """ExecuTorch's update_cache + custom_sdpa (what CPU programs export) against the indexed cache, prefill then
    decode, to float32 rounding of the logits' own scale."""
    from handheld.export.program import register_llm_ops

    register_llm_ops()
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (1, 16), generator=torch.Generator().manual_seed(5))
    indexed, with_ops = _model(), _model().use_llm_kv_ops()
    assert with_ops.llm_kv_ops and with_ops.layers[0].attention.k_cache.shape == (1, 32, ODD_ARGS.kv_heads, ODD_ARGS.attn_head_dim)
    for model in (indexed, with_ops):
        steps = [model(tokens[:, :9], torch.tensor([0]))]
        steps += [model(tokens[:, i : i + 1], torch.tensor([i])) for i in range(9, 16)]
        model.outputs = torch.cat(steps, dim=1)
    scale = indexed.outputs.abs().max().item()
    torch.testing.assert_close(with_ops.outputs, indexed.outputs, atol=1e-5 * scale, rtol=0)


@torch.no_grad()
def test_int8_kv_cache_rounds_rows_and_stays_within_their_rounding_of_the_float_cache():
    """ExecuTorch's quantized cache (`--kv-cache int8`): int8 rows with a float32 scale and an int8 zero point per
    token and head; each row read back is within half a step of what it stored, and the logits move by about what
    that rounding moves attention (measured ~1% of the logits' spread here; 8-bit rows hold 1/255 of their range),
    not by a wrong position or head (which moves them by their whole spread)."""
    from handheld.core.llama.model import int8_per_token
    from handheld.export.program import register_llm_ops

    register_llm_ops()
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (1, 16), generator=torch.Generator().manual_seed(6))
    floats, int8 = _model().use_llm_kv_ops(), _model().use_llm_kv_ops("int8")
    attention = int8.layers[0].attention
    assert int8.kv_cache == "int8" and attention.k_cache.dtype == torch.int8
    assert attention.k_cache_scales.shape == attention.k_cache_zero_points.shape == (1, 32, ODD_ARGS.kv_heads, 1)
    rows = torch.randn(1, 5, 2, 64, generator=torch.Generator().manual_seed(7)) * 3
    ints, scales, zero_points = int8_per_token(rows)
    assert ((ints.float() - zero_points) * scales - rows).abs().le(scales / 2 + 1e-6).all()
    for model in (floats, int8):
        steps = [model(tokens[:, :9], torch.tensor([0]))]
        steps += [model(tokens[:, i : i + 1], torch.tensor([i])) for i in range(9, 16)]
        model.outputs = torch.cat(steps, dim=1)
    off = (int8.outputs - floats.outputs).abs().max() / floats.outputs.std()
    assert 0 < off < 0.05, off
    assert (int8.outputs.argmax(-1) == floats.outputs.argmax(-1)).float().mean() >= 0.9


@torch.no_grad()
def test_last_logits_mode_returns_only_the_last_position():
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (1, 7))
    full = _model()(tokens, torch.tensor([0]))
    last = Transformer(ODD_ARGS, max_seq_len=32, full_logits=False)
    last.load_state_dict(odd_state(), strict=False)
    out = last.eval()(tokens, torch.tensor([0]))
    assert out.shape == (1, 1, ODD_ARGS.vocab_size)
    torch.testing.assert_close(out[0, 0], full[0, -1], atol=2e-5, rtol=1e-4)


def test_untied_checkpoint_keeps_its_own_classifier(tmp_path):
    from handheld.core.checkpoints import write_checkpoint

    state = odd_state()
    state["output.weight"] = torch.randn(ODD_ARGS.vocab_size, ODD_ARGS.dim) * 0.02
    write_checkpoint(tmp_path, ODD_ARGS, state, "meta")
    model = build_model(read_checkpoint(tmp_path))
    assert not model.tied
    torch.testing.assert_close(model.output.weight, state["output.weight"])
    tokens = [5, 9, 200, 3]
    out = model(torch.tensor([tokens]), torch.tensor([0]))[0]
    torch.testing.assert_close(out, reference_logits(ODD_ARGS, state, tokens), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_batched_training_path_equals_cached_path():
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (3, 12), generator=torch.Generator().manual_seed(5))
    model = _model()
    batched = model.forward_batch(tokens)
    for row in range(3):
        model.reset_cache()
        torch.testing.assert_close(batched[row], model(tokens[row : row + 1], torch.tensor([0]))[0], atol=2e-5, rtol=1e-4)
