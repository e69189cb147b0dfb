"""GGUF checkpoints (llama.cpp's format): Llama-architecture files, read with the `gguf` package.

Shape and RoPE come from the file's metadata, tensors are dequantized one at a time to float32 (quantized
types) or kept at their float width (F16, BF16), so a 1B file never needs several float32 copies. llama.cpp's
converter stores q/k rows in Meta's interleaved RoPE order, so GGUF names map straight onto Meta's. Reading
executes nothing: the file is memory-mapped and parsed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handheld.core.llama.config import ModelArgs
from handheld.core.errors import HandheldError, first_line
from handheld.core.llama.model import rope_frequencies

MAGIC = b"GGUF"
ARCHITECTURE = "llama"
# Tensor types handheld dequantizes (all through `gguf.quants`); others are refused by name.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_BLOCK_NAMES = {
    "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
    "attn_norm": "attention_norm", "ffn_norm": "ffn_norm",
}
_GLOBAL_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output"}
# Llama 3.1/3.2 files carry their RoPE scaling as precomputed per-frequency factors.
ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True)
class GgufInfo:
    """What `inspect` shows besides the shape: tensor types and the file's own name for the model."""

    name: str | None
    tensor_types: dict[str, int]
    metadata: dict[str, Any]


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def open_gguf(path: Path):
    """The parsed file; any damage is one line naming the file."""
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # a parse boundary: damaged headers surface as many exception types
        raise HandheldError(f"{path} is not a readable GGUF file ({e.__class__.__name__}: {first_line(e)})") from None



def metadata(reader, path: Path) -> dict[str, Any]:
    """Scalar and string metadata (large arrays such as the vocabulary are left to the tokenizer)."""
    values: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                               "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        try:
            values[key] = field.contents()
        except (ValueError, IndexError, UnicodeDecodeError, TypeError) as e:
            raise HandheldError(f"{path}: metadata {key} is malformed ({first_line(e)})") from None
    return values


