"""The Llama 3.2 mobile scheme (8da4w): eager oracle, XNNPACK `.pte` parity, delegation, errors."""

import pytest
import torch
from torch import nn

from conftest import ODD_ARGS, PARITY_MAX_SEQ_LEN, _export, odd_state, delegated_linears
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.errors import HandheldError
from handheld.cli.inspect import describe_pte
from handheld.core.llama.model import Transformer
from handheld.export.weight_bytes import weight_bytes_by_kind
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.quant.schemes import SchemeOptions, apply_scheme
from handheld.decoding.generation import EagerRunner
from handheld.runtime_bindings.python.program import PteProgram

PROMPT = [44, 7, 123, 299, 5, 60, 61, 62, 18, 250, 3]
DECODE_STEPS = 8


@pytest.fixture(scope="module")
def odd_8da4w_pte(odd_checkpoint, tmp_path_factory):
    return _export(odd_checkpoint, tmp_path_factory.mktemp("pte") / "odd_8da4w.pte", "8da4w")


@pytest.fixture(scope="module")
def odd_c4_pte(odd_checkpoint, tmp_path_factory):
    return _export(odd_checkpoint, tmp_path_factory.mktemp("pte") / "odd_c4.pte", "8da4w-c4")


def _float_model():
    model = Transformer(ODD_ARGS, max_seq_len=PARITY_MAX_SEQ_LEN, full_logits=False)
    model.load_state_dict(odd_state(), strict=False)
    return model.eval()


def test_every_piece_gets_its_quantization():
    from torchao.quantization import IntxUnpackedToInt8Tensor

    model = quantize_8da4w(_float_model())
    assert model.output.weight is not model.tok_embeddings.weight  # untied first
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            w = module.weight
            assert isinstance(w, IntxUnpackedToInt8Tensor), name
            if name == "output":
                assert w.target_dtype == torch.int8 and w.block_size == (1, ODD_ARGS.dim)
            else:
                assert w.target_dtype == torch.int4 and w.block_size == (1, 32), name
            assert w.activation_quantization is not None, name  # 8-bit dynamic activations
    emb = model.tok_embeddings.weight
    assert isinstance(emb, IntxUnpackedToInt8Tensor) and emb.target_dtype == torch.int8
    assert emb.activation_quantization is None
    split = weight_bytes_by_kind(model)
    linear_params = sum(m.in_features * m.out_features for n, m in _float_model().named_modules()
                        if isinstance(m, nn.Linear) and n != "output")
    assert split["4-bit linears"] == linear_params // 2
    assert split["8-bit embedding"] == split["8-bit classifier"] == ODD_ARGS.vocab_size * ODD_ARGS.dim


def test_group_size_that_does_not_divide_names_the_layer():
    with pytest.raises(HandheldError, match=r"--group-size 64 does not divide the input width 96 of layer layers\.0\.attention\.wq"):
        quantize_8da4w(_float_model(), group_size=64)


@torch.no_grad()
def test_pte_matches_eager_quantized_model(odd_checkpoint, odd_8da4w_pte):
    quantized = EagerRunner(apply_scheme(build_model(read_checkpoint(odd_checkpoint), PARITY_MAX_SEQ_LEN, False), "8da4w"))
    floating = EagerRunner(build_model(read_checkpoint(odd_checkpoint), PARITY_MAX_SEQ_LEN, False))
    program = PteProgram(odd_8da4w_pte)
    position, tokens = 0, PROMPT
    for step in range(1 + DECODE_STEPS):
        ours, oracle, flt = (m.forward(tokens, position)[-1] for m in (program, quantized, floating))
        # XNNPACK and torchao round the 8-bit activations slightly differently; the quantization
        # error itself (vs float) is ~10x larger, so the program must sit much closer to its oracle.
        torch.testing.assert_close(ours, oracle, atol=0.02, rtol=0.02, msg=lambda m: f"step {step}: {m}")
        assert (ours - oracle).abs().max() < 0.3 * (oracle - flt).abs().max()
        position += len(tokens)
        tokens = [int(oracle.argmax())]


