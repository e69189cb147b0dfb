"""QAT+LoRA: the numerics QAT trains against are the numerics that ship; LoRA trains only adapters;
resume is exact; two processes match one; the output exports to a `.pte` matching eager; bad input
is one clear error."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import BYTE_ARGS, PARITY_MAX_SEQ_LEN, assert_pte_matches_eager, PARITY_SHARE_OF_SPREAD
from handheld.quant.schemes import checkpoint_model
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.training.distributed import Group
from handheld.core.errors import HandheldError
from handheld.training.finetune_data import load_examples, render_dialog
from handheld.quant.mobile_8da4w import quantize_8da4w
from handheld.training.qat import QatOptions, _float_model, _prepare, _quantized_args, convert, run_qat
from handheld.core.tokenizers.chat_template import Message
from handheld.core.tokenizers.tokenizer import load_tokenizer
from handheld.training.loop import TrainConfig

TOKENS = torch.randint(0, BYTE_ARGS.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))


def options(checkpoint, data, output, phase="both", **overrides):
    train = TrainConfig(steps=4, lr=1e-3, batch_size=4, grad_accum=2, warmup=1, eval_every=2, save_every=2)
    train = dataclasses.replace(train, **{k: overrides.pop(k) for k in list(overrides) if hasattr(train, k)})
    settings = dict(seq_len=32, lora_rank=4, lora_alpha=8.0, lora_lr=1e-2)
    settings.update(overrides)
    return QatOptions(checkpoint=checkpoint, data=data, output=output, phase=phase, train=train, **settings)


@pytest.mark.parametrize("scale_rule", ["weighted", "absmax"])
def test_converted_model_computes_what_fake_quantization_trained(byte_checkpoint, calib_text, tmp_path, scale_rule):
    opts = options(byte_checkpoint, calib_text, tmp_path / "unused", scale_rule=scale_rule)
    model = _prepare(_prepare(_float_model(read_checkpoint(byte_checkpoint), opts), "qat", opts), "lora", opts)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adaptor.B." in name:  # fresh adapters are zero; make them matter
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    model.eval()
    with torch.no_grad():
        trained = model.forward_batch(TOKENS)
        shipped = convert(model, _quantized_args(read_checkpoint(byte_checkpoint), opts)).forward_batch(TOKENS)
    torch.testing.assert_close(shipped, trained, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def qat_both(byte_checkpoint, calib_text, tmp_path_factory):
    """Through the Python API (what scripts call), with this module's small schedule."""
    from handheld import api

    out = tmp_path_factory.mktemp("qat") / "both"
    results = api.qat(byte_checkpoint, calib_text, out, steps=4, lr=1e-3, batch_size=4, grad_accum=2, warmup=1,
                      eval_every=2, save_every=2, seq_len=32, lora_rank=4, lora_alpha=8.0, lora_lr=1e-2)
    return out, results


def test_both_phases_write_metas_qlora_layout(qat_both):
    out, results = qat_both
    assert [r.phase for r in results] == ["qat", "lora"]
    assert all(r.validation and r.validation[-1][0] == 4 for r in results)
    checkpoint = read_checkpoint(out)
    assert checkpoint.kind == "qat-lora"
    assert checkpoint.args.lora_args.rank == 4 and checkpoint.args.lora_args.scale == 2.0
    assert checkpoint.args.quantization_args.group_size == 32
    assert checkpoint.state["layers.0.attention.wq.adaptor.A.weight"].shape == (4, BYTE_ARGS.dim)


@pytest.mark.parametrize("scale_rule", ["weighted", "absmax"])
def test_lora_phase_moves_only_the_adapters_and_they_change_the_output(byte_checkpoint, calib_text, tmp_path, scale_rule):
    out = tmp_path / "lora"
    run_qat(options(byte_checkpoint, calib_text, out, phase="lora", scale_rule=scale_rule), Group(), progress=False)
    state = read_checkpoint(out).state
    # The backbone is the float model rounded by the rule fake quantization trained on: export's own rounding.
    original = quantize_8da4w(build_model(read_checkpoint(byte_checkpoint), max_seq_len=8).float(), scale_rule=scale_rule)
    for name, param in original.named_parameters():
        if hasattr(param, "qdata"):
            assert torch.equal(state[name], param.qdata), f"backbone {name} moved"
    model = checkpoint_model(read_checkpoint(out), max_seq_len=32)
    with torch.no_grad():
        with_adapters = model.forward_batch(TOKENS)
        for name, param in model.named_parameters():
            if ".adaptor.B." in name:
                param.zero_()
        without = model.forward_batch(TOKENS)
    # Well above the .pte parity tolerance, so an export that dropped these adapters could not pass it.
    assert float((with_adapters - without).abs().max() / with_adapters.std()) > 3 * PARITY_SHARE_OF_SPREAD


