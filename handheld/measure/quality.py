"""Quality of a model on a text: sliding-window perplexity, and against a float reference, top-1 token
agreement and mean KL divergence. The same windows are scored for an eager model and for a `.pte`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from handheld.core.errors import HandheldError

LogitsFn = Callable[[list[int]], torch.Tensor]  # window of ids -> logits [len, vocab]


@dataclass(frozen=True)
class EvalResult:
    perplexity: float
    tokens_scored: int
    context: int
    stride: int
    top1_agreement: float | None = None  # share of positions where argmax equals the reference's
    mean_kl: float | None = None  # mean KL(reference || model) in nats per position

    def as_dict(self) -> dict:
        return asdict(self)


def windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored target) for each window; every target from 1 on is scored once,
    with at least `context - stride` tokens of history once the text is long enough."""
    if context < 2 or not 0 < stride <= context:
        raise HandheldError(f"need context >= 2 and 0 < stride <= context, got context {context}, stride {stride}")
    scored_to = 1
    begin = 0
    while scored_to < n_tokens:
        end = min(begin + context, n_tokens)
        yield begin, end, max(scored_to, begin + 1)  # a window's first token has no history in it
        scored_to = end
        begin += stride


def evaluate(
    logits_fn: LogitsFn,
    ids: list[int],
    context: int,
    stride: int,
    reference_fn: LogitsFn | None = None,
    progress: bool = True,
) -> EvalResult:
    if len(ids) < 2:
        raise HandheldError(f"the text has {len(ids)} tokens; at least 2 are needed")
    nll, kl, agree, scored = 0.0, 0.0, 0, 0
    spans = list(windows(len(ids), context, stride))
    for begin, end, first in tqdm(spans, desc="eval", unit="window", disable=not progress, leave=False):
        window = ids[begin:end]
        keep = slice(first - begin - 1, end - begin - 1)  # logits at position p predict token p + 1
        logp = F.log_softmax(logits_fn(window).float()[keep], dim=-1)
        targets = torch.tensor(ids[first:end])
        nll -= logp.gather(1, targets[:, None]).sum().item()
        if reference_fn is not None:
            ref_logp = F.log_softmax(reference_fn(window).float()[keep], dim=-1)
            kl += F.kl_div(logp, ref_logp, log_target=True, reduction="sum").item()
            agree += int((logp.argmax(-1) == ref_logp.argmax(-1)).sum())
        scored += len(targets)
    with_reference = reference_fn is not None
    return EvalResult(
        perplexity=float(torch.exp(torch.tensor(nll / scored))),
        tokens_scored=scored,
        context=context,
        stride=stride,
        top1_agreement=agree / scored if with_reference else None,
        mean_kl=kl / scored if with_reference else None,
    )


def eager_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """A window's logits from position 0: batched without a cache, or, for a model whose KV cache is quantized
    (its rounding is what is scored), through the cache as a program prefills."""
    @torch.no_grad()
    def run(window: list[int]) -> torch.Tensor:
        if getattr(model, "kv_cache", "fp32") != "fp32":
            from handheld.runtime_bindings.python.program import native_stderr_silenced

            model.reset_cache()
            with native_stderr_silenced():  # ExecuTorch's eager quantized SDPA logs a line per call from C++
                return model(torch.tensor([window]), torch.tensor([0]))[0]
        return model.forward_batch(torch.tensor([window]))[0]

    return run


def pte_logits_fn(program) -> LogitsFn:
    if not program.metadata.full_logits:
        raise HandheldError(f"{program.path} returns only the last position's logits; re-export it with --full-logits to evaluate it")

    def run(window: list[int]) -> torch.Tensor:
        return program.forward(window, 0)

    return run
