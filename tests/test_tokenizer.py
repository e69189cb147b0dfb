"""Golden token ids with Meta's real Llama 3 tokenizer, cross-checked against Hugging Face's tokenizer.json."""

import codecs

import pytest

from handheld.core.tokenizers.chat_template import Message
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.tokenizer import Llama3Tokenizer as Tokenizer, write_byte_tokenizer

GOLDEN = {
    "Hello, world!": [128000, 9906, 11, 1917, 0],
    "The quick brown fox jumps over the lazy dog.": [128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13],
    "héllo ✓ 日本語 🦙": [128000, 71, 19010, 385, 53475, 105180, 102158, 11410, 99, 247],
    "  def f(x):\n\treturn x**2  # 12345": [128000, 220, 711, 282, 2120, 997, 862, 865, 334, 17, 220, 674, 220, 4513, 1774],
}

DIALOG = [
    Message("system", "You are a helpful assistant."),
    Message("user", "What is the capital of France?"),
    Message("assistant", "Paris."),
    Message("user", "And of Italy?"),
]
DIALOG_IDS = [
    128000, 128006, 9125, 128007, 271, 2675, 527, 264, 11190, 18328, 13, 128009,
    128006, 882, 128007, 271, 3923, 374, 279, 6864, 315, 9822, 30, 128009,
    128006, 78191, 128007, 271, 60704, 13, 128009,
    128006, 882, 128007, 271, 3112, 315, 15704, 30, 128009,
    128006, 78191, 128007, 271,
]


@pytest.fixture(scope="module")
def tok(llama3_tokenizer_path):
    return Tokenizer(llama3_tokenizer_path)


def test_vocabulary_layout(tok):
    assert tok.n_ranks == 128000
    assert tok.vocab_size == 128256
    assert (tok.bos_id, tok.eos_id, tok.eom_id, tok.eot_id) == (128000, 128001, 128008, 128009)
    assert tok.special["<|start_header_id|>"] == 128006
    assert tok.special["<|reserved_special_token_247|>"] == 128255


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_ids(tok, text):
    assert tok.encode(text, bos=True) == GOLDEN[text]
    assert tok.decode(GOLDEN[text][1:]) == text


def test_two_turn_dialog_golden_ids(tok):
    assert tok.encode_dialog_prompt(DIALOG) == DIALOG_IDS


def test_agrees_with_hugging_face_tokenizer_json(tok, llama3_tokenizer_json):
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(llama3_tokenizer_json))
    texts = list(GOLDEN) + ["I'm here; they'll go.\r\n\r\n  x", "1234567 + 89 = ?", "émigré naïve café ÆØÅ", "\t\t\n \n"]
    for text in texts:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


def test_special_token_text_in_user_input_is_not_a_control_token(tok):
    assert 128009 not in tok.encode("<|eot_id|>")


def test_multibyte_characters_split_across_tokens_stream_correctly(tok):
    ids = GOLDEN["héllo ✓ 日本語 🦙"][1:]
    pieces = [tok.decode_bytes([i]) for i in ids]
    assert any(_invalid_utf8(p) for p in pieces)  # the llama emoji spans several tokens
    decoder = codecs.getincrementaldecoder("utf-8")()
    assert "".join(decoder.decode(p) for p in pieces) + decoder.decode(b"", final=True) == "héllo ✓ 日本語 🦙"


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_byte_tokenizer_round_trips_any_text(tmp_path):
    path = tmp_path / "tokenizer.model"
    write_byte_tokenizer(path)
    tok = Tokenizer(path)
    assert tok.vocab_size == 512
    assert tok.bos_id == 256 and tok.eot_id == 265
    text = "naïve 🦙\n"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text.encode())


def test_a_tokenizer_rewritten_at_the_same_path_is_read_anew(tmp_path, monkeypatch):
    """tiktoken's loader caches files by path; handheld parses them itself, so a rewrite is seen."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tokenizer.model"
    write_byte_tokenizer(path)
    assert Tokenizer("tokenizer.model").encode("ab") == [97, 98]
    ranks = [bytes([b]) for b in range(256)] + [b"ab"]
    import base64

    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    assert Tokenizer("tokenizer.model").encode("ab") == [256]


def test_very_long_runs_are_cut_before_tiktoken(tok):
    text = "a" * 60_000 + " " * 30_000 + "b"
    ids = tok.encode(text)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("content", [b"not base64!! 0\n", b"YQ== 0\nYQ== 1\n", b"YQ== 5\n", b"\x00\xff\xfe"])
def test_malformed_tiktoken_files_are_named(tmp_path, content):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(HandheldError, match="tokenizer.model"):
        Tokenizer(path)


def test_bytes_without_a_rank_and_ids_past_the_vocabulary_fail_cleanly(tmp_path):
    """A tiktoken file lacking byte ranks made tiktoken panic (a BaseException, a traceback) on encoding; a model's
    padding rows can emit ids past the tokenizer's vocabulary, which have no text."""
    import base64

    import pytest

    from handheld.core.errors import HandheldError
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    path = tmp_path / "letters.model"
    path.write_text("".join(f"{base64.b64encode(bytes([97 + i])).decode()} {i}\n" for i in range(26)))
    tok = load_tokenizer(str(path))
    with pytest.raises(HandheldError, match=r"cannot encode 'a\\nb': it has no rank for some of its bytes"):
        tok.encode("a\nb")
    assert tok.decode([0, tok.vocab_size, tok.vocab_size + 17, 1]) == "ab" and tok.decode_bytes([tok.vocab_size]) == b""
