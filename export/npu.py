"""Quantize and calibrate anywhere, lower where the vendor SDK lives: handheld's NPU flow.

checkpoint -> the model's NPU variant (a finite attention mask, single-op norms), traced with a fixed token
count -> torch.export -> the
backend's PT2E quantizer -> calibration on text -> convert (a graph of quantize/dequantize pairs around float
ops) -> a `.pt2` artefact (`torch.export.save`, handheld's metadata inside). `handheld eval` runs that graph
on the CPU, which computes what the NPU's integer kernels will up to their rounding; `handheld export`
lowers it where the SDK is installed, after checking for the SDK before any work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from handheld.core.atomic import atomic_path, refuse_overwriting_inputs
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.defaults import NPU_SEQ_LEN
from handheld.core.errors import HandheldError
from handheld.core.pte_metadata import ProgramMetadata
from handheld.export.backends import BACKENDS, Backend, get_backend
from handheld.export.backends.npu import NpuScheme
from handheld.export.metadata import program_metadata
from handheld.export.options import NPU_ARTEFACT_SUFFIX as ARTEFACT_SUFFIX
from handheld.export.options import ExportOptions, is_npu_artefact
from handheld.export.pt2_safety import check_pt2, weights_only_loads
from handheld.export.pte_writer import ExportResult, write_program
_META_FILE = "handheld.json"


@dataclass(frozen=True)
class NpuOptions:
    """A backend, one of its schemes and chips, and the static token count (prefill length = cache length)."""

    backend: str
    scheme: str | None
    chip: str | None = None
    seq_len: int = NPU_SEQ_LEN

    def resolve(self) -> tuple[Backend, NpuScheme, str]:
        backend = npu_backend(self.backend)
        if self.seq_len < 2:
            raise HandheldError(f"the NPU sequence length must be at least 2, got {self.seq_len}")
        return backend, backend.npu.scheme(backend.name, self.scheme), backend.npu.chip(backend.name, self.chip)


@dataclass(frozen=True)
class QuantizedProgram:
    """The converted graph and what it is: the artefact carried to the machine with the SDK."""

    program: torch.export.ExportedProgram
    options: NpuOptions  # resolved: scheme and chip set
    metadata: ProgramMetadata
    calibration: dict  # where the ranges came from: sequences, tokens, text

    def logits(self, window: list[int]) -> torch.Tensor:
        """Logits [len, vocab] of a window of at most seq_len ids (padded on the right: the model is causal)."""
        tokens = torch.zeros(1, self.options.seq_len, dtype=torch.long)
        tokens[0, : len(window)] = torch.tensor(window)
        with torch.no_grad():
            return self.program.module()(tokens, torch.zeros(1, dtype=torch.long))[0, : len(window)]


def npu_backend(name: str) -> Backend:
    backend = get_backend(name)
    if backend.npu is None:
        npus = ", ".join(n for n, b in BACKENDS.items() if b.npu is not None)
        raise HandheldError(f"backend {name} takes eager schemes (--scheme fp32, bf16, 8da4w), not calibrated NPU "
                            f"schemes; NPU backends: {npus}")
    return backend


def require_sdk(backend: Backend) -> None:
    """The one-line refusal, before any work, when the vendor's SDK is not here."""
    missing = backend.npu.missing_sdk()
    if missing:
        raise HandheldError(
            f"lowering to {backend.name} needs {missing}. Works here without it: `handheld quantize --backend "
            f"{backend.name}` (a calibrated {ARTEFACT_SUFFIX} to lower where the SDK is) and `handheld eval "
            f"--backend {backend.name}` (the scheme's quality, simulated on the CPU)")


def example_inputs(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, seq_len, dtype=torch.long), torch.zeros(1, dtype=torch.long)


def quantize_checkpoint(path: Path, options: NpuOptions, calibration: torch.Tensor, bos_id: int, eos_ids: list[int],
                        log: Callable[[str], None] = print) -> QuantizedProgram:
    """`calibration`: [N, seq_len] token ids the activation ranges are observed on."""
    backend, scheme, chip = options.resolve()
    if calibration.ndim != 2 or calibration.shape[1] != options.seq_len:
        raise HandheldError(f"calibration must be sequences of {options.seq_len} tokens, got {tuple(calibration.shape)}")
    checkpoint = read_checkpoint(path)
    if checkpoint.prequantized:
        raise HandheldError(f"{path} is pre-quantized ({checkpoint.kind}); NPU schemes start from float weights "
                            "(for SpinQuant: `handheld spinquant --weight-quant float`)")
    model = build_model(checkpoint, max_seq_len=options.seq_len, full_logits=True, npu=True)
    log(f"quantizing for {backend.name} {scheme.name} ({chip}) on {calibration.shape[0]} calibration sequences")
    program = quantize_model(model, scheme.quantizer(chip), calibration)
    resolved = dataclasses.replace(options, scheme=scheme.name, chip=chip)
    metadata = program_metadata(checkpoint.args, max_seq_len=options.seq_len, bos_id=bos_id, eos_ids=eos_ids,
                                scheme=scheme.name, backend=backend.name, full_logits=True, group_size=None,
                                weight_bytes={})
    return QuantizedProgram(program, resolved, metadata, {"sequences": calibration.shape[0],
                                                          "tokens": calibration.numel()})


