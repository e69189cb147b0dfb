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

from handheld.errors import HandheldError


# The keys of Meta's Llama 3.2 params.json.
META_KEYS = frozenset(
    {"dim", "ffn_dim_multiplier", "multiple_of", "n_heads", "n_kv_heads", "n_layers", "norm_eps", "rope_theta",
     "use_scaled_rope", "vocab_size"}
)


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

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), _field_types()[field.name])
        if self.dim % self.n_heads:
            raise HandheldError(f"params: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise HandheldError(f"params: n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if self.attn_head_dim % 2:
            raise HandheldError(f"params: head_dim {self.attn_head_dim} must be even for RoPE")

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

    def architecture(self) -> tuple:
        """Resolved shape and RoPE: equal for params that build the same network (Meta's or HF's way)."""
        rope = (self.rope_theta, self.use_scaled_rope)
        if self.use_scaled_rope:
            rope += (self.rope_scale_factor, self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_context)
        shape = (self.dim, self.n_layers, self.n_heads, self.kv_heads, self.attn_head_dim, self.ffn_hidden_dim, self.vocab_size)
        return shape + (self.norm_eps,) + rope

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "params") -> "ModelArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise HandheldError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in raw]
        if missing:
            raise HandheldError(f"{source}: missing required key(s) {', '.join(missing)}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        """The params.json form: Meta's keys always, handheld's extensions only when not default."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in META_KEYS or value != field.default:
                out[field.name] = value
        return out


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(ModelArgs)


def _check_type(name: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return
    if bool in allowed:
        ok = isinstance(value, bool)
    elif int in allowed:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # float: JSON writes 500000.0 and 500000 alike
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise HandheldError(f"params: {name} must be {hint}, got {value!r}")


def known_model_names() -> list[str]:
    files = resources.files("handheld") / "params"
    return sorted(p.name[: -len(".json")] for p in files.iterdir() if p.name.endswith(".json"))


def named_model_args(name: str) -> ModelArgs:
    names = known_model_names()
    if name not in names:
        raise HandheldError(f"unknown model {name!r}; known models: {', '.join(names)}")
    text = (resources.files("handheld") / "params" / f"{name}.json").read_text()
    return ModelArgs.from_dict(json.loads(text), source=f"{name}.json")


def read_params_json(path: Path) -> ModelArgs:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise HandheldError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise HandheldError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise HandheldError(f"{path} must hold a JSON object")
    return ModelArgs.from_dict(raw, source=str(path))
