"""Model shape, read from and written to Meta's `params.json` (Meta's key names, nothing else).

`ModelArgs` is frozen and rejects unknown keys: a typo in a params file is an error, not a default.
Named shapes (`llama3.2-1b`, `llama3.2-3b`, `tiny`) are JSON files in `handheld/params/`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from handheld.core.errors import HandheldError


# The keys of Meta's Llama 3.2 params.json.
META_KEYS = frozenset(
    {"dim", "ffn_dim_multiplier", "multiple_of", "n_heads", "n_kv_heads", "n_layers", "norm_eps", "rope_theta",
     "use_scaled_rope", "vocab_size"}
)


# The one scheme Meta's pre-quantized releases use (llama-models' `QuantizationScheme`): 4-bit groupwise
# weights with 8-bit dynamic activations in the blocks, 8-bit embedding and classifier ("EO8").
META_SCHEME = "int4_weight_int8_dynamic_activation"


@dataclass(frozen=True)
class QuantizationArgs:
    """`quantization_args` of Meta's pre-quantized releases (SpinQuant_INT4_EO8, QLORA_INT4_EO8).

    Meta's released params.json carry only `group_size`; `scheme` (llama-models' loader) and
    `quantize_embedding` are honoured when present: they may only say what handheld reads.
    """

    group_size: int
    spinquant: bool = False
    scheme: str | None = None
    quantize_embedding: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or not 1 <= self.group_size <= 4096:
            raise HandheldError(f"params: quantization_args.group_size must be between 1 and 4096, got {self.group_size!r}")
        if self.scheme is not None and self.scheme != META_SCHEME:
            raise HandheldError(f"params: quantization_args.scheme {self.scheme!r} is not supported; "
                                f"handheld reads only {META_SCHEME!r} (Meta's pre-quantized layout)")
        if self.quantize_embedding is False:
            raise HandheldError("params: quantization_args.quantize_embedding false is not supported; handheld reads "
                                "only the 8-bit embedding of Meta's EO8 layouts (true, or leave it out)")


@dataclass(frozen=True)
class LoraArgs:
    """`lora_args` of Meta's QLoRA releases: adapter rank and output scale (alpha / rank)."""

    rank: int
    scale: float

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 1 <= self.rank <= 4096:
            raise HandheldError(f"params: lora_args.rank must be between 1 and 4096, got {self.rank!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not -1e6 < self.scale < 1e6:
            raise HandheldError(f"params: lora_args.scale must be a finite number, got {self.scale!r}")


# Upper bounds far above any Llama (3.1 405B: dim 16384, 126 layers, vocab 128256, FFN 53248).
_SIZE_LIMITS = {"dim": 1 << 16, "n_layers": 1024, "n_heads": 1024, "n_kv_heads": 1024, "head_dim": 1024,
                "hidden_dim": 1 << 18, "vocab_size": 1 << 22, "multiple_of": 1 << 16, "rope_original_context": 1 << 24}


def _typed_from_dict(cls, raw: Any, source: str):
    if not isinstance(raw, dict):
        raise HandheldError(f"{source}: must be a JSON object, got {raw!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HandheldError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise HandheldError(f"{source}: missing required key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        _check_type(f"{source}.{name}" if source else name, value, hints[name])
    return cls(**raw)


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    head_dim: int | None = None  # not in Meta's files: default dim // n_heads
    hidden_dim: int | None = None  # not in Meta's files: FFN width given directly (HF's intermediate_size)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = False
    # Llama 3.1-style RoPE scaling; Meta's 3.2 params.json leaves these implicit (factor 32).
    rope_scale_factor: float = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    # Present only in pre-quantized checkpoints (Meta's SpinQuant / QLoRA releases and handheld's own).
    quantization_args: QuantizationArgs | None = None
    lora_args: LoraArgs | None = None
    # Not in Meta's 3.2 files: a pruned unembedding (Llama Guard 3 1B-INT4 keeps the rows of the ~20 tokens a
    # verdict is written with). Logits of every other id are -inf, so the logits keep their vocabulary width.
    output_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), _field_types()[field.name])
        self._check_ranges()
        if self.dim % self.n_heads:
            raise HandheldError(f"params: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise HandheldError(f"params: n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if self.output_token_ids is not None:
            self._check_output_tokens()
        if self.attn_head_dim % 2:
            raise HandheldError(f"params: head_dim {self.attn_head_dim} must be even for RoPE")

    def _check_ranges(self) -> None:
        """Sizes a real Llama could have: a file saying dim 10**30 or n_layers -1 is refused, not allocated."""
        for name, most in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if value is not None and not 1 <= value <= most:
                raise HandheldError(f"params: {name} must be between 1 and {most:,}, got {value}")
        for name in ("norm_eps", "rope_theta", "ffn_dim_multiplier", "rope_scale_factor", "rope_low_freq_factor",
                     "rope_high_freq_factor"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1e12:
                raise HandheldError(f"params: {name} must be a positive finite number, got {value}")
        if self.rope_high_freq_factor <= self.rope_low_freq_factor and self.use_scaled_rope:
            raise HandheldError("params: rope_high_freq_factor must exceed rope_low_freq_factor")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Llama's FeedForward sizing: 2/3 of 4*dim, scaled, rounded up to `multiple_of`."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def _check_output_tokens(self) -> None:
        ids = self.output_token_ids
        if not ids or len(set(ids)) != len(ids) or not all(0 <= i < self.vocab_size for i in ids):
            raise HandheldError(f"params: output_token_ids must be distinct ids below vocab_size {self.vocab_size}, got {ids!r}")

    def architecture(self) -> tuple:
        """Resolved shape and RoPE: equal for params that build the same network (Meta's or HF's way)."""
        rope = (self.rope_theta, self.use_scaled_rope)
        if self.use_scaled_rope:
            rope += (self.rope_scale_factor, self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_context)
        shape = (self.dim, self.n_layers, self.n_heads, self.kv_heads, self.attn_head_dim, self.ffn_hidden_dim, self.vocab_size)
        return shape + (self.norm_eps,) + rope + (self.output_token_ids,)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "params") -> "ModelArgs":
        raw = dict(raw)
        if isinstance(raw.get("output_token_ids"), list):  # JSON has lists; the frozen args hold a tuple
            raw["output_token_ids"] = tuple(raw["output_token_ids"])
        if raw.get("quantization_args") is not None:
            quant = _meta_spinquant_default(raw["quantization_args"], raw.get("lora_args"))
            raw["quantization_args"] = _typed_from_dict(QuantizationArgs, quant, f"{source}: quantization_args")
        if raw.get("lora_args") is not None:
            raw["lora_args"] = _typed_from_dict(LoraArgs, raw["lora_args"], f"{source}: lora_args")
        return _typed_from_dict(cls, raw, source)

    def to_dict(self) -> dict[str, Any]:
        """The params.json form: Meta's keys always, handheld's extensions only when not default."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in META_KEYS or value != field.default:
                out[field.name] = _plain(value)
        if self.quantization_args is not None and self.lora_args is not None and not self.quantization_args.spinquant:
            del out["quantization_args"]["spinquant"]  # Meta's QLoRA form: lora_args already imply no rotation
        return out


def _meta_spinquant_default(quant: Any, lora: Any) -> Any:
    """Meta's released params.json leave `spinquant` out: with `lora_args` the file is QLORA_INT4_EO8 (no
    rotation); without, it is SpinQuant_INT4_EO8 (R4 folded into w2, applied online). handheld always writes
    the flag when there are no adapters, so its own plain 8da4w output is never read as SpinQuant."""
    if isinstance(quant, dict) and "spinquant" not in quant:
        return {**quant, "spinquant": lora is None}
    return quant


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    return value


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(ModelArgs)


def _check_type(name: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return
    if any(typing.get_origin(t) is tuple for t in allowed):  # a tuple of ints
        if not (isinstance(value, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)):
            raise HandheldError(f"params: {name} must be a list of integers, got {value!r}")
        return
    dataclass_types = tuple(t for t in allowed if dataclasses.is_dataclass(t))
    if dataclass_types:
        ok = isinstance(value, dataclass_types)
    elif bool in allowed:
        ok = isinstance(value, bool)
    elif str in allowed:
        ok = isinstance(value, str)
    elif int in allowed:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # float: JSON writes 500000.0 and 500000 alike
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise HandheldError(f"params: {name} must be {hint}, got {value!r}")


def known_model_names() -> list[str]:
    files = resources.files("handheld.core.llama") / "params"
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def named_model_args(name: str) -> ModelArgs:
    names = known_model_names()
    if name not in names:
        raise HandheldError(f"unknown model {name!r}; known models: {', '.join(names)}")
    text = (resources.files("handheld.core.llama") / "params" / f"{name}.json").read_text()
    return ModelArgs.from_dict(json.loads(text), source=f"{name}.json")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (params.json, config.json, tokenizer_config.json, ...)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HandheldError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HandheldError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise HandheldError(f"{path} must hold a JSON object")
    return raw


def read_params_json(path: Path) -> ModelArgs:
    return ModelArgs.from_dict(read_json_object(path), source=str(path))
