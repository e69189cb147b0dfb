"""Llama 3's tokenizer: tiktoken BPE ranks from `tokenizer.model` + 256 special tokens after them.

The file format is tiktoken's (one `base64(token) rank` per line); reading it executes nothing.
Also writes small byte-level tokenizers in the same format, for models with a tiny vocabulary.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from handheld.errors import HandheldError

# Llama 3's pre-tokenizer split pattern.
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256


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


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | ipython
    content: str


class Tokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise HandheldError(f"tokenizer {path} not found")
        try:
            ranks = load_tiktoken_bpe(str(path))
        except (ValueError, UnicodeDecodeError, base64.binascii.Error) as e:
            raise HandheldError(f"{path} is not a tiktoken tokenizer.model ({e})") from None
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
        ids = self._encoding.encode(text, disallowed_special=())
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._encoding.decode_bytes(list(ids))

    def encode_header(self, role: str) -> list[int]:
        return [self.special["<|start_header_id|>"], *self.encode(role), self.special["<|end_header_id|>"], *self.encode("\n\n")]

    def encode_message(self, message: Message) -> list[int]:
        return self.encode_header(message.role) + self.encode(message.content.strip()) + [self.eot_id]

    def encode_dialog_prompt(self, dialog: Iterable[Message]) -> list[int]:
        """Llama 3 chat format, ending with an open assistant header for the model to complete."""
        ids = [self.bos_id]
        for message in dialog:
            ids += self.encode_message(message)
        return ids + self.encode_header("assistant")


def write_byte_tokenizer(path: Path) -> None:
    """A 256-rank byte-level tokenizer in tiktoken format: a vocabulary of 512 with the specials."""
    lines = (f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256))
    path.write_text("\n".join(lines) + "\n")