def gguf_to_args(meta: dict[str, Any], reader, path: Path) -> ModelArgs:
    arch = meta.get("general.architecture")
    if arch != ARCHITECTURE:
        raise HandheldError(f"{path}: architecture {arch!r} is not supported (handheld reads {ARCHITECTURE!r} GGUF files)")

    def need(key: str) -> Any:
        if f"llama.{key}" not in meta:
            raise HandheldError(f"{path}: metadata llama.{key} is missing")
        return meta[f"llama.{key}"]

    dim, n_heads = _positive(need("embedding_length"), "embedding_length", path), _positive(need("attention.head_count"), "attention.head_count", path)
    raw: dict[str, Any] = {
        "dim": dim,
        "n_layers": _positive(need("block_count"), "block_count", path),
        "n_heads": n_heads,
        "n_kv_heads": _positive(meta.get("llama.attention.head_count_kv", n_heads), "attention.head_count_kv", path),
        "vocab_size": _vocab_size(meta, reader, path),
        "hidden_dim": _positive(need("feed_forward_length"), "feed_forward_length", path),
        "norm_eps": _float32(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _float32(meta.get("llama.rope.freq_base", 10000.0)),  # llama.cpp's default when absent
    }
    head_dim = meta.get("llama.attention.key_length", meta.get("llama.rope.dimension_count"))
    if head_dim is not None and head_dim != dim // n_heads:
        raw["head_dim"] = _positive(head_dim, "attention.key_length", path)
    scaling = meta.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise HandheldError(f"{path}: RoPE scaling type {scaling!r} is not supported (Llama 3 scaling comes as {ROPE_FREQS})")
    if "llama.expert_count" in meta and meta["llama.expert_count"]:
        raise HandheldError(f"{path}: a mixture-of-experts model ({meta['llama.expert_count']} experts) is not a Llama 3 model")
    return ModelArgs.from_dict(raw, source=str(path))


def _float32(value: Any) -> float:
    """GGUF stores these as float32: 1e-5 reads back as 9.9999997e-06; take the shortest decimal instead."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HandheldError(f"expected a number in GGUF metadata, got {value!r}")
    return float(str(np.float32(value)))


def _positive(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise HandheldError(f"{path}: metadata llama.{key} must be a positive integer, got {value!r}")
    return value


def _vocab_size(meta: dict[str, Any], reader, path: Path) -> int:
    if "llama.vocab_size" in meta:
        return _positive(meta["llama.vocab_size"], "vocab_size", path)
    for tensor in reader.tensors:
        if tensor.name == "token_embd.weight":
            return int(tensor.shape[-1])
    raise HandheldError(f"{path}: no llama.vocab_size and no token_embd.weight")


def meta_name(name: str) -> str | None:
    """GGUF tensor name -> Meta's; None for tensors that are not weights of the model (rope_freqs)."""
    if name == ROPE_FREQS:
        return None
    renamed = _rename(name, _GLOBAL_NAMES, _BLOCK_NAMES, r"blk\.(\d+)\.(.+)", "layers.{}.{}")
    if renamed is None:
        raise HandheldError(f"unexpected tensor {name} in a Llama GGUF file")
    return renamed


def _rename(name: str, globals_: dict[str, str], blocks: dict[str, str], layer: str, layer_format: str) -> str | None:
    """One naming scheme's tensor name in the other's (the weight suffix kept); None when it has none."""
    base, _, suffix = name.rpartition(".")
    if base in globals_:
        return f"{globals_[base]}.{suffix}"
    match = re.fullmatch(layer, base)
    if not match or match.group(2) not in blocks:
        return None
    return f"{layer_format.format(match.group(1), blocks[match.group(2)])}.{suffix}"


def tensor_to_torch(tensor, path: Path) -> torch.Tensor:
    """One tensor as PyTorch [out, in] (GGUF lists dimensions innermost first)."""
    from gguf.quants import dequantize

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise HandheldError(f"{path}: tensor {tensor.name} has type {kind}; supported: {', '.join(SUPPORTED_TYPES)}")
    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type)).reshape(shape)
    except (ValueError, NotImplementedError, TypeError, IndexError) as e:
        raise HandheldError(f"{path}: tensor {tensor.name} ({kind}, shape {shape}) cannot be read ({first_line(e)})") from None
    dtype = _FLOAT_TYPES.get(kind, torch.float32)
    return torch.from_numpy(np.array(values, dtype=np.float32)).to(dtype)  # a copy: F32 data is the read-only map


def read_gguf(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor], GgufInfo]:
    reader = open_gguf(path)
    meta = metadata(reader, path)
    args = gguf_to_args(meta, reader, path)
    state: dict[str, torch.Tensor] = {}
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
        name = meta_name(tensor.name)
        if name is None:
            args = _with_rope_freqs(args, tensor_to_torch(tensor, path), meta, path)
            continue
        state[name] = tensor_to_torch(tensor, path)
    return args, state, GgufInfo(meta.get("general.name"), types, meta)


def _with_rope_freqs(args: ModelArgs, freqs: torch.Tensor, meta: dict[str, Any], path: Path) -> ModelArgs:
    """Llama 3.1-style scaling: accept the factors when they are exactly what Meta's scaling gives with the
    file's stated factor and original context (Llama 3.1/3.2's 32 and 8192 when it states none)."""
    scaled = dataclasses.replace(args, use_scaled_rope=True,
                                 rope_scale_factor=_float32(meta.get("llama.rope.scaling.factor", 32.0)),
                                 rope_original_context=meta.get("llama.rope.scaling.original_context_length", 8192))
    # llama.cpp divides each frequency by its factor.
    expected = (rope_frequencies(args) / rope_frequencies(scaled)).float()
    if freqs.shape != expected.shape or not torch.allclose(freqs.float(), expected, rtol=1e-3):
        raise HandheldError(f"{path}: {ROPE_FREQS} does not match Llama 3's RoPE scaling (factor "
                            f"{scaled.rope_scale_factor:g}, context {scaled.rope_original_context}); other scalings "
                            "are not supported")
    return scaled



