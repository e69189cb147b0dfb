"""What both training jobs (SpinQuant, QAT+LoRA) share: their tokenizer, progress bars, and their output."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from handheld.core.atomic import atomic_dir
from handheld.core.checkpoints import TOKENIZER, Checkpoint, write_checkpoint
from handheld.core.llama.config import ModelArgs
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.tokenizer import Tokenizer, load_tokenizer
from handheld.quant.prequantized import write_prequantized


def job_tokenizer_path(explicit: Path | None, checkpoint: Checkpoint) -> Path:
    """`--tokenizer`, else the checkpoint's own."""
    path = explicit or checkpoint.tokenizer_path
    if path is None:
        raise HandheldError(f"{checkpoint.path} has no tokenizer.model: pass --tokenizer")
    return path


def job_tokenizer(explicit: Path | None, checkpoint: Checkpoint) -> Tokenizer:
    return load_tokenizer(job_tokenizer_path(explicit, checkpoint))


def check_ids_fit(ids: torch.Tensor, args: ModelArgs) -> None:
    if int(ids.max()) >= args.vocab_size:
        raise HandheldError(f"the tokenizer produces ids up to {int(ids.max())}, beyond the model's vocabulary")


def require_float(checkpoint: Checkpoint, job: str) -> None:
    if checkpoint.prequantized:
        raise HandheldError(f"{checkpoint.path} is already quantized ({checkpoint.kind}); {job} starts from a "
                            "float checkpoint")


def progress_bar(total: int, desc: str, enabled: bool, done: int = 0, unit: str = "step") -> tqdm:
    return tqdm(total=total, initial=done, desc=desc, unit=unit, disable=not enabled)


def write_quantized_output(output: Path, args: ModelArgs, model: nn.Module, tokenizer: Path) -> None:
    """The job's result in Meta's pre-quantized layout, with the tokenizer beside it; all or nothing."""
    with atomic_dir(output) as tmp:
        write_prequantized(tmp, args, model)
        write_tokenizer(tokenizer, tmp)


def write_float_output(output: Path, args: ModelArgs, model: nn.Module, tokenizer: Path) -> None:
    """The job's result as a float Meta checkpoint (untied classifier), with the tokenizer beside it."""
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    with atomic_dir(output) as tmp:
        write_checkpoint(tmp, args, state, "meta")
        write_tokenizer(tokenizer, tmp)


def write_tokenizer(tokenizer: Path, folder: Path) -> None:
    """The job's tokenizer beside its output, in its own format: tiktoken as tokenizer.model; tokenizer.json or a
    GGUF's vocabulary as tokenizer.json with tokenizer_config.json (BOS/EOS and the chat template)."""
    from handheld.core.tokenizers.hf_tokenizer import HFTokenizer, write_tokenizer_files

    loaded = load_tokenizer(tokenizer)
    if isinstance(loaded, HFTokenizer):
        write_tokenizer_files(loaded, folder)
    else:
        shutil.copyfile(tokenizer, folder / TOKENIZER)