def calibrate_checkpoint(path: Path, options: NpuOptions, calib: Path | None, tokenizer_path: Path | None,
                         sequences: int, log: Callable[[str], None] = print) -> QuantizedProgram:
    """`options`' scheme on a float checkpoint, its activation ranges set on `sequences` windows of `options.seq_len`
    tokens drawn from the text `calib` (tokenized with `tokenizer_path`, else the checkpoint's own tokenizer)."""
    from handheld.core.checkpoints import own_tokenizer_path
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.quant.calibration import choose_samples, text_sequences

    if calib is None:
        raise HandheldError("--calib is needed: an NPU scheme sets its activation ranges on calibration text")
    tokenizer_path = tokenizer_path or own_tokenizer_path(path)
    if tokenizer_path is None:
        raise HandheldError(f"{path} has no tokenizer to read --calib with: pass --tokenizer")
    tokenizer = load_tokenizer(tokenizer_path)
    windows = choose_samples(text_sequences(calib, tokenizer, options.seq_len), sequences, seed=0)
    return quantize_checkpoint(path, options, windows, tokenizer.bos_id, tokenizer.stop_ids, log=log)


def quantize_model(model: torch.nn.Module, quantizer, calibration: torch.Tensor) -> torch.export.ExportedProgram:
    """PT2E on the static graph: annotate, observe ranges on the calibration rows, convert to q/dq pairs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = example_inputs(calibration.shape[1])
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        for row in calibration:
            prepared(row[None, :], example[1])  # position 0: every cache slot is rewritten, none carries over
        converted = convert_pt2e(prepared)
        return torch.export.export(converted, example)


def save_quantized(quantized: QuantizedProgram, path: Path) -> None:
    meta = {"npu": dataclasses.asdict(quantized.options), "program": quantized.metadata.to_constant_methods(),
            "calibration": quantized.calibration}
    # torch names the archive's root folder after the file it writes: stage under the final name, then move.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        staged = staging / path.name
        torch.export.save(quantized.program, staged, extra_files={_META_FILE: json.dumps(meta, sort_keys=True)})
        with atomic_path(path) as tmp:
            os.replace(staged, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_quantized(path: Path) -> QuantizedProgram:
    if not path.is_file():
        raise HandheldError(f"{path} not found")
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the q/dq ops the graph calls

    check_pt2(path)  # read as data first: nothing in a stranger's archive may run
    extra = {_META_FILE: ""}
    try:
        with weights_only_loads():
            program = torch.export.load(path, extra_files=extra)
        meta = json.loads(extra[_META_FILE])
        options = NpuOptions(**meta["npu"])
    except Exception as e:  # a zip, JSON or schema error: the file is not one of ours
        raise HandheldError(f"{path} is not a handheld NPU artefact ({e.__class__.__name__})") from None
    options.resolve()  # names this handheld no longer knows fail here, listing the known ones
    metadata = ProgramMetadata.from_constant_methods(meta["program"], str(path))
    return QuantizedProgram(program, options, metadata, meta.get("calibration", {}))


def lower_quantized(quantized: QuantizedProgram, output: Path, log: Callable[[str], None] = print) -> dict:
    """The `.pte` with the NPU delegate, by the one writer; returns its operator counts. The caller has run
    `require_sdk`."""
    backend, _, chip = quantized.options.resolve()
    # A static program: ExecuTorch's runner must feed it exactly seq_len tokens.
    methods = quantized.metadata.to_constant_methods() | {"enable_dynamic_shape": False}
    log(f"lowering to {backend.name} for {chip} (the vendor compiler runs here)")
    lowered = backend.npu.lower(quantized.program.module(), example_inputs(quantized.options.seq_len), chip, methods)
    return write_program(lowered, quantized.metadata, output, dynamic_shapes=False, log=log)


def export_npu(source: Path, output: Path, options: ExportOptions, log: Callable[[str], None] = print) -> ExportResult:
    """`handheld export` for an NPU backend: the SDK checked before any work, then a `.pt2` artefact loaded (or
    the checkpoint calibrated on `options.calib`) and lowered."""
    backend = npu_backend(options.backend)
    npu = None
    if not is_npu_artefact(source):
        npu = NpuOptions(backend.name, options.scheme, options.soc, options.seq_len)
        npu.resolve()  # bad scheme or chip names fail before anything else
    require_sdk(backend)  # before any work: one line saying what is missing
    refuse_overwriting_inputs(output, [source, options.calib, options.tokenizer])
    started = time.perf_counter()
    quantized = load_quantized(source) if npu is None else calibrate_checkpoint(
        source, npu, options.calib, options.tokenizer, options.calib_sequences, log=log)
    if quantized.options.backend != backend.name:
        raise HandheldError(f"{source} was quantized for {quantized.options.backend}, not {backend.name}")
    op_counts = lower_quantized(quantized, output, log=log)
    return ExportResult(output, output.stat().st_size, time.perf_counter() - started, op_counts)
