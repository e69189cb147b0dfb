"""Run a handheld `.pte` through ExecuTorch's Python runtime, one forward step at a time.

Metadata is read by parsing the file (`pte_file`), before and without running anything; then only the
`forward` method is loaded and executed. The program's KV cache lives in its mutable buffers, so
successive `forward` calls continue a sequence.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from handheld.core.errors import HandheldError
from handheld.core.pte_metadata import ProgramMetadata
from handheld.runtime_bindings.pte_file import PteStructure, read_pte_structure


def load_runtime_kernels() -> None:
    """Register ExecuTorch's quantized kernels with the runtime (needed by quantized programs), and its
    `llama::` kernels (custom SDPA, KV-cache update) so programs from ExecuTorch's own recipe run too."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (import registers the ops)
    import executorch.kernels.quantized  # noqa: F401


@contextlib.contextmanager
def native_stderr_silenced(silenced: bool = True):
    """File descriptor 2 to /dev/null while ExecuTorch loads a program: its CPU probe logs a handful of lines
    (`[cpuinfo_utils.cpp:71] Reading file ...`) on every load, straight from C++. A load that fails still says
    why: ExecuTorch's exception carries the reason into the one-line error."""
    if not silenced:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class PteProgram:
    def __init__(self, path: str | Path, structure: PteStructure | None = None, quiet: bool = True):
        """`structure`: the file already parsed by `read_pte_structure` (parsed here otherwise); `quiet`: hide
        ExecuTorch's native load-time log lines."""
        from executorch.runtime import Runtime

        self.path = Path(path)
        structure = structure or read_pte_structure(self.path)
        if "forward" not in structure.methods:
            raise HandheldError(f"{self.path} has no forward method; methods: {', '.join(structure.methods)}")
        self.method_names = structure.methods
        self.constant_methods = structure.constant_methods
        self.metadata = ProgramMetadata.from_constant_methods(self.constant_methods, str(self.path))
        try:
            with native_stderr_silenced(quiet):
                load_runtime_kernels()
                self._program = Runtime.get().load_program(self.path)
                self._forward = self._program.load_method("forward")
        except (RuntimeError, ValueError) as e:
            raise HandheldError(f"ExecuTorch cannot load {self.path}: {e}") from None

    @property
    def max_seq_len(self) -> int:
        return self.metadata.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.metadata.vocab_size

    @property
    def eos_ids(self) -> list[int]:
        return list(self.metadata.eos_ids)

    def forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        """Logits of shape [n, vocab]: n is 1, or len(tokens) for programs exported with full logits."""
        if start_pos + len(tokens) > self.max_seq_len:
            raise HandheldError(
                f"sequence of {start_pos + len(tokens)} tokens exceeds the program's max sequence length {self.max_seq_len}"
            )
        inputs = [torch.tensor([tokens], dtype=torch.long), torch.tensor([start_pos], dtype=torch.long)]
        with _torch_single_threaded():
            (logits,) = self._forward.execute(inputs)
        # handheld's programs return [1, n, vocab]; ExecuTorch's recipe returns [1, vocab].
        return logits.reshape(-1, logits.shape[-1])


@contextlib.contextmanager
def _torch_single_threaded():
    """ExecuTorch's binding copies each output through ATen, whose OpenMP workers then spin against
    ExecuTorch's own threadpool for the cores: measured on SmolLM2 8da4w, 2 cores, this was ~30% of a decode
    step. One ATen thread makes the copy inline; the caller's setting is restored after the call (~0.3 µs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
