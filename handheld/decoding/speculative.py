"""Greedy speculative decoding: a small draft proposes K tokens, the target checks them in one call.

Works with any two objects that have `forward(tokens, start_pos) -> logits[n, vocab]` and `max_seq_len`
(`.pte` programs, or eager models through `EagerRunner`); the target must return logits for every input
position (exported with `--full-logits`), so one call scores the K drafted tokens and the token after them.

Lossless: every token shown is the target's own greedy choice (the longest drafted prefix the target
agrees with, then the target's next token), so the output equals `generate(target, ...)` token for token
(up to float rounding between a K+1-token call and K+1 one-token calls). Rolling a cache back is only
a smaller position: handheld's programs mask every cache slot past the positions of the current call and
overwrite the slots a call writes, so stale entries from rejected drafts are never attended to.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from handheld.core.defaults import DRAFT_TOKENS
from handheld.core.errors import HandheldError
from handheld.core.pte_metadata import ProgramMetadata
from handheld.decoding.generation import StepModel

@dataclass(frozen=True)
class SpeculativeStats:
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float  # prompt in -> first token out (the target's prefill)
    decode_tok_s: float  # tokens after the first / time after the first
    target_calls: int  # target forward calls, prefill included (plain greedy: one per token)
    drafted: int  # draft tokens the target checked
    accepted: int  # of those, the ones it agreed with

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.generated_tokens / self.target_calls if self.target_calls else 0.0

    def line(self) -> str:
        return (
            f"prompt tokens {self.prompt_tokens} | generated {self.generated_tokens} | TTFT {self.ttft_s:.3f} s | "
            f"decode {self.decode_tok_s:.1f} tok/s | acceptance {self.acceptance_rate:.2f} "
            f"({self.accepted}/{self.drafted}) | {self.tokens_per_target_call:.2f} tokens per target call"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate,
                "tokens_per_target_call": self.tokens_per_target_call}


@dataclass
class _Output:
    """The tokens shown so far, and whether generation must stop (a stop id, the budget, the cache end)."""

    max_new_tokens: int
    stop_ids: frozenset[int]
    max_seq_len: int
    on_token: Callable[[int], None]
    tokens: list[int] = field(default_factory=list)
    done: bool = False

    def emit(self, token: int, position: int) -> None:
        """`token` would be fed at `position`; the same stopping rule as `generation.generate`."""
        if token in self.stop_ids:
            self.done = True
            return
        self.tokens.append(token)
        self.on_token(token)
        if len(self.tokens) >= self.max_new_tokens or position >= self.max_seq_len:
            self.done = True


def _argmax(logits: torch.Tensor) -> list[int]:
    return [int(i) for i in logits.argmax(dim=-1)]


def _full_logits(logits: torch.Tensor, fed: int) -> torch.Tensor:
    if logits.shape[0] != fed:
        raise HandheldError(
            f"the target returned logits for {logits.shape[0]} of {fed} positions: speculative decoding needs a "
            "target exported with --full-logits"
        )
    return logits


def _draft(draft: StepModel, pending: list[int], position: int, k: int) -> list[int]:
    """K greedy draft tokens after `pending` (tokens the draft has not seen yet, fed from `position`)."""
    proposals = []
    for _ in range(k):
        token = int(draft.forward(pending, position)[-1].argmax())
        position += len(pending)
        proposals.append(token)
        pending = [token]
    return proposals


def _unseen_by_draft(pending: list[int], next_token: int, proposals: list[int], n: int) -> list[int]:
    """The accepted tokens the draft has not been fed: it saw pending + [next_token] + proposals[:-1]."""
    if not proposals:
        return pending + [next_token]
    return proposals[-1:] if n == len(proposals) else []


def speculative_generate(
    target: StepModel,
    draft: StepModel,
    prompt: list[int],
    max_new_tokens: int,
    stop_ids: list[int],
    draft_tokens: int = DRAFT_TOKENS,
    on_token: Callable[[int], None] = lambda _: None,
) -> tuple[list[int], SpeculativeStats]:
    if draft_tokens < 1:
        raise HandheldError(f"--draft-tokens must be at least 1, got {draft_tokens}")
    max_seq_len = min(target.max_seq_len, draft.max_seq_len)
    if not prompt:
        raise HandheldError("the prompt is empty")
    if len(prompt) >= max_seq_len:
        raise HandheldError(f"prompt has {len(prompt)} tokens but the programs' max sequence length is {max_seq_len}")
    start = time.perf_counter()
    next_token = _argmax(_full_logits(target.forward(prompt, 0), len(prompt))[-1:])[0]
    first = time.perf_counter()
    out = _Output(max_new_tokens, frozenset(stop_ids), max_seq_len, on_token)
    position = len(prompt)  # where next_token goes: the target's cache holds everything before it
    out.emit(next_token, position)
    calls, drafted, accepted = 1, 0, 0
    draft_pending, draft_position = list(prompt), 0  # what the draft has not seen yet, and from where
    while not out.done:
        k = min(draft_tokens, max_seq_len - position - 1)
        proposals = _draft(draft, draft_pending + [next_token], draft_position, k) if k > 0 else []
        verdicts = _argmax(_full_logits(target.forward([next_token] + proposals, position), k + 1))
        calls += 1
        n = next((i for i, (p, v) in enumerate(zip(proposals, verdicts)) if p != v), k)
        drafted, accepted = drafted + k, accepted + n
        for i, token in enumerate(proposals[:n] + [verdicts[n]]):
            out.emit(token, position + 1 + i)
            if out.done:
                break
        # Both caches now hold next_token and the n accepted drafts (slots past them are stale, masked and
        # overwritten later); the draft never saw its own last proposal when all k were accepted.
        draft_pending = _unseen_by_draft(draft_pending, next_token, proposals, n)
        draft_position = position + 1 + n - len(draft_pending)
        position, next_token = position + 1 + n, verdicts[n]
    end = time.perf_counter()
    stats = SpeculativeStats(
        prompt_tokens=len(prompt), generated_tokens=len(out.tokens), ttft_s=first - start,
        decode_tok_s=(len(out.tokens) - 1) / (end - first) if len(out.tokens) > 1 else 0.0,
        target_calls=calls, drafted=drafted, accepted=accepted,
    )
    return out.tokens, stats


def check_compatible(target: ProgramMetadata, draft: ProgramMetadata) -> None:
    """A draft's token ids must mean what the target's mean: same vocabulary size, BOS and stop ids; and the
    target must score every position of a call."""
    for what, mine, theirs in (("vocabulary size", target.vocab_size, draft.vocab_size), ("BOS id", target.bos_id, draft.bos_id),
                               ("EOS ids", sorted(target.eos_ids), sorted(draft.eos_ids))):
        if mine != theirs:
            raise HandheldError(f"the draft does not share the target's tokenizer: {what} {theirs} vs the target's {mine}")
    if not target.full_logits:
        raise HandheldError("the target returns logits for its last position only: export it with --full-logits "
                            "to verify drafted tokens in one call")
