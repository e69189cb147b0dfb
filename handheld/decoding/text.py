"""`handheld generate` as a typed request: text from a prompt, through a `.pte` (ExecuTorch's runtime) or a
checkpoint (eager PyTorch under a scheme), greedily or speculatively with a draft program, tokens handed to a
callback as they are chosen. The CLI and the Python API both call `generate_text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from handheld.core.defaults import DRAFT_TOKENS, MAX_SEQ_LEN
from handheld.core.errors import HandheldError


@dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int = 64
    chat: bool = False  # the prompt as a user turn in the model's chat template
    system: str | None = None  # with chat: a system prompt
    scheme: str | None = None  # checkpoints: the eager scheme (default fp32, or a pre-quantized checkpoint's own)
    group_size: int | None = None
    max_seq_len: int = MAX_SEQ_LEN  # checkpoints: the KV cache's length
    draft: Path | None = None  # speculative decoding: a smaller .pte with the same tokenizer drafts
    draft_tokens: int = DRAFT_TOKENS
    verbose: bool = False  # ExecuTorch's load-time log lines

    def __post_init__(self) -> None:
        if self.system is not None and not self.chat:
            raise HandheldError("--system goes with --chat")
        if self.max_new_tokens < 1:
            raise HandheldError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class TextModel:
    """A model ready to decode: its step interface, its own stop ids, vocabulary size, and how it runs."""

    runner: object  # a StepModel: PteProgram or EagerRunner
    stop_ids: list[int]
    vocab_size: int
    label: str  # "ExecuTorch, 8da4w" or "eager PyTorch, fp32"


def is_checkpoint_path(path: str | Path) -> bool:
    """A checkpoint directory or GGUF file (run in eager PyTorch), as opposed to a `.pte` program."""
    return Path(path).is_dir() or Path(path).suffix == ".gguf"


def tokenizer_for(model: Path, tokenizer: Path | None) -> Path:
    """The tokenizer given, else a checkpoint's own; a `.pte` carries none."""
    from handheld.core.checkpoints import own_tokenizer_path

    if tokenizer is not None:
        return tokenizer
    own = own_tokenizer_path(model) if is_checkpoint_path(model) else None
    if own is None:
        raise HandheldError(f"{model} carries no tokenizer: pass --tokenizer")
    return own


def open_model(model: Path, options: GenerateOptions) -> TextModel:
    """A `.pte` through ExecuTorch, or a checkpoint in eager PyTorch under a scheme."""
    if options.draft and (is_checkpoint_path(model) or is_checkpoint_path(options.draft)):
        raise HandheldError("--draft takes .pte programs: export the target (with --full-logits) and the draft first")
    if not is_checkpoint_path(model):
        from handheld.runtime_bindings.python.program import PteProgram

        for flag, value in (("--scheme", options.scheme), ("--group-size", options.group_size)):
            if value is not None:
                raise HandheldError(f"{flag} applies to checkpoints; a .pte already has its scheme")
        program = PteProgram(model, quiet=not options.verbose)
        return TextModel(program, program.eos_ids, program.vocab_size, f"ExecuTorch, {program.metadata.scheme}")
    from handheld.decoding.generation import EagerRunner
    from handheld.quant.schemes import prepare_checkpoint

    prepared = prepare_checkpoint(model, options.scheme, group_size=options.group_size,
                                  max_seq_len=options.max_seq_len, full_logits=False)
    return TextModel(EagerRunner(prepared.model), [], prepared.model.args.vocab_size, f"eager PyTorch, {prepared.label}")


def stop_ids(model: TextModel, tokenizer) -> list[int]:
    """The ids that end a reply: the model's own and the tokenizer's; a tokenizer with more ids than the model
    has rows is refused (its ids would index past the embedding)."""
    if tokenizer.vocab_size > model.vocab_size:
        raise HandheldError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {model.vocab_size}")
    return sorted(set(model.stop_ids) | set(tokenizer.stop_ids))


def generate_text(model: TextModel, tokenizer, prompt: list[int], options: GenerateOptions,
                  on_token: Callable[[int], None] = lambda _: None):
    """(tokens, GenerationStats): greedy decoding, or speculative with a draft (the same tokens, fewer target
    calls); stops at the model's or the tokenizer's stop ids."""
    from handheld.decoding.generation import generate

    stops = stop_ids(model, tokenizer)
    if not options.draft:
        return generate(model.runner, prompt, options.max_new_tokens, stops, on_token=on_token)
    from handheld.decoding.speculative import check_compatible, speculative_generate
    from handheld.runtime_bindings.python.program import PteProgram

    draft = PteProgram(options.draft, quiet=not options.verbose)
    check_compatible(model.runner.metadata, draft.metadata)
    return speculative_generate(model.runner, draft, prompt, options.max_new_tokens, stops, options.draft_tokens,
                                on_token=on_token)
