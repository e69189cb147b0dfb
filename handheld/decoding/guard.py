"""Run a Llama Guard program on a prompt (or a prompt and its response) and read its verdict.

Greedy decoding of a few tokens from the guard prompt, as the reference does; works with any step model
(`.pte` program or eager), so the classification path is tested on tiny models with known verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from handheld.core.tokenizers.chat_template import Message
from handheld.core.tokenizers.guard_prompt import Verdict, guard_prompt, parse_verdict
from handheld.decoding.generation import StepModel, generate

# "unsafe", a newline and a few categories: the reference generates at most 20 tokens.
MAX_VERDICT_TOKENS = 20


@dataclass
class Guard:
    model: StepModel
    tokenizer: object  # handheld.core.tokenizers.tokenizer.Tokenizer
    stop_ids: list[int]

    def check(self, prompt: str, response: str | None = None) -> Verdict:
        ids = self.tokenizer.encode_chat([Message("user", guard_prompt(prompt, response))])
        tokens, _ = generate(self.model, ids, MAX_VERDICT_TOKENS, sorted(set(self.stop_ids) | set(self.tokenizer.stop_ids)))
        return parse_verdict(self.tokenizer.decode(tokens))
