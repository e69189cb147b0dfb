"""The Python API (handheld/api.py) gives what the CLI gives, and fails with the CLI's one line."""

from __future__ import annotations

import json

import pytest

from handheld import api
from handheld.cli import main
from handheld.core.catalog import proxy_dir


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


@pytest.mark.parametrize("call, message", [
    (lambda: api.evaluate("nowhere.pte", "nowhere.txt", tokenizer="t"), "text file nowhere.txt not found"),
    (lambda: api.export("no-such-checkpoint", "out.pte", scheme="8da4w", backend="nope"), "unknown backend 'nope'"),
    (lambda: api.generate("x.pte", str(proxy_dir() / "tokenizer.model"), "hi", system="be brief"), "system goes with chat"),
])
def test_bad_input_raises_handheld_error_with_the_cli_line(call, message):
    with pytest.raises(api.HandheldError, match=message):
        call()
