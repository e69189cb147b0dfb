"""Greedy generation with a KV cache, and the statistics ExecuTorch's LLM runner reports.

Works with any object that has `forward(tokens, start_pos) -> logits[n, vocab]` and `max_seq_len`:
a `.pte` program or the eager model (through `EagerRunner`), so both are measured the same way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Protocol

import torch

from handheld.core.errors import HandheldError


class StepModel(Protocol):
    max_seq_len: int

    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float  # prompt in -> first token out
    prefill_tok_s: float  # prompt tokens / prefill time
    decode_tok_s: float  # decode steps / decode time (the first token comes from prefill)

    def line(self) -> str:
        return (
            f"prompt tokens {self.prompt_tokens} | generated {self.generated_tokens} | "
            f"TTFT {self.ttft_s:.3f} s | prefill {self.prefill_tok_s:.1f} tok/s | decode {self.decode_tok_s:.1f} tok/s"
        )

    def as_dict(self) -> dict:
        return asdict(self)


class EagerRunner:
    """The eager PyTorch model behind the same step interface as a `.pte`."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.max_seq_len = model.max_seq_len
        model.reset_cache()

    @torch.no_grad()
    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        logits = self.model(torch.tensor([tokens]), torch.tensor([start_pos]))
        return logits[0].float()


class GreedySteps:
    """Greedy tokens one at a time, as they are chosen (what streaming reads); counts its calls for the statistics."""

    def __init__(self, model: StepModel, prompt: list[int], max_new_tokens: int, stop_ids: list[int]):
        if not prompt:
            raise HandheldError("the prompt is empty")
        if len(prompt) >= model.max_seq_len:
            raise HandheldError(f"prompt has {len(prompt)} tokens but the program's max sequence length is {model.max_seq_len}")
        self.model, self.prompt, self.max_new_tokens, self.stop_ids = model, prompt, max_new_tokens, stop_ids
        self.prefilled_at: float | None = None  # perf_counter() when the prompt's logits were in
        self.decode_steps = 0

    def __iter__(self) -> Iterator[int]:
        token = int(self.model.forward(self.prompt, 0)[-1].argmax())
        self.prefilled_at = time.perf_counter()
        position, count = len(self.prompt), 0
        while token not in self.stop_ids:
            yield token
            count += 1
            if count >= self.max_new_tokens or position >= self.model.max_seq_len:
                return
            token = int(self.model.forward([token], position)[-1].argmax())
            position += 1
            self.decode_steps += 1


def generate(
    model: StepModel,
    prompt: list[int],
    max_new_tokens: int,
    stop_ids: list[int],
    on_token: Callable[[int], None] = lambda _: None,
) -> tuple[list[int], GenerationStats]:
    steps = GreedySteps(model, prompt, max_new_tokens, stop_ids)
    start = time.perf_counter()
    generated = []
    for token in steps:
        generated.append(token)
        on_token(token)
    end = time.perf_counter()
    first = steps.prefilled_at
    stats = GenerationStats(
        prompt_tokens=len(prompt),
        generated_tokens=len(generated),
        ttft_s=first - start,
        prefill_tok_s=len(prompt) / (first - start),
        decode_tok_s=steps.decode_steps / (end - first) if steps.decode_steps else 0.0,
    )
    return generated, stats


# Synthetic prompt ids stay below the specials of any vocabulary handheld builds (>= 300 ids).
_PROMPT_ID_RANGE = (3, 250)


def synthetic_prompt(length: int) -> list[int]:
    """Token ids need no tokenizer: speed does not depend on which ids they are. A fixed formula, so the
    native runner (which takes ids on its command line) and the Python runtime see the same prompt."""
    low, high = _PROMPT_ID_RANGE
    return [low + (i * 97 + 11) % (high - low) for i in range(length)]
