"""SpinQuant: rotations preserve the function, stay orthogonal and lower the quantized loss; the job
resumes exactly, scales out over processes, and its checkpoint exports to a `.pte` matching eager."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BYTE_ARGS, ODD_ARGS, PARITY_MAX_SEQ_LEN, assert_pte_matches_eager, odd_state
from handheld.core.checkpoints import read_checkpoint, write_checkpoint
from handheld.training.distributed import Group
from handheld.core.errors import HandheldError
from handheld.core.llama.hadamard import hadamard_matrix
from handheld.core.llama.model import Transformer
from handheld.quant.fake_quant import prepare_fake_quant
from handheld.quant.gptq import HessianCollector, gptq_quantize, sequential_gptq
from handheld.quant.scale_rules import SCALE_RULES, quantize_groups
from handheld.quant.spinquant import (Rotations, apply_rotations, fold_norms, initial_rotations, massive_channels,
                                      rotatable_state)
from handheld.training.cayley import LearnState, cayley_step, learn_rotations, quantized_loss
from handheld.quant.spinquant_r4 import fold_r4
from handheld.training.spinquant import SpinQuantOptions, run_spinquant

TOKENS = torch.randint(0, ODD_ARGS.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))


def odd_model(dtype=torch.float64):
    model = Transformer(ODD_ARGS, max_seq_len=32)
    model.load_state_dict(odd_state(), strict=False)
    return model.to(dtype).eval()


def random_orthogonal(n, seed, batch=()):
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(*batch, n, n, generator=gen, dtype=torch.float64))[0]


def test_hadamard_sizes_of_llama_and_odd_shapes_are_orthonormal():
    for n in (24, 96, 160, 192, 2048, 3072):
        h = hadamard_matrix(n)
        torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
        assert set(torch.unique((h * n**0.5).round()).tolist()) == {-1.0, 1.0}


def test_rotations_are_function_preserving_without_quantization():
    model = odd_model()
    with torch.no_grad():
        reference = model.forward_batch(TOKENS)
        rotated = fold_r4(fold_norms(model))
        # Arbitrary orthogonal matrices, not only Hadamards: any rotation must preserve the function.
        rotations = Rotations(random_orthogonal(ODD_ARGS.dim, 1), random_orthogonal(ODD_ARGS.attn_head_dim, 2, (ODD_ARGS.n_layers,)))
        rotated = apply_rotations(rotated, rotations)
        assert all(layer.attention_norm.weight.eq(1).all() for layer in rotated.layers)
        after = rotated.forward_batch(TOKENS)
    torch.testing.assert_close(after, reference, atol=1e-6, rtol=1e-6)  # fp32 Hadamard constants bound it


def with_massive_channel(model, channel=5, factor=300.0):
    """The model with residual channel `channel` massive on every token (its embedding column scaled up) and the
    norms' gains random, so that a fold that wrongly folded the kept gain would change the function."""
    with torch.no_grad():
        model.tok_embeddings.weight[:, channel] *= factor
        gen = torch.Generator().manual_seed(3)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.rand(param.shape, generator=gen, dtype=param.dtype) + 0.5)
    return model


def test_massive_channels_are_found_and_only_they():
    model = with_massive_channel(odd_model())
    assert massive_channels(model, TOKENS) == (5,)
    assert massive_channels(odd_model(), TOKENS) == ()


def test_rotations_that_keep_massive_channels_preserve_the_function_and_leave_them_alone():
    model = with_massive_channel(odd_model())
    kept = massive_channels(model, TOKENS)
    gains = [layer.ffn_norm.weight[5].item() for layer in model.layers]
    with torch.no_grad():
        reference = model.forward_batch(TOKENS)
        rotations = initial_rotations(ODD_ARGS, seed=0, kept=kept)
        rotated = apply_rotations(fold_r4(fold_norms(model, kept)), rotations)
        after = rotated.forward_batch(TOKENS)
    torch.testing.assert_close(after, reference, atol=1e-6, rtol=1e-6)
    assert [layer.ffn_norm.weight[5].item() for layer in rotated.layers] == gains  # the kept gains stay unfolded
    assert all(layer.ffn_norm.weight[torch.arange(ODD_ARGS.dim) != 5].eq(1).all() for layer in rotated.layers)
    eye = torch.eye(ODD_ARGS.dim, dtype=torch.float64)
    torch.testing.assert_close(rotations.r1 @ rotations.r1.T, eye, atol=1e-12, rtol=0)
    assert torch.equal(rotations.r1[5], eye[5]) and torch.equal(rotations.r1[:, 5], eye[:, 5])


