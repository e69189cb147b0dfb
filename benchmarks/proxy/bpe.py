"""Train a small byte-level BPE with Llama 3's pre-tokenizer split and write it as a tiktoken
`tokenizer.model` (ranks: the 256 bytes, then the merges in order), which handheld's and ExecuTorch's
Llama 3 tokenizer readers load unchanged (special tokens are appended after the ranks by the reader)."""

from __future__ import annotations

import base64
from pathlib import Path

from handheld.core.tokenizers.hf_tokenizer import byte_decoder


def train_bpe(text: str, n_ranks: int) -> list[bytes]:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from handheld.core.tokenizers.tokenizer import PATTERN

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_ranks, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator([text], trainer=trainer)
    decode = byte_decoder()
    ranks = [bytes([b]) for b in range(256)]
    seen = set(ranks)
    for merge in _merges(tok):
        token = bytes(decode[c] for c in merge)
        if token not in seen:
            seen.add(token)
            ranks.append(token)
    return ranks[:n_ranks]


def _merges(tok) -> list[str]:
    import json

    model = json.loads(tok.to_str())["model"]
    merges = model["merges"]
    return ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges]


def write_tiktoken(ranks: list[bytes], path: Path) -> None:
    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(ranks)))
