"""The `.pte` metadata contract, defined once: what a handheld program says about itself.

A program carries its metadata as constant methods (methods that return a constant): ExecuTorch's LLM
runners read the `get_*` / `use_*` / `enable_*` ones, handheld adds its own under `handheld_*` so a
`.pte` says what it is without relying on its file name. The exporter writes `ProgramMetadata.
to_constant_methods()`; every reader (Python runtime, bench, inspect, eval) goes through
`ProgramMetadata.from_constant_methods()`. Programs other tools wrote (ExecuTorch's own recipe) read
too: the handheld fields then say "unknown".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from handheld.core.errors import HandheldError

UNKNOWN = "unknown"
# handheld field -> constant method; JSON-encoded fields travel as strings.
_HANDHELD_METHODS = {
    "model": "handheld_model",
    "params": "handheld_params",
    "scheme": "handheld_scheme",
    "backend": "handheld_backend",
    "version": "handheld_version",
    "full_logits": "handheld_full_logits",
    "group_size": "handheld_group_size",
    "quantization": "handheld_quantization",
    "weight_bytes": "handheld_weight_bytes",
    "op_counts": "handheld_op_counts",
    "provenance": "handheld_provenance",
    "kv_cache": "handheld_kv_cache",
}
_JSON_FIELDS = frozenset({"params", "quantization", "weight_bytes", "op_counts", "provenance"})
# What each field must hold once read from a file.
_FIELD_KINDS = {"max_seq_len": int, "vocab_size": int, "n_layers": int, "bos_id": int, "eos_ids": tuple, "model": str,
                "params": dict, "scheme": str, "backend": str, "version": str, "full_logits": bool,
                "group_size": (int, type(None)), "quantization": (dict, type(None)), "weight_bytes": dict, "op_counts": dict,
               "provenance": dict, "llm_kv_ops": bool, "kv_cache": str}


@dataclass(frozen=True)
class ProgramMetadata:
    """What an LLM `.pte` declares. The first block is ExecuTorch's runner contract; the rest is handheld's."""

    max_seq_len: int
    vocab_size: int
    n_layers: int
    bos_id: int
    eos_ids: tuple[int, ...]
    model: str = UNKNOWN  # a named shape (llama3.2-1b, smollm2-135m, ...) or a description
    params: dict[str, Any] = field(default_factory=dict)  # the model's params.json
    scheme: str = UNKNOWN  # fp32, bf16, 8da4w, spinquant, qat-lora
    backend: str = UNKNOWN
    version: str = UNKNOWN  # handheld's version that wrote it
    full_logits: bool = False  # logits for every input position (evaluation), or the last only
    group_size: int | None = None
    # How a 4-bit scheme rounded (group size, scale rule, calibration text and its sha256); None when unquantized.
    quantization: dict[str, Any] | None = None
    weight_bytes: dict[str, int] = field(default_factory=dict)  # stored weight bytes by kind
    op_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # operators delegated / not
    # Which code made it: git commit, dirty tree, digest of the export code, library versions.
    provenance: dict[str, Any] = field(default_factory=dict)
    # The KV cache through ExecuTorch's LLM ops (update_cache, custom_sdpa): the runtime needs their kernels.
    llm_kv_ops: bool = False
    # What the KV cache stores: fp32, or int8 rows with a scale and zero point each (llama::custom_quantized_sdpa).
    kv_cache: str = "fp32"

    def to_constant_methods(self) -> dict[str, Any]:
        methods: dict[str, Any] = {
            "get_max_seq_len": self.max_seq_len,
            "get_max_context_len": self.max_seq_len,
            "get_vocab_size": self.vocab_size,
            "get_n_layers": self.n_layers,
            "get_bos_id": self.bos_id,
            "get_eos_ids": list(self.eos_ids),
            "use_kv_cache": True,
            "use_sdpa_with_kv_cache": self.llm_kv_ops,
            "enable_dynamic_shape": True,
        }
        for name, method in _HANDHELD_METHODS.items():
            value = getattr(self, name)
            if value is None:
                continue
            methods[method] = json.dumps(value, sort_keys=True) if name in _JSON_FIELDS else value
        return methods

    @classmethod
    def from_constant_methods(cls, methods: dict[str, Any], source: str = "program") -> "ProgramMetadata":
        if "get_max_seq_len" not in methods:
            raise HandheldError(f"{source} is not an LLM program: it has no get_max_seq_len metadata")
        try:
            values = {
                "max_seq_len": int(methods["get_max_seq_len"]),
                "vocab_size": int(methods["get_vocab_size"]),
                "n_layers": int(methods.get("get_n_layers", 0)),
                "bos_id": int(methods.get("get_bos_id", -1)),
                "eos_ids": tuple(int(i) for i in _as_list(methods.get("get_eos_ids", []))),
                "llm_kv_ops": methods.get("use_sdpa_with_kv_cache", False),
            }
            for name, method in _HANDHELD_METHODS.items():
                if method in methods:
                    raw = methods[method]
                    values[name] = json.loads(raw) if name in _JSON_FIELDS else raw
        except (KeyError, TypeError, ValueError) as e:
            raise HandheldError(f"{source} has malformed metadata ({e.__class__.__name__}: {e})") from None
        return cls(**values)._checked(source)

    def _checked(self, source: str) -> "ProgramMetadata":
        for name, kind in _FIELD_KINDS.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise HandheldError(f"{source} has malformed metadata: {name} is {value!r}")
        if self.max_seq_len < 1 or self.vocab_size < 1:
            raise HandheldError(f"{source} has malformed metadata: max_seq_len {self.max_seq_len}, vocab {self.vocab_size}")
        return self

    def bytes_per_token(self) -> int | None:
        """Weight bytes one decoded token reads: every weight, but only one row of an untied embedding table.
        None for programs handheld did not write."""
        if not self.weight_bytes:
            return None
        table = self.weight_bytes.get("8-bit embedding", 0) + self.weight_bytes.get("embedding", 0)
        return round(sum(self.weight_bytes.values()) - table * (1 - 1 / self.vocab_size))


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
