"""A multi-turn chat over a step model (a `.pte` or the eager model): the conversation rendered in the model's own
chat template each turn, the KV cache kept across turns (only the tokens past what the cache already holds are
prefilled), and the oldest turns dropped when the conversation and a reply no longer fit the program's context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from handheld.core.tokenizers.chat_template import Message
from handheld.core.errors import HandheldError
from handheld.decoding.generation import StepModel


@dataclass(frozen=True)
class Reply:
    tokens: list[int]
    text: str
    interrupted: bool  # stopped by Ctrl-C; the partial answer stays in the conversation
    dropped_turns: int  # earlier exchanges left out so this one fits


class ChatSession:
    def __init__(self, model: StepModel, tokenizer, stop_ids: list[int], max_new_tokens: int,
                 system: str | None = None):
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.stop_ids = set(stop_ids) | set(tokenizer.stop_ids)
        # Room kept for the answer; never more than half the context, so a long --max-new-tokens still leaves history.
        self.reply_room = max(1, min(max_new_tokens, model.max_seq_len // 2))
        self.max_new_tokens = max_new_tokens
        self.turns: list[Message] = []
        self.cached: list[int] = []  # the ids whose keys and values the program's cache holds, from position 0

    def reset(self) -> None:
        """Forget the conversation (the cache is overwritten from position 0 by the next turn)."""
        self.turns, self.cached = [], []

    def prompt_for(self, user: str) -> tuple[list[int], int]:
        """The conversation plus `user` in the template, and how many old exchanges had to go to fit it."""
        system = [Message("system", self.system)] if self.system is not None else []
        dropped = 0
        while True:
            ids = self.tokenizer.encode_chat(system + self.turns[2 * dropped:] + [Message("user", user)])
            if len(ids) + self.reply_room <= self.model.max_seq_len:
                return ids, dropped
            if 2 * dropped >= len(self.turns):
                raise HandheldError(f"the message takes {len(ids)} tokens in the chat template; the program holds "
                                    f"{self.model.max_seq_len}, {self.reply_room} of them kept for the reply")
            dropped += 1

    def reply(self, user: str, on_token: Callable[[int], None] = lambda _: None) -> Reply:
        ids, dropped = self.prompt_for(user)
        self.turns = self.turns[2 * dropped:]
        tokens, interrupted = self._answer(ids, on_token)
        text = self.tokenizer.decode(tokens)
        self.turns += [Message("user", user), Message("assistant", text)]
        return Reply(tokens, text, interrupted, dropped)

    def _answer(self, ids: list[int], on_token: Callable[[int], None]) -> tuple[list[int], bool]:
        """Greedy tokens after `ids`, prefilling only what the cache does not already hold."""
        shared = _shared_prefix(self.cached, ids)
        shared = min(shared, len(ids) - 1)  # the last prompt token must run: its logits choose the first answer token
        self.cached = self.cached[:shared]
        tokens: list[int] = []
        try:
            logits = self.model.forward(ids[shared:], shared)[-1]
            self.cached = list(ids)
            token = int(logits.argmax())
            while token not in self.stop_ids and len(tokens) < self.max_new_tokens:
                tokens.append(token)
                on_token(token)
                if len(self.cached) >= self.model.max_seq_len:
                    break
                logits = self.model.forward([token], len(self.cached))[-1]
                self.cached.append(token)
                token = int(logits.argmax())
        except KeyboardInterrupt:  # Ctrl-C ends this answer, not the chat
            return tokens, True
        return tokens, False


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
