"""Fine-tuning examples as fixed-length token rows with a loss mask.

- Plain text (any file not ending in `.jsonl`): the token stream cut into windows of `seq_len`; every
  next-token prediction counts.
- JSONL chat (`.jsonl`): one dialog per line, `{"messages": [{"role": ..., "content": ...}, ...]}`,
  rendered in the model's chat format; only the assistant turns' tokens (and their end-of-turn) count.
  Dialogs longer than `seq_len` are truncated, shorter ones padded (padding never counts).

`mask[i, t]` says whether predicting `tokens[i, t]` from the tokens before it is trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from handheld.quant.calibration import text_sequences
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.chat_template import Message
from handheld.core.tokenizers.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "ipython")


@dataclass(frozen=True)
class Examples:
    tokens: torch.Tensor  # [N, seq_len] int64
    mask: torch.Tensor  # [N, seq_len] bool

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index: torch.Tensor) -> "Examples":
        return Examples(self.tokens[index], self.mask[index])


def load_examples(path: Path, tokenizer: Tokenizer, seq_len: int) -> Examples:
    if path.suffix == ".jsonl":
        return _chat_examples(path, tokenizer, seq_len)
    tokens = text_sequences(path, tokenizer, seq_len)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False  # the first token of a window has no context to be predicted from
    return Examples(tokens, mask)


def _chat_examples(path: Path, tokenizer: Tokenizer, seq_len: int) -> Examples:
    if not path.is_file():
        raise HandheldError(f"data file {path} not found")
    rows, masks = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        ids, mask = render_dialog(tokenizer, parse_dialog(line, f"{path}:{number}"))
        ids, mask = ids[:seq_len], mask[:seq_len]
        pad = seq_len - len(ids)
        rows.append(ids + [tokenizer.eos_id] * pad)  # padding is never trained on
        masks.append(mask + [False] * pad)
    if not rows:
        raise HandheldError(f"data file {path} has no dialogs")
    return Examples(torch.tensor(rows), torch.tensor(masks))


def parse_dialog(line: str, where: str) -> list[Message]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise HandheldError(f"{where}: not valid JSON ({e.msg})") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise HandheldError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    dialog = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise HandheldError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string content")
        dialog.append(Message(message["role"], message["content"]))
    if not any(m.role == "assistant" for m in dialog):
        raise HandheldError(f"{where}: the dialog has no assistant turn, so nothing to train on")
    return dialog


def render_dialog(tokenizer: Tokenizer, dialog: list[Message]) -> tuple[list[int], list[bool]]:
    """The model's chat format (its template; Llama 3's for tiktoken) and, per token, whether it is an
    assistant's (content and end of turn): each turn's tokens are what rendering the dialog up to it adds
    to the rendering before it (with the assistant header opened, for an assistant turn)."""
    ids: list[int] = []
    mask: list[bool] = []
    for i, message in enumerate(dialog):
        before = tokenizer.encode_chat(dialog[:i], add_generation_prompt=message.role == "assistant")
        after = tokenizer.encode_chat(dialog[: i + 1], add_generation_prompt=False)
        if before[: len(ids)] != ids or after[: len(before)] != before:
            raise HandheldError("the chat template does not render a dialog as a prefix of its continuation; "
                                "chat fine-tuning data needs one that does")
        mask += [False] * (len(before) - len(ids)) + [message.role == "assistant"] * (len(after) - len(before))
        ids = after
    return ids, mask