def test_massive_channels_are_kept_by_default_with_rtn_only():
    from handheld.training.options import SpinQuantOptions

    def keeps(**fields):
        return SpinQuantOptions(checkpoint=Path("c"), calib=Path("t"), output=Path("-"), **fields).keeps_massive_channels

    assert keeps(weight_quant="rtn") and not keeps(weight_quant="gptq") and not keeps(weight_quant="float")
    assert keeps(weight_quant="gptq", massive_channels="keep") and not keeps(massive_channels="rotate")


def test_learning_keeps_r1_the_identity_on_the_kept_channels():
    base = fold_r4(fold_norms(with_massive_channel(odd_model(torch.float32)), (5,)))
    fq = prepare_fake_quant(copy.deepcopy(base))
    state = learn_rotations(fq, LearnState(0, initial_rotations(ODD_ARGS, seed=0, kept=(5,))), steps=3, lr=2.0,
                            batch_for_step=lambda step: TOKENS, group=Group())
    r1, eye = state.rotations.r1, torch.eye(ODD_ARGS.dim, dtype=torch.float64)
    assert not torch.allclose(r1, initial_rotations(ODD_ARGS, seed=0, kept=(5,)).r1)  # it learned
    torch.testing.assert_close(r1[5], eye[5], atol=1e-12, rtol=0)
    torch.testing.assert_close(r1[:, 5], eye[:, 5], atol=1e-12, rtol=0)
    torch.testing.assert_close(r1 @ r1.T, eye, atol=1e-10, rtol=0)


def _fake_quant_setup():
    base = fold_r4(fold_norms(odd_model(torch.float32)))
    fq = prepare_fake_quant(copy.deepcopy(base))
    for p in fq.parameters():
        p.requires_grad_(False)
    return fq, rotatable_state(fq)


def _loss_and_grads(fq, frozen, rotations, tokens):
    r1 = rotations.r1.float().requires_grad_(True)
    r2 = rotations.r2.float().requires_grad_(True)
    loss = quantized_loss(fq, frozen, Rotations(r1, r2), tokens)
    return loss.item(), torch.autograd.grad(loss, (r1, r2))


def test_cayley_step_decreases_the_quantized_loss_on_a_fixed_batch():
    fq, frozen = _fake_quant_setup()
    rotations = initial_rotations(ODD_ARGS, seed=0)
    before, (g1, g2) = _loss_and_grads(fq, frozen, rotations, TOKENS)
    stepped = Rotations(cayley_step(rotations.r1, g1, 0.5), cayley_step(rotations.r2, g2, 0.5))
    after, _ = _loss_and_grads(fq, frozen, stepped, TOKENS)
    assert after < before - 1e-4, (before, after)


def test_learned_rotations_stay_orthogonal():
    fq, _ = _fake_quant_setup()
    state = learn_rotations(fq, LearnState(0, initial_rotations(ODD_ARGS, seed=0)), steps=5, lr=2.0,
                            batch_for_step=lambda step: TOKENS, group=Group())
    eye = torch.eye(ODD_ARGS.dim, dtype=torch.float64)
    assert not torch.allclose(state.rotations.r1, initial_rotations(ODD_ARGS, seed=0).r1)
    torch.testing.assert_close(state.rotations.r1 @ state.rotations.r1.T, eye, atol=1e-10, rtol=0)
    r2 = state.rotations.r2
    torch.testing.assert_close(r2 @ r2.transpose(1, 2), torch.eye(r2.shape[-1], dtype=torch.float64).expand_as(r2), atol=1e-10, rtol=0)


def test_gptq_beats_rtn_on_the_layer_reconstruction_error():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen) @ torch.randn(64, 64, generator=gen)  # correlated inputs
    w = torch.randn(48, 64, generator=gen)
    hessian = 2 * x.T.double() @ x.double()
    dequant = lambda v, s: (v.float().reshape(48, 2, 32) * s[..., None]).reshape(48, 64)
    for rule in SCALE_RULES:
        values, scales = gptq_quantize(w, hessian, group_size=32, scale_rule=rule)
        assert values.dtype == torch.int8 and values.min() >= -8 and values.max() <= 7
        # The same scale rule, rounded to nearest (weighing inputs as GPTQ's rule does).
        rtn, rtn_scales = quantize_groups(w, 32, rule, importance=torch.diag(hessian).sqrt())
        err_gptq = (x @ (w - dequant(values, scales)).T).norm()
        err_rtn = (x @ (w - dequant(rtn, rtn_scales)).T).norm()
        assert err_gptq < 0.8 * err_rtn, (rule, err_gptq, err_rtn)
        # Act order: the same stored groups, their scales chosen up front (RTN's), the columns rounded by input size.
        values, scales = gptq_quantize(w, hessian, group_size=32, scale_rule=rule, act_order=True)
        assert torch.equal(scales, rtn_scales) and values.min() >= -8 and values.max() <= 7
        assert (x @ (w - dequant(values, scales)).T).norm() < 0.8 * err_rtn


