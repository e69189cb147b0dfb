"""`handheld export`'s options as one typed, frozen object for every backend, validated once, here.

A CPU backend (xnnpack) takes an eager scheme and, for 4-bit schemes, how groups round (`--group-size`,
`--scale-rule`, `--calib` for GPTQ, `--calib-tokens`, `--budget-mb`, `--rotation`). An NPU backend (qnn, mediatek) takes a
calibrated scheme, a chip (`--soc`) and a calibration text (`--calib`, `--calib-sequences`), or a `.pt2` that
`handheld quantize` wrote, whose scheme, chip and length are already fixed. Which option applies where is
decided in this file and nowhere else. Free of torch at import, so the CLI's --help stays instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from handheld.core.defaults import KV_CACHE, KV_CACHES, MAX_SEQ_LEN, NPU_CALIB_SEQUENCES, NPU_SEQ_LEN
from handheld.core.errors import HandheldError

if TYPE_CHECKING:
    from handheld.export.backends import Backend

NPU_ARTEFACT_SUFFIX = ".pt2"  # what `handheld quantize` writes: torch.export's archive


@dataclass(frozen=True)
class ExportOptions:
    scheme: str | None = None  # None: a pre-quantized checkpoint's own, else fp32 (NPU: required)
    backend: str = "xnnpack"
    max_seq_len: int | None = None  # None: MAX_SEQ_LEN on a CPU, NPU_SEQ_LEN (its fixed tokens per call) on an NPU
    tokenizer: Path | None = None  # BOS/EOS ids and --calib's tokens (None: the checkpoint's own)
    full_logits: bool = False  # logits for every position (evaluation), not just the last
    group_size: int | None = None  # the rest of this block: xnnpack's 4-bit schemes only
    scale_rule: str | None = None
    calib: Path | None = None  # also the NPU's: its activation ranges are set on this text
    calib_tokens: int | None = None
    budget_mb: float | None = None
    rotation: str | None = None  # None: ROTATION
    soc: str | None = None  # the NPU chip
    calib_sequences: int = NPU_CALIB_SEQUENCES
    skip_memory_check: bool = False
    llm_kv_ops: bool = True  # False keeps the plain indexed cache (benchmarks compare)
    kv_cache: str = KV_CACHE  # CPU programs: fp32, or int8 (ExecuTorch's quantized cache; needs llm_kv_ops)

    def __post_init__(self) -> None:
        from handheld.quant.schemes import get_scheme, refuse_rounding_flags

        backend = self.target  # an unknown name fails listing the known ones
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise HandheldError(f"--max-seq-len must be at least 2, got {self.max_seq_len}")
        self._check_kv_cache(backend)
        if backend.npu is None:
            if self.soc is not None:
                raise HandheldError(f"--soc names an NPU chip; backend {backend.name} runs on the CPU")
            if self.scheme is not None:
                get_scheme(self.scheme)
            return
        refuse_rounding_flags({"--group-size": self.group_size, "--scale-rule": self.scale_rule,
                               "--calib-tokens": self.calib_tokens, "--budget-mb": self.budget_mb,
                               "--rotation": self.rotation},
                              f"{backend.name}'s schemes fix their own")
        if self.calib_sequences < 1:
            raise HandheldError(f"--calib-sequences must be at least 1, got {self.calib_sequences}")

    def _check_kv_cache(self, backend: Backend) -> None:
        if self.kv_cache not in KV_CACHES:
            raise HandheldError(f"unknown --kv-cache {self.kv_cache!r}; known: {', '.join(KV_CACHES)}")
        if self.kv_cache == "fp32":
            return
        if backend.npu is not None:
            raise HandheldError(f"--kv-cache {self.kv_cache} is for CPU programs; {backend.name}'s schemes fix their cache")
        if not self.llm_kv_ops:
            raise HandheldError(f"--kv-cache {self.kv_cache} needs ExecuTorch's LLM ops (the indexed cache is float)")

    @classmethod
    def of(cls, **fields) -> ExportOptions:
        """`ExportOptions(**fields)`, an unknown field refused in one line naming the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise HandheldError(f"unknown export option {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**fields)

    @property
    def target(self) -> Backend:
        from handheld.export.backends import get_backend

        return get_backend(self.backend)

    @property
    def is_npu(self) -> bool:
        return self.target.npu is not None

    @property
    def seq_len(self) -> int:
        if self.max_seq_len is not None:
            return self.max_seq_len
        return NPU_SEQ_LEN if self.is_npu else MAX_SEQ_LEN

    def check_source(self, source: Path) -> None:
        """A `.pt2` artefact fixed its scheme, chip and length when it was quantized: flags that would change them
        are refused; a CPU backend takes checkpoints, not artefacts."""
        if not is_npu_artefact(source):
            if self.is_npu and self.scheme is None:
                self.target.npu.scheme(self.backend, None)  # "needs --scheme, one of: ..."
            return
        if not self.is_npu:
            raise HandheldError(f"{source} is an NPU artefact from `handheld quantize`; lower it with --backend qnn "
                                "or mediatek (the backend it was quantized for)")
        given = [flag for flag, value in (("--scheme", self.scheme), ("--soc", self.soc),
                                          ("--max-seq-len", self.max_seq_len), ("--calib", self.calib)) if value is not None]
        if given:
            raise HandheldError(f"{source} was quantized by `handheld quantize` with its own scheme, chip and length; "
                                f"{', '.join(given)} cannot change them (quantize again instead)")


def is_npu_artefact(path: str | Path) -> bool:
    """A calibrated NPU program written by `handheld quantize` (torch.export's .pt2)."""
    return Path(path).suffix == NPU_ARTEFACT_SUFFIX
