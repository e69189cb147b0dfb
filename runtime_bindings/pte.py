"""Run a handheld `.pte` through ExecuTorch's Python runtime: metadata, and one forward step at a time.

The program's KV cache lives in its mutable buffers, so successive `forward` calls continue a sequence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from handheld.errors import HandheldError

# Constant methods whose value is a list even when it has one element.
_LIST_METHODS = {"get_eos_ids"}
# ExecuTorch's flatbuffer file identifier sits at bytes 4..8 and starts with "ET".
_PTE_MAGIC_OFFSET = 4


def check_pte_file(path: Path) -> None:
    if not path.is_file():
        raise HandheldError(f"{path} not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[_PTE_MAGIC_OFFSET : _PTE_MAGIC_OFFSET + 2] != b"ET":
        raise HandheldError(f"{path} is not an ExecuTorch .pte program")


def load_runtime_kernels() -> None:
    """Register ExecuTorch's quantized kernels with the runtime (needed by quantized programs), and its
    `llama::` kernels (custom SDPA, KV-cache update) so programs from ExecuTorch's own recipe run too."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (import registers the ops)
    import executorch.kernels.quantized  # noqa: F401


class PteProgram:
    def __init__(self, path: str | Path):
        from executorch.runtime import Runtime

        self.path = Path(path)
        check_pte_file(self.path)
        load_runtime_kernels()
        try:
            self._program = Runtime.get().load_program(self.path)
        except (RuntimeError, ValueError) as e:
            raise HandheldError(f"ExecuTorch cannot load {self.path}: {e}") from None
        names = set(self._program.method_names)
        if "forward" not in names:
            raise HandheldError(f"{self.path} has no forward method; methods: {', '.join(sorted(names))}")
        self.metadata = {name: self._constant(name) for name in sorted(names - {"forward"})}
        if "get_max_seq_len" not in self.metadata:
            raise HandheldError(f"{self.path} is not an LLM program: it has no get_max_seq_len metadata")
        self._forward = self._program.load_method("forward")

    def _constant(self, name: str) -> Any:
        values = list(self._program.load_method(name).execute([]))
        return values if name in _LIST_METHODS or len(values) != 1 else values[0]

    @property
    def method_names(self) -> list[str]:
        return sorted(self._program.method_names)

    @property
    def max_seq_len(self) -> int:
        return int(self.metadata["get_max_seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["get_vocab_size"])

    @property
    def bos_id(self) -> int:
        return int(self.metadata["get_bos_id"])

    @property
    def eos_ids(self) -> list[int]:
        return [int(i) for i in self.metadata.get("get_eos_ids", [])]

    @property
    def op_counts(self) -> dict[str, dict[str, int]] | None:
        raw = self.metadata.get("handheld_op_counts")
        return json.loads(raw) if raw else None

    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        """Logits of shape [n, vocab]: n is 1, or len(tokens) for programs exported with full logits."""
        if start_pos + len(tokens) > self.max_seq_len:
            raise HandheldError(
                f"sequence of {start_pos + len(tokens)} tokens exceeds the program's max sequence length {self.max_seq_len}"
            )
        inputs = [torch.tensor([tokens], dtype=torch.long), torch.tensor([start_pos], dtype=torch.long)]
        (logits,) = self._forward.execute(inputs)
        # handheld's programs return [1, n, vocab]; ExecuTorch's recipe returns [1, vocab].
        return logits.reshape(-1, logits.shape[-1])