def test_resume_after_a_kill_is_bit_identical(byte_checkpoint, calib_text, qat_both, tmp_path, monkeypatch):
    import handheld.training.loop as training

    real = training.lr_at
    calls = {"n": 0}

    def dying_lr_at(step, config):
        calls["n"] += 1
        if calls["n"] == 4 + 3:  # lora phase, step 3 (its state was saved after step 2)
            raise KeyboardInterrupt
        return real(step, config)

    out = tmp_path / "resumed"
    monkeypatch.setattr(training, "lr_at", dying_lr_at)
    with pytest.raises(KeyboardInterrupt):
        run_qat(options(byte_checkpoint, calib_text, out), Group(), progress=False)
    monkeypatch.setattr(training, "lr_at", real)
    assert not out.exists()
    run_qat(options(byte_checkpoint, calib_text, out, resume=True), Group(), progress=False)
    expected, got = read_checkpoint(qat_both[0]).state, read_checkpoint(out).state
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_two_gloo_processes_match_one(byte_checkpoint, calib_text, tmp_path):
    one = tmp_path / "one"
    run_qat(options(byte_checkpoint, calib_text, one, steps=2, lora_lr=1e-3), Group(), progress=False)
    two = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "handheld",
               "qat", "--checkpoint", str(byte_checkpoint), "--data", str(calib_text), "-o", str(two), "--steps", "2",
               "--lr", "1e-3", "--lora-lr", "1e-3", "--batch-size", "4", "--grad-accum", "2", "--warmup", "1",
               "--eval-every", "2", "--save-every", "2", "--seq-len", "32", "--lora-rank", "4", "--lora-alpha", "8"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # DDP sums gradients in another order than one process; AdamW's normalised step turns the last-bit
    # differences of near-zero gradients into full-size ones, and fake quantization may then round a
    # weight the other way. So: the same function, not the same bits (a float-only step is the same to 1e-6).
    expected, got = read_checkpoint(one).state, read_checkpoint(two).state
    for key in expected:
        if expected[key].dtype == torch.int8:
            diff = (expected[key].int() - got[key].int()).abs()
            assert diff.max() <= 1 and diff.float().mean() < 0.01, key
    original = build_model(read_checkpoint(byte_checkpoint), 32).forward_batch(TOKENS)
    a, b = (checkpoint_model(read_checkpoint(d), 32).forward_batch(TOKENS) for d in (one, two))
    assert (a - b).abs().max() < 0.1 * (a - original).abs().max()


def test_output_exports_and_the_pte_matches_eager(qat_both, byte_checkpoint, tmp_path):
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program
    from handheld.runtime_bindings.python.program import PteProgram

    pte = tmp_path / "qat_lora.pte"
    export_program(qat_both[0], pte, ExportOptions(scheme=None, max_seq_len=PARITY_MAX_SEQ_LEN), log=lambda _: None)
    program = PteProgram(pte)
    assert program.metadata.scheme == "qat-lora"
    assert_pte_matches_eager(qat_both[0], pte, prompt=[104, 101, 108, 108, 111, 32], float_checkpoint=byte_checkpoint)


def test_chat_dialogs_train_on_assistant_tokens_only(byte_checkpoint, tmp_path):
    tokenizer = load_tokenizer(byte_checkpoint / "tokenizer.model")
    ids, mask = render_dialog(tokenizer, [Message("user", "hi"), Message("assistant", "ok")])
    trained = [t for t, m in zip(ids, mask) if m]
    assert trained == [ord("o"), ord("k"), tokenizer.eot_id]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}) + "\n")
    examples = load_examples(data, tokenizer, seq_len=64)
    assert examples.tokens.shape == (1, 64) and int(examples.mask.sum()) == 3


def test_clear_errors(byte_checkpoint, calib_text, qat_both, tmp_path):
    def fails(data_text, pattern, suffix=".jsonl", **overrides):
        data = tmp_path / f"data{suffix}"
        data.write_text(data_text)
        with pytest.raises(HandheldError, match=pattern):
            run_qat(options(byte_checkpoint, data, tmp_path / "out", **overrides), Group(), progress=False)

    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    fails("", "is empty", suffix=".txt")
    fails(good + "\n{not json\n", r"data.jsonl:2: not valid JSON")
    fails(good + "\n" + json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n", r":2: the dialog has no assistant turn")
    fails(json.dumps({"messages": [{"role": "robot", "content": "a"}]}), r":1: each message needs a role")
    fails(calib_text.read_text(), "LoRA rank 500 does not fit", suffix=".txt", lora_rank=500)
    with pytest.raises(HandheldError, match="unknown --phase"):
        options(byte_checkpoint, calib_text, tmp_path / "o", phase="dpo")
    with pytest.raises(HandheldError, match="already quantized"):
        run_qat(options(qat_both[0], calib_text, tmp_path / "o"), Group(), progress=False)
    assert not (tmp_path / "out").exists()


def test_resuming_another_models_state_is_refused(byte_checkpoint, calib_text, tmp_path, monkeypatch):
    import shutil

    import handheld.training.loop as training
    from handheld.core.checkpoints import random_state, write_checkpoint

    out = tmp_path / "run"
    monkeypatch.setattr(training, "validation_loss", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed at step 3, after step 2's state was saved
        run_qat(options(byte_checkpoint, calib_text, out, phase="float", eval_every=3), Group(), progress=False)
    monkeypatch.undo()
    other = tmp_path / "other"  # the same shape, other weights
    other.mkdir()
    write_checkpoint(other, BYTE_ARGS, random_state(BYTE_ARGS, seed=9, dtype=torch.float32), "meta")
    shutil.copyfile(byte_checkpoint / "tokenizer.model", other / "tokenizer.model")
    with pytest.raises(HandheldError, match="another model, data or settings"):
        run_qat(options(other, calib_text, out, phase="float", eval_every=3, resume=True), Group(), progress=False)
    run_qat(options(byte_checkpoint, calib_text, out, phase="float", eval_every=3, resume=True), Group(), progress=False)
    assert read_checkpoint(out).args.quantization_args is None
