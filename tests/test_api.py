"""The Python API (handheld/api.py) gives what the CLI gives, and fails with the CLI's one line."""

from __future__ import annotations

import json

import pytest

from handheld import api
from handheld.cli import main
from handheld.core.fetch.catalog import proxy_dir


def cli_json(capsys, *argv):
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_evaluate_gives_the_cli_eval_number(capsys, odd_checkpoint, odd_tokenizer, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abcabdabcabeabcabd" * 8)
    result = api.evaluate(odd_checkpoint, text, tokenizer=odd_tokenizer, context=32, stride=16)
    printed = json.loads(cli_json(capsys, "eval", str(odd_checkpoint), "--text", str(text), "--tokenizer",
                                  str(odd_tokenizer), "--context", "32", "--stride", "16", "--json"))
    assert result.perplexity == pytest.approx(printed["perplexity"], rel=1e-6)
    assert result.tokens_scored == printed["tokens_scored"] > 0


def test_generate_and_stream_give_the_cli_text(capsys, odd_fp32_pte, odd_tokenizer):
    made = api.generate(odd_fp32_pte, odd_tokenizer, "abcabd", max_new_tokens=12)
    printed = cli_json(capsys, "generate", str(odd_fp32_pte), "--tokenizer", str(odd_tokenizer), "--prompt", "abcabd",
                       "--max-new-tokens", "12")
    assert printed.rsplit("\n", 2)[0] == made.text and len(made.tokens) == made.stats.generated_tokens
    assert "".join(api.stream(odd_fp32_pte, odd_tokenizer, "abcabd", max_new_tokens=12)) == made.text


def test_chat_and_bench_return_objects(odd_fp32_pte, odd_chat_tokenizer):
    session = api.chat(odd_fp32_pte, odd_chat_tokenizer, max_new_tokens=3)
    assert len(session.reply("abc").tokens) <= 3 and len(session.turns) == 2
    (row,) = api.bench([odd_fp32_pte], prompt_len=8, gen_len=4, runs=1, warmup=0, threads=1)
    assert row["stats"]["decode_tok_s"]["median"] > 0 and row["scheme"] == "fp32"


def test_load_and_quantize_give_the_eager_models_export_lowers(odd_checkpoint, odd_tokenizer, tmp_path):
    import torch

    from handheld.decoding.generation import EagerRunner

    tokens = [1, 2, 3, 4, 5]
    floating = EagerRunner(api.load(odd_checkpoint, max_seq_len=32)).forward(tokens, 0)[-1]
    prepared = api.quantize(odd_checkpoint, "8da4w", max_seq_len=32, scale_rule="extreme")
    assert prepared.label == "8da4w" and prepared.quantization["scale_rule"] == "extreme"
    quantized = EagerRunner(prepared.model).forward(tokens, 0)[-1]
    # 4-bit rounding moves the logits, but not past the float model's own spread.
    assert 0 < float((quantized - floating).abs().max()) < float(floating.std())
    with pytest.raises(api.HandheldError, match="applies to xnnpack's 4-bit schemes"):
        api.quantize(odd_checkpoint, "fp32", max_seq_len=32, group_size=64)


@pytest.mark.parametrize("call, message", [
    (lambda: api.evaluate("nowhere.pte", "nowhere.txt", tokenizer="t"), "text file nowhere.txt not found"),
    (lambda: api.export("no-such-checkpoint", "out.pte", scheme="8da4w", backend="nope"), "unknown backend 'nope'"),
    (lambda: api.generate("x.pte", str(proxy_dir() / "tokenizer.model"), "hi", system="be brief"), "--system goes with --chat"),
    (lambda: api.spinquant("c", "t.txt", "out", step=3), "unknown option step for SpinQuantOptions; known: checkpoint"),
    (lambda: api.qat("c", "t.txt", "out", rank=4), "unknown option rank for QatOptions"),
    (lambda: api.qat("c", "t.txt", "out", phase="warm"), "unknown --phase 'warm'"),
])
def test_bad_input_raises_handheld_error_with_the_cli_line(call, message):
    with pytest.raises(api.HandheldError, match=message):
        call()


def test_npu_flow_through_the_api(byte_checkpoint, calib_text, tmp_path, capsys):
    """quantize_npu calibrates anywhere and evaluate scores the artefact as the CLI does; export to the NPU stops
    first, in the CLI's line, where the vendor SDK is missing."""
    made = api.quantize_npu(byte_checkpoint, calib_text, tmp_path / "m.pt2", backend="mediatek", scheme="a16w8",
                            seq_len=16, sequences=2)
    assert (made.backend, made.scheme, made.chip, made.seq_len) == ("mediatek", "a16w8", "mt6989", 16)
    assert made.calibration == {"sequences": 2, "tokens": 32}
    tokenizer = byte_checkpoint / "tokenizer.model"
    scored = api.evaluate(made.path, calib_text, tokenizer=tokenizer, context=16, stride=8, max_tokens=64)
    printed = json.loads(cli_json(capsys, "eval", str(made.path), "--text", str(calib_text), "--tokenizer",
                                  str(tokenizer), "--context", "16", "--stride", "8", "--max-tokens", "64", "--json"))
    assert scored.as_dict() == printed and scored.mode == "simulated" and scored.scheme == "mediatek a16w8"
    with pytest.raises(api.HandheldError, match="lowering to mediatek needs"):
        api.export(made.path, tmp_path / "m.pte", backend="mediatek")
    assert not (tmp_path / "m.pte").exists()
