"""Read checkpoints in Meta's, Hugging Face's and GGUF formats, validated against their params; write Meta's
and Hugging Face's.

`read_checkpoint(path)` is the one entry point: it detects the format (a directory with params.json or
config.json, or a .gguf file), checks every tensor's name and shape against what the params imply (naming
the tensor and both shapes on a mismatch), and says what kind of checkpoint it is (`Checkpoint.kind`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from handheld.core.llama.config import ModelArgs
from handheld.core.defaults import MAX_SEQ_LEN
from handheld.core.errors import HandheldError
from handheld.core.checkpoints import gguf, hf, meta, prequantized
from handheld.core.llama.model import Transformer

FORMATS = ("meta", "hf")  # writable formats; GGUF is read only
TOKENIZER = "tokenizer.model"
# Tokenizer files a checkpoint directory may hold, in the order they are preferred.
TOKENIZER_FILES = (TOKENIZER, "tokenizer.json")


@dataclass(frozen=True)
class Checkpoint:
    args: ModelArgs
    state: dict[str, torch.Tensor]
    format: str
    path: Path  # the directory, or the .gguf file
    stored_types: dict[str, int] = field(default_factory=dict)  # GGUF: tensor count per type in the file

    @property
    def tied(self) -> bool:
        return "output.weight" not in self.state

    @property
    def kind(self) -> str:
        """What the checkpoint is, decided here only: "float", or the pre-quantized scheme it was made with
        ("spinquant", "qat-lora", "8da4w"), as reports and `.pte` metadata name it."""
        quant = self.args.quantization_args
        if quant is None:
            return "float"
        if quant.spinquant:
            return "spinquant"
        return "qat-lora" if self.args.lora_args is not None else "8da4w"

    @property
    def prequantized(self) -> bool:
        return self.kind != "float"

    @property
    def tokenizer_path(self) -> Path | None:
        return own_tokenizer_path(self.path)


def own_tokenizer_path(path: Path) -> Path | None:
    """A checkpoint's own tokenizer, found without reading its weights: a GGUF file carries its vocabulary;
    a directory may hold a tokenizer file."""
    if path.is_file():
        return path if gguf.is_gguf(path) else None
    return next((path / name for name in TOKENIZER_FILES if (path / name).is_file()), None)


def read_checkpoint(directory: str | Path) -> Checkpoint:
    directory = Path(directory)
    if gguf.is_gguf(directory):
        args, state, info = gguf.read_gguf(directory)
        return _validated(Checkpoint(args, state, "gguf", directory, info.tensor_types))
    if directory.is_file():
        raise HandheldError(f"{directory} is not a checkpoint: expected a directory (Meta or Hugging Face) or a GGUF file")
    if not directory.is_dir():
        raise HandheldError(f"checkpoint {directory} not found")
    if meta.is_meta_checkpoint(directory):
        args, state = meta.read_meta(directory)
        fmt = "meta"
    elif hf.is_hf_checkpoint(directory):
        args, state = hf.read_hf(directory)
        fmt = "hf"
    else:
        raise HandheldError(f"{directory} is not a checkpoint: expected params.json (Meta) or config.json (Hugging Face)")
    return _validated(Checkpoint(args, state, fmt, directory))


def _validated(checkpoint: Checkpoint) -> Checkpoint:
    args, state = checkpoint.args, checkpoint.state
    if checkpoint.prequantized:
        prequantized.validate_prequantized(args, state)
    else:
        validate_state(args, state, tied=checkpoint.tied)
    return checkpoint


def expected_shapes(args: ModelArgs, tied: bool) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(args, max_seq_len=1, tied=tied)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if tied:
        shapes.pop("output.weight")
    return shapes


def validate_state(args: ModelArgs, state: dict[str, torch.Tensor], tied: bool) -> None:
    expected = expected_shapes(args, tied)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HandheldError(f"checkpoint is missing tensor {missing[0]}{more}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise HandheldError(f"checkpoint has unexpected tensor {unexpected[0]} (not part of a {args.n_layers}-layer Llama)")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise HandheldError(
                f"tensor {name} has shape {tuple(state[name].shape)} but the params imply {shape}"
            )
        if not state[name].is_floating_point():
            raise HandheldError(f"tensor {name} has dtype {state[name].dtype}; a float checkpoint was expected")


def build_model(checkpoint: Checkpoint, max_seq_len: int = MAX_SEQ_LEN, full_logits: bool = True,
                npu: bool = False, dtype: torch.dtype | None = torch.float32) -> Transformer:
    """The float model of a float checkpoint (pre-quantized ones are built by `handheld.quant.schemes`), its
    weights copied to `dtype`. `dtype=None` takes the checkpoint's tensors as they are, without a copy: a
    quantizing export then widens one weight at a time, so the float model never exists whole (3B fits)."""
    if checkpoint.prequantized:
        raise HandheldError(f"{checkpoint.path} is pre-quantized ({checkpoint.kind}); a float checkpoint is needed here")
    model = Transformer(checkpoint.args, max_seq_len=max_seq_len, full_logits=full_logits, tied=checkpoint.tied,
                        npu=npu, weights_device="meta")
    state = checkpoint.state
    if dtype is not None:  # a copy even when the dtype matches: training must not write into the checkpoint
        state = {name: t.to(dtype, copy=True) for name, t in state.items()}
    model.load_state_dict(state, strict=not checkpoint.tied, assign=True)
    if model.output.weight.is_meta:  # tied: assigning the embedding replaced the shared parameter
        model.output.weight = model.tok_embeddings.weight
    unloaded = [name for name, param in model.named_parameters() if param.is_meta]
    if unloaded:
        raise HandheldError(f"{checkpoint.path} has no tensor for {', '.join(unloaded[:5])}")
    return model.eval()


def load_model(directory: str | Path, max_seq_len: int = MAX_SEQ_LEN, full_logits: bool = True) -> Transformer:
    return build_model(read_checkpoint(directory), max_seq_len=max_seq_len, full_logits=full_logits)


def random_state(args: ModelArgs, seed: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Llama-like random weights (std 0.02, unit norms), tied embedding unless the unembedding is pruned;
    values don't matter for speed."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(args, tied=args.output_token_ids is None).items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape, dtype=dtype)
        else:
            state[name] = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
    return state


def write_checkpoint(directory: Path, args: ModelArgs, state: dict[str, torch.Tensor], fmt: str) -> None:
    if fmt == "meta":
        meta.write_meta(directory, args, state)
    elif fmt == "hf":
        hf.write_hf(directory, args, state)
    else:
        raise HandheldError(f"unknown checkpoint format {fmt!r}; known formats: {', '.join(FORMATS)}")
