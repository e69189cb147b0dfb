"""Tokenizers: one interface, one table of file kinds (`load_tokenizer` picks by content).

- tiktoken `tokenizer.model` (Llama 3): BPE ranks + 256 special tokens after them, Llama 3's chat format.
  The file (one `base64(token) rank` per line) is parsed here: tiktoken's own loader caches files by path
  in a shared temporary folder and never rechecks them, so a rewritten or planted file would load stale.
- Hugging Face `tokenizer.json`, and a GGUF file's own vocabulary: `handheld.core.tokenizers.hf_tokenizer`.
Reading any of them executes nothing. Also writes small byte-level tokenizers in tiktoken's format.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterable

import tiktoken

from handheld.core.tokenizers.chat_template import Message
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.hf_tokenizer import HFTokenizer, from_gguf, from_tokenizer_json

# Llama 3's pre-tokenizer split pattern.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256
# Meta's reference tokenizer cuts long input so tiktoken's regex never sees a pathological run.
MAX_CHUNK_CHARS = 400_000
MAX_RUN_CHARS = 25_000


def special_token_names() -> list[str]:
    """Llama 3.1/3.2's 256 special tokens, in id order after the ranks."""
    named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ]
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(3, NUM_SPECIAL - len(named) + 3)]
    return named + reserved


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken's file format, parsed without its path-keyed cache; ranks must be 0..n-1, each once."""
    ranks: dict[bytes, int] = {}
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, base64.binascii.Error) as e:
        raise HandheldError(f"{path} is not a tiktoken tokenizer.model (line {number}: {e})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HandheldError(f"{path} is not a tiktoken tokenizer.model: ranks are not 0..{len(ranks) - 1}, each once")
    if not ranks:
        raise HandheldError(f"{path} is an empty tokenizer.model")
    return ranks


class Llama3Tokenizer:
    kind = "tiktoken"
    add_bos = True  # Llama 3 prompts start with <|begin_of_text|>

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise HandheldError(f"tokenizer {path} not found")
        ranks = read_tiktoken_ranks(path)
        self.n_ranks = len(ranks)
        self.special = {name: self.n_ranks + i for i, name in enumerate(special_token_names())}
        self._encoding = tiktoken.Encoding(
            name=path.name, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=self.special
        )
        self.bos_id = self.special["<|begin_of_text|>"]
        self.eos_id = self.special["<|end_of_text|>"]
        self.eot_id = self.special["<|eot_id|>"]
        self.eom_id = self.special["<|eom_id|>"]

    @property
    def vocab_size(self) -> int:
        return self.n_ranks + NUM_SPECIAL

    @property
    def stop_ids(self) -> list[int]:
        return [self.eos_id, self.eom_id, self.eot_id]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Plain text: special-token strings in it are encoded as text, never as control ids."""
        ids = []
        for chunk in _chunks(text):
            try:
                ids += self._encoding.encode(chunk, disallowed_special=())
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # tiktoken panics (a BaseException) on a byte its ranks lack
                raise HandheldError(f"the tokenizer cannot encode {chunk[:20]!r}: it has no rank for some of its "
                                    "bytes (a byte-level vocabulary needs all 256)") from None
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding.decode(self._known(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._encoding.decode_bytes(self._known(ids))

    def _known(self, ids: Iterable[int]) -> list[int]:
        """Ids past the vocabulary (a model's padding rows can emit them) have no text; tiktoken panics on them."""
        return [i for i in ids if 0 <= i < self.vocab_size]

    def encode_header(self, role: str) -> list[int]:
        return [self.special["<|start_header_id|>"], *self.encode(role), self.special["<|end_header_id|>"], *self.encode("\n\n")]

    def encode_message(self, message: Message) -> list[int]:
        return self.encode_header(message.role) + self.encode(message.content.strip()) + [self.eot_id]

    def encode_dialog_prompt(self, dialog: Iterable[Message]) -> list[int]:
        """Llama 3 chat format, ending with an open assistant header for the model to complete."""
        return self.encode_chat(list(dialog))

    def encode_chat(self, dialog: list[Message], add_generation_prompt: bool = True) -> list[int]:
        ids = [self.bos_id]
        for message in dialog:
            ids += self.encode_message(message)
        return ids + (self.encode_header("assistant") if add_generation_prompt else [])


def write_byte_tokenizer(path: Path) -> None:
    """A 256-rank byte-level tokenizer in tiktoken format: a vocabulary of 512 with the specials."""
    lines = (f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256))
    path.write_text("\n".join(lines) + "\n")


def _chunks(text: str) -> Iterable[str]:
    """Pieces of at most MAX_CHUNK_CHARS, cut so no run of whitespace or of non-whitespace exceeds
    MAX_RUN_CHARS (Meta's reference tokenizer does the same; tiktoken can fail on longer runs)."""
    for start in range(0, len(text), MAX_CHUNK_CHARS):
        yield from _split_runs(text[start : start + MAX_CHUNK_CHARS])


def _split_runs(text: str) -> Iterable[str]:
    run_start, run_is_space, begin = 0, None, 0
    for i, char in enumerate(text):
        is_space = char.isspace()
        if is_space != run_is_space:
            run_start, run_is_space = i, is_space
        elif i - run_start >= MAX_RUN_CHARS:
            yield text[begin:i]
            begin = run_start = i
    yield text[begin:]


Tokenizer = Llama3Tokenizer | HFTokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer a file holds, decided by its content: GGUF (magic), tokenizer.json (JSON), tiktoken."""
    path = Path(path)
    if not path.is_file():
        raise HandheldError(f"tokenizer {path} not found")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"GGUF"):
        return from_gguf(path)
    if head.startswith(b"{"):
        return from_tokenizer_json(path)
    return Llama3Tokenizer(path)


def prompt_ids(tokenizer: Tokenizer, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
    """What `handheld generate` feeds a model: the text, with BOS when the tokenizer adds one; or, with `chat`,
    the text as a user turn (after `system`, when given) in the tokenizer's chat template."""
    if not chat:
        return tokenizer.encode(prompt, bos=tokenizer.add_bos)
    turns = [Message("system", system)] if system is not None else []
    return tokenizer.encode_chat(turns + [Message("user", prompt)])