def test_every_quantized_linear_is_delegated(odd_8da4w_pte):
    info = describe_pte(odd_8da4w_pte)
    assert info["ops_delegated"]["linear"] == delegated_linears(2)
    assert info["ops_delegated"]["torchao.choose_qparams_affine"] == 15  # dynamic activation quant inside XNNPACK
    assert not {"linear", "torchao.choose_qparams_affine"} & set(info["ops_not_delegated"])
    meta = info["metadata"]
    assert meta["handheld_scheme"] == "8da4w" and meta["handheld_group_size"] == 32
    assert info["weight_bytes"]["4-bit linears"] > 0


def test_undelegated_quantized_linear_fails_loudly():
    from handheld.export.program import check_quantized_linears_delegated

    with pytest.raises(HandheldError, match=r"xnnpack did not take every quantized linear; left undelegated: linear x2"):
        check_quantized_linears_delegated({"delegated": {}, "portable": {"linear": 2, "embedding": 1}}, "xnnpack")
    check_quantized_linears_delegated({"delegated": {"linear": 3}, "portable": {"embedding": 1}}, "xnnpack")


def test_group_size_option_reaches_the_scheme():
    model = apply_scheme(_float_model(), "8da4w", SchemeOptions(group_size=16))
    assert model.layers[0].feed_forward.w2.weight.block_size == (1, 16)


@torch.no_grad()
def test_four_bit_classifier_option_exports_and_matches_its_oracle(odd_checkpoint, odd_c4_pte):
    """8da4w-c4: the classifier in 4-bit g32 groups like ExecuTorch's CLI; delegated, and the program follows
    its own eager oracle much more closely than the 8-bit-classifier program does."""
    model = apply_scheme(_float_model(), "8da4w-c4")
    assert model.output.weight.target_dtype == torch.int4 and model.output.weight.block_size == (1, 32)
    split = weight_bytes_by_kind(model)
    assert split["4-bit classifier"] == ODD_ARGS.vocab_size * ODD_ARGS.dim // 2 and "8-bit classifier" not in split
    pte = odd_c4_pte
    info = describe_pte(pte)
    assert info["metadata"]["handheld_scheme"] == "8da4w-c4" and "linear" not in info["ops_not_delegated"]
    program = PteProgram(pte)
    oracle = EagerRunner(apply_scheme(build_model(read_checkpoint(odd_checkpoint), PARITY_MAX_SEQ_LEN, False), "8da4w-c4"))
    eight_bit = EagerRunner(apply_scheme(build_model(read_checkpoint(odd_checkpoint), PARITY_MAX_SEQ_LEN, False), "8da4w"))
    ours, expected, other = (m.forward(PROMPT, 0)[-1] for m in (program, oracle, eight_bit))
    assert (ours - expected).abs().max() < 0.3 * (expected - other).abs().max()


# fp16 and bf16 take the same passes (bf16 stands for both: one export less in CI's 25 minutes).
@pytest.mark.parametrize("scheme, written", [("8da4w", "odd_8da4w_pte"), ("8da4w-c4", "odd_c4_pte"),
                                             ("bf16", "odd_bf16_pte")])
def test_export_savings_write_the_same_program(odd_checkpoint, scheme, written, request, tmp_path, monkeypatch):
    """handheld skips the decompositions, edge passes and XNNPACK passes that have nothing to rewrite (export time)
    and drops the delegates' float weights before emission (export memory); with every pass and nothing dropped
    the program is byte for byte the one handheld writes, for every scheme whose graph differs (16-bit, 4-bit
    classifier)."""
    import dataclasses

    from handheld.export import backends, program
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    every_pass = dataclasses.replace(backends.BACKENDS["xnnpack"], lowering=lambda: backends.contextlib.nullcontext())
    monkeypatch.setitem(backends.BACKENDS, "xnnpack", every_pass)
    monkeypatch.setattr(program, "release_delegated_weights", lambda lowered: None)
    out = tmp_path / "every_pass.pte"
    options = ExportOptions(scheme=scheme, max_seq_len=PARITY_MAX_SEQ_LEN)
    export_program(odd_checkpoint, out, options, log=lambda _: None)
    assert out.read_bytes() == request.getfixturevalue(written).read_bytes()