# Metadata keys a written file copies from its source GGUF: the vocabulary and chat template.
_TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                   "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")


@dataclass(frozen=True)
class GgufVocabulary:
    """A byte-level BPE vocabulary as GGUF stores it (for files written without a source GGUF)."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    pre: str = "llama-bpe"


# llama.cpp's general.file_type for the whole-file types handheld writes.
_FILE_TYPES = {"F32": 0, "F16": 1}


def write_gguf(path: Path, args: ModelArgs, state: dict[str, torch.Tensor], tensor_type: str = "F32",
               tokenizer_from: Path | None = None, vocabulary: GgufVocabulary | None = None) -> None:
    """A Llama GGUF of `state` (Meta names) with every 2-D weight stored as `tensor_type` (norms stay F32);
    the vocabulary and chat template copied from another GGUF, or given. Used to hand the same weights to
    llama.cpp, and by tests."""
    import gguf

    writer = gguf.GGUFWriter(str(path), ARCHITECTURE)
    _write_shape(writer, args)
    if tensor_type in _FILE_TYPES:
        writer.add_file_type(_FILE_TYPES[tensor_type])
    if tokenizer_from is not None:
        _copy_tokenizer(writer, open_gguf(tokenizer_from))
    if vocabulary is not None:
        _write_vocabulary(writer, vocabulary)
    if args.use_scaled_rope:  # llama.cpp divides each frequency by its factor
        writer.add_rope_scaling_factor(args.rope_scale_factor)
        writer.add_rope_scaling_orig_ctx_len(args.rope_original_context)
        plain = rope_frequencies(dataclasses.replace(args, use_scaled_rope=False))
        writer.add_tensor(ROPE_FREQS, (plain / rope_frequencies(args)).float().numpy())
    for name, tensor in state.items():
        values, kind = _encoded(tensor, tensor_type if tensor.dim() == 2 else "F32")
        writer.add_tensor(_gguf_name(name), values, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_shape(writer, args: ModelArgs) -> None:
    writer.add_block_count(args.n_layers)
    writer.add_context_length(8192)
    writer.add_embedding_length(args.dim)
    writer.add_feed_forward_length(args.ffn_hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.kv_heads)
    writer.add_key_length(args.attn_head_dim)
    writer.add_value_length(args.attn_head_dim)
    writer.add_rope_dimension_count(args.attn_head_dim)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    writer.add_vocab_size(args.vocab_size)


def _write_vocabulary(writer, vocabulary: GgufVocabulary) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocabulary.pre)
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.types)
    writer.add_token_merges(vocabulary.merges)
    writer.add_bos_token_id(vocabulary.bos_id)
    writer.add_eos_token_id(vocabulary.eos_id)


def _copy_tokenizer(writer, reader) -> None:
    import gguf

    for key in _TOKENIZER_KEYS:
        if key not in reader.fields:
            continue
        field = reader.fields[key]
        value, kinds = field.contents(), field.types
        sub_type = kinds[1] if kinds[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, kinds[0], sub_type=sub_type)


def _gguf_name(name: str) -> str:
    inverse = ({v: k for k, v in _GLOBAL_NAMES.items()}, {v: k for k, v in _BLOCK_NAMES.items()})
    renamed = _rename(name, *inverse, r"layers\.(\d+)\.(.+)", "blk.{}.{}")
    if renamed is None:
        raise HandheldError(f"no GGUF name for tensor {name}")
    return renamed


def _encoded(tensor: torch.Tensor, tensor_type: str):
    import gguf
    from gguf.quants import quantize

    values = tensor.detach().float().numpy()
    kind = gguf.GGMLQuantizationType[tensor_type]
    if tensor_type == "F32":
        return values, None
    if tensor_type == "F16":
        return values.astype(np.float16), None
    return quantize(values, kind), kind
