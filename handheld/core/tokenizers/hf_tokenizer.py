"""Tokenizers built with Hugging Face's `tokenizers` library: from a `tokenizer.json` (with its
`tokenizer_config.json` beside it, when present, for BOS/EOS and the chat template), or from a GGUF file's
own vocabulary (byte-level BPE: tokens + merges, `tokenizer.ggml.model = gpt2`).

Plain text is encoded with special-token strings treated as text; a chat is rendered with the model's
template and its control tokens parsed, as transformers does. `decode_bytes` gives each token's raw bytes,
so a stream of tokens decodes to valid UTF-8 even when a character spans tokens.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from handheld.core.tokenizers.chat_template import ChatTemplate, Message
from handheld.core.llama.config import read_json_object
from handheld.core.errors import HandheldError, first_line

# Tokens that end a turn or a document in the vocabularies handheld meets; any present counts as a stop.
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>")
# GGUF pre-tokenizer names -> whether digits are split one by one before the GPT-2 byte-level regex.
_GGUF_PRE_TOKENIZERS = {"smollm": True, "gpt-2": False, "default": False, "starcoder": True, "refact": True}
_GGUF_CONTROL = 3  # tokenizer.ggml.token_type of control tokens
_GGUF_USER_DEFINED = 4


class HFTokenizer:
    def __init__(self, tokenizer, *, bos_id: int | None, eos_id: int, add_bos: bool, template: ChatTemplate | None,
                 source: str, kind: str):
        self._tok = tokenizer
        self._tok.encode_special_tokens = True  # plain text: "<|im_end|>" typed by a user is text
        self.bos_id = bos_id if bos_id is not None else -1
        self.eos_id = eos_id
        self.add_bos = add_bos and bos_id is not None
        self.template = template
        self.source = source
        self.kind = kind
        self._token_bytes = _token_bytes_table(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> list[int]:
        found = [self._tok.token_to_id(name) for name in END_TOKENS]
        return sorted({self.eos_id, *(i for i in found if i is not None)})

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id >= 0 else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._token_bytes
        return b"".join(table[i] if 0 <= i < len(table) else b"" for i in ids)

    def encode_chat(self, dialog: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """The template's markup with its control tokens as control ids; each message's text as plain text, so
        "<|im_end|>" typed in a message can never end a turn or open one (a forged turn)."""
        if self.template is None:
            raise HandheldError(f"{self.source} has no chat template: --chat needs one (tokenizer_config.json or GGUF)")
        ids = []
        for piece, is_message in split_rendered_chat(self.template, dialog, add_generation_prompt):
            self._tok.encode_special_tokens = is_message  # markup: parse control tokens; messages: text only
            try:
                ids += self._tok.encode(piece, add_special_tokens=False).ids
            finally:
                self._tok.encode_special_tokens = True
        return ids

    def save_json(self, path: Path) -> None:
        """As tokenizer.json (what ExecuTorch's LLM runner reads)."""
        self._tok.save(str(path))


def split_rendered_chat(template: ChatTemplate, dialog: list[Message],
                        add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The rendered chat as (text, is a message's content) pieces, in order. The template renders marker strings
    in place of the contents (padded with a space each side: a template that trims its content drops them,
    and the content is then trimmed too, as the template would have); a template that moves or repeats a
    content is refused rather than guessed at."""
    markers = [f"\ue000{i}\ue001" for i in range(len(dialog))]  # private-use code points: never in a template
    text = template.render([{"role": m.role, "content": f" {marker} "} for m, marker in zip(dialog, markers)],
                           add_generation_prompt)
    pieces, rest = [], text
    for message, marker in zip(dialog, markers):
        if text.count(marker) != 1 or marker not in rest:
            raise HandheldError("the model's chat template repeats, drops or reorders a message's text; handheld cannot keep "
                                "that text apart from the template's control tokens")
        before, padded, after = rest.partition(f" {marker} ")
        if not padded:  # the template trimmed what it was given
            before, _, after = rest.partition(marker)
            pieces += [(before, False), (message.content.strip(), True)]
        else:
            pieces += [(before, False), (message.content, True)]
        rest = after
    return [piece for piece in pieces + [(rest, False)] if piece[0]]


def write_tokenizer_files(tokenizer: HFTokenizer, folder: Path) -> Path:
    """tokenizer.json, and tokenizer_config.json with BOS/EOS and the chat template, written atomically."""
    from handheld.core.atomic import atomic_path

    target = folder / "tokenizer.json"
    with atomic_path(target) as tmp:
        tokenizer.save_json(tmp)
    config = {"add_bos_token": tokenizer.add_bos, "eos_token": tokenizer.decode_bytes([tokenizer.eos_id]).decode()}
    if tokenizer.bos_id >= 0:
        config["bos_token"] = tokenizer.decode_bytes([tokenizer.bos_id]).decode()
    if tokenizer.template is not None:
        config["chat_template"] = tokenizer.template.source
    with atomic_path(folder / "tokenizer_config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def from_tokenizer_json(path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises its own exception type for every parse error
        raise HandheldError(f"{path} is not a Hugging Face tokenizer.json ({first_line(e)})") from None
    config = _read_config(path.with_name("tokenizer_config.json"))
    bos = _special_id(tok, config.get("bos_token"))
    eos = _special_id(tok, config.get("eos_token"))
    if eos is None:
        eos = next((tok.token_to_id(t) for t in END_TOKENS if tok.token_to_id(t) is not None), None)
    if eos is None:
        raise HandheldError(f"{path}: no end-of-sequence token (tokenizer_config.json's eos_token, or one of "
                            f"{', '.join(END_TOKENS)})")
    template_text = config.get("chat_template")
    template = ChatTemplate(template_text, _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))) \
        if isinstance(template_text, str) else None
    return HFTokenizer(tok, bos_id=bos, eos_id=eos, add_bos=bool(config.get("add_bos_token", bos is not None)),
                       template=template, source=str(path), kind="tokenizer.json")


def _read_config(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.is_file() else {}


def _token_text(value: Any) -> str:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _special_id(tok, value: Any) -> int | None:
    text = _token_text(value)
    return tok.token_to_id(text) if text else None


def from_gguf(path: Path) -> HFTokenizer:
    """The vocabulary a GGUF file carries (byte-level BPE); SentencePiece-style vocabularies are refused."""
    from handheld.core.checkpoints.gguf import open_gguf

    fields = open_gguf(path).fields
    model = _field(fields, "tokenizer.ggml.model", path, required=True)
    if model != "gpt2":
        raise HandheldError(f"{path}: GGUF vocabulary of type {model!r} is not supported (handheld reads byte-level BPE, "
                            "'gpt2'); pass the model's tokenizer.json with --tokenizer")
    tokens = _field(fields, "tokenizer.ggml.tokens", path, required=True)
    merges = _field(fields, "tokenizer.ggml.merges", path, required=True)
    types = _field(fields, "tokenizer.ggml.token_type", path) or [1] * len(tokens)
    pre = _field(fields, "tokenizer.ggml.pre", path) or "default"
    if pre not in _GGUF_PRE_TOKENIZERS:
        raise HandheldError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(_GGUF_PRE_TOKENIZERS)}")
    if len(types) != len(tokens) or len(set(tokens)) != len(tokens):
        raise HandheldError(f"{path}: the GGUF vocabulary is inconsistent ({len(tokens)} tokens, {len(types)} types, "
                            f"{len(set(tokens))} distinct)")
    tok = _byte_level_bpe(tokens, merges, types, _GGUF_PRE_TOKENIZERS[pre], path)
    bos = _token_id(fields, "tokenizer.ggml.bos_token_id", len(tokens), path)
    eos = _token_id(fields, "tokenizer.ggml.eos_token_id", len(tokens), path)
    if eos is None:
        raise HandheldError(f"{path}: tokenizer.ggml.eos_token_id is missing")
    template = _field(fields, "tokenizer.chat_template", path)
    chat = ChatTemplate(template, tokens[bos] if bos is not None else "", tokens[eos]) if template else None
    add_bos = _field(fields, "tokenizer.ggml.add_bos_token", path)
    return HFTokenizer(tok, bos_id=bos, eos_id=eos, add_bos=bool(add_bos) if add_bos is not None else True,
                       template=chat, source=str(path), kind="gguf")


def _field(fields, key: str, path: Path, required: bool = False) -> Any:
    if key not in fields:
        if required:
            raise HandheldError(f"{path}: {key} is missing (no vocabulary in this GGUF file)")
        return None
    try:
        return fields[key].contents()
    except (ValueError, IndexError, UnicodeDecodeError, TypeError) as e:
        raise HandheldError(f"{path}: {key} is malformed ({first_line(e)})") from None


def _token_id(fields, key: str, n_tokens: int, path: Path) -> int | None:
    value = _field(fields, key, path)
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < n_tokens:
        raise HandheldError(f"{path}: {key} {value!r} is not a token id (the vocabulary has {n_tokens})")
    return value


def _byte_level_bpe(tokens: list[str], merges: list[str], types: list[int], split_digits: bool, path: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    try:
        pairs = [tuple(merge.split(" ", 1)) for merge in merges]
        tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    except Exception as e:  # tokenizers' own exception type: a merge naming unknown tokens, for one
        raise HandheldError(f"{path}: the GGUF merges do not fit its tokens ({first_line(e)})") from None
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if split_digits else byte_level
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED)]
    tok.add_special_tokens(specials)
    return tok


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: each byte is shown as a printable character; this inverts it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    shown, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            shown.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, shown)}


def _token_bytes_table(tok) -> list[bytes]:
    """Raw bytes of every id: special tokens as their text, byte-level tokens through GPT-2's alphabet,
    SentencePiece-style tokens with their ▁ spaces and <0xNN> byte fallbacks."""
    vocab = tok.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1 if vocab else 0)
    added = {token.content for token in tok.get_added_tokens_decoder().values()}
    byte_level = type(tok.decoder).__name__ == "ByteLevel"
    decoder = byte_decoder()
    for token, i in vocab.items():
        if token in added or not byte_level:
            table[i] = _sentencepiece_bytes(token) if not byte_level and token not in added else token.encode()
        else:
            table[i] = bytes(decoder[c] for c in token if c in decoder)
    return table


def _sentencepiece_bytes(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("\u2581", " ").encode()