def test_sequential_gptq_quantizes_each_block_on_inputs_through_the_quantized_prefix():
    """Block 1's GPTQ must see what block 0 *quantized* produces (the usual GPTQ), not the float model's."""
    model = odd_model(torch.float32)
    original = copy.deepcopy(model)
    results = sequential_gptq(model, TOKENS, group_size=32, batch_size=1)
    assert set(results) == {f"layers.{i}.{n}" for i in range(ODD_ARGS.n_layers) for n in
                            ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                             "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    # Block 0's weights now hold their quantized values; block 1's Hessian from that prefix reproduces GPTQ's pick.
    collector = HessianCollector({"wq": model.layers[1].attention.wq})
    with torch.no_grad():
        for row in TOKENS:
            model.forward_batch(row[None])
    collector.close()
    expected = gptq_quantize(original.layers[1].attention.wq.weight.detach(), collector.hessians["wq"], 32)
    assert torch.equal(results["layers.1.attention.wq"][0], expected[0])
    float_prefix = HessianCollector({"wq": original.layers[1].attention.wq})
    with torch.no_grad():
        original.forward_batch(TOKENS)
    float_prefix.close()
    unlike = gptq_quantize(original.layers[1].attention.wq.weight.detach(), float_prefix.hessians["wq"], 32)
    assert not torch.equal(results["layers.1.attention.wq"][0], unlike[0])  # the test can tell the two apart


def test_activation_fake_quant_matches_torchao_and_passes_gradients_straight_through():
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, dequantize_affine, quantize_affine

    from handheld.quant.fake_quant import fake_quantize_tokens_int8

    x = (torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_(True)
    block = (1, 64)
    scale, zero = choose_qparams_affine(x.detach(), MappingType.ASYMMETRIC, block, torch.int8, eps=torch.finfo(torch.float32).eps,
                                        scale_dtype=torch.float32, zero_point_dtype=torch.int8)
    reference = dequantize_affine(quantize_affine(x.detach(), block, scale, zero, torch.int8), block, scale, zero, torch.int8)
    ours = fake_quantize_tokens_int8(x)
    assert torch.equal(ours.detach(), reference) and not torch.equal(ours.detach(), x.detach())
    ours.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def options(checkpoint, calib, output, **overrides):
    settings = dict(steps=3, lr=1.0, seq_len=32, samples=8, batch_size=4, save_every=1)
    settings.update(overrides)
    return SpinQuantOptions(checkpoint=checkpoint, calib=calib, output=output, **settings)


def read_state(directory):
    return read_checkpoint(directory).state


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def spinquant_rtn(byte_checkpoint, calib_text, tmp_path_factory):
    """Through the Python API (what scripts call), with this module's small settings."""
    from handheld import api

    out = tmp_path_factory.mktemp("sq") / "rtn"
    result = api.spinquant(byte_checkpoint, calib_text, out, steps=3, lr=1.0, seq_len=32, samples=8, batch_size=4,
                           save_every=1)
    return out, result


def test_job_writes_metas_spinquant_layout(spinquant_rtn):
    out, result = spinquant_rtn
    checkpoint = read_checkpoint(out)
    assert checkpoint.args.quantization_args.spinquant and checkpoint.args.quantization_args.group_size == 32
    assert checkpoint.kind == "spinquant"
    assert checkpoint.args.architecture() == BYTE_ARGS.architecture()
    assert (out / "tokenizer.model").is_file()
    assert not (out.parent / "rtn.resume").exists()
    assert result.first_loss is not None and result.steps == 3


def test_resume_after_an_interruption_ends_identical(byte_checkpoint, calib_text, spinquant_rtn, tmp_path, monkeypatch):
    import handheld.training.cayley as learn

    calls = {"n": 0}
    real_step = learn.cayley_step

    def dying_step(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 3, after step 2's state was saved
            raise KeyboardInterrupt
        return real_step(*args)

    out = tmp_path / "resumed"
    monkeypatch.setattr(learn, "cayley_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_spinquant(options(byte_checkpoint, calib_text, out), Group(), progress=False)
    assert not out.exists() and (tmp_path / "resumed.resume" / "state.pt").is_file()
    monkeypatch.setattr(learn, "cayley_step", real_step)
    with pytest.raises(HandheldError, match="--resume"):
        run_spinquant(options(byte_checkpoint, calib_text, out), Group(), progress=False)
    with pytest.raises(HandheldError, match="another model, data or settings"):
        run_spinquant(options(byte_checkpoint, calib_text, out, lr=0.5, resume=True), Group(), progress=False)
    run_spinquant(options(byte_checkpoint, calib_text, out, resume=True), Group(), progress=False)
    assert_same_state(read_state(out), read_state(spinquant_rtn[0]))


def test_two_gloo_processes_match_one(byte_checkpoint, calib_text, spinquant_rtn, tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "handheld",
               "spinquant", "--checkpoint", str(byte_checkpoint), "--calib", str(calib_text), "-o", str(out),
               "--steps", "3", "--lr", "1.0", "--seq-len", "32", "--samples", "8", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # Gradients are summed sequence by sequence in global order: bit-identical, not merely close.
    assert_same_state(read_state(out), read_state(spinquant_rtn[0]))


def test_gptq_checkpoint_exports_and_the_pte_matches_eager(byte_checkpoint, calib_text, tmp_path):
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program
    from handheld.runtime_bindings.python.program import PteProgram

    out = tmp_path / "gptq"
    run_spinquant(options(byte_checkpoint, calib_text, out, weight_quant="gptq", steps=1), Group(), progress=False)
    pte = tmp_path / "gptq.pte"
    export_program(out, pte, ExportOptions(scheme=None, max_seq_len=PARITY_MAX_SEQ_LEN), log=lambda _: None)
    program = PteProgram(pte)
    assert program.metadata.scheme == "spinquant"
    assert_pte_matches_eager(out, pte, prompt=[104, 101, 108, 108, 111, 32], float_checkpoint=byte_checkpoint)


def test_without_rotations_the_job_writes_plain_8da4w(byte_checkpoint, calib_text, tmp_path):
    """GPTQ alone (no R1/R2/R4): the row that tells what SpinQuant's rotations add to GPTQ."""
    out = tmp_path / "gptq_only"
    result = run_spinquant(options(byte_checkpoint, calib_text, out, weight_quant="gptq", rotations=False), Group(), progress=False)
    checkpoint = read_checkpoint(out)
    assert checkpoint.kind == "8da4w" and not checkpoint.args.quantization_args.spinquant and result.steps == 0


def test_clear_errors(byte_checkpoint, calib_text, spinquant_rtn, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(HandheldError, match="fewer than one sequence"):
        run_spinquant(options(byte_checkpoint, short, tmp_path / "a"), Group(), progress=False)
    with pytest.raises(HandheldError, match="already quantized"):
        run_spinquant(options(spinquant_rtn[0], calib_text, tmp_path / "b"), Group(), progress=False)
    with pytest.raises(HandheldError, match="unknown --weight-quant"):
        options(byte_checkpoint, calib_text, tmp_path / "c", weight_quant="awq")
    with pytest.raises(HandheldError, match="unknown --massive-channels 'drop'; known: auto, keep, rotate"):
        options(byte_checkpoint, calib_text, tmp_path / "c", massive_channels="drop")
    import dataclasses
    from handheld.core.checkpoints import random_state

    odd_width = dataclasses.replace(BYTE_ARGS, dim=56)  # 56 = 28 * 2 and 27 is not prime: no Hadamard
    bad = tmp_path / "dim56"
    bad.mkdir()
    write_checkpoint(bad, odd_width, random_state(odd_width, seed=0), "meta")
    with pytest.raises(HandheldError, match="model width .* is 56"):
        run_spinquant(options(bad, calib_text, tmp_path / "d"), Group(), progress=False)
    assert not any(p.name in ("a", "b", "c", "d") for p in tmp_path.iterdir())


def test_learned_rotations_survive_a_failure_after_learning(byte_checkpoint, calib_text, tmp_path, monkeypatch):
    """The resume state is discarded only once the checkpoint is written; a damaged state is one error."""
    import handheld.training.spinquant as job

    def failing_write(*args):
        raise HandheldError("disk full (simulated)")

    out = tmp_path / "sq"
    monkeypatch.setattr(job, "_write", failing_write)
    with pytest.raises(HandheldError, match="simulated"):
        run_spinquant(options(byte_checkpoint, calib_text, out), Group(), progress=False)
    state = tmp_path / "sq.resume" / "state.pt"
    assert state.is_file()  # every learned step is still there to resume from
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(HandheldError, match="is damaged .* delete it to start over"):
        run_spinquant(options(byte_checkpoint, calib_text, out, resume=True), Group(), progress=False)
