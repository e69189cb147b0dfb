"""handheld's Python API: the pipeline as typed functions, for scripts and CI. The CLI's verbs call the same code.

    import handheld.api as hh

    smol = hh.fetch()                                             # SmolLM2-135M-Instruct (GGUF) in the cache
    program = hh.export(smol, "smol.pte", scheme="8da4w", full_logits=True)
    print(program.path, program.metadata.scheme, program.file_bytes)
    print(hh.evaluate(program.path, "handheld/proxy/test.txt", tokenizer=smol, max_tokens=512).perplexity)
    row = hh.bench([program.path], gen_len=64, runs=3)[0]
    print(row["stats"]["decode_tok_s"]["median"], "tok/s")
    print(hh.generate(program.path, smol, "What is the capital of France?", chat=True).text)

Every function raises `handheld.core.errors.HandheldError` on bad input, with the message the CLI prints as its
one line; nothing is left half-written at an output path.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from handheld.core.defaults import MAX_SEQ_LEN, NPU_CALIB_SEQUENCES, NPU_SEQ_LEN
from handheld.core.errors import HandheldError
from handheld.core.pte_metadata import ProgramMetadata

if TYPE_CHECKING:
    from handheld.export.options import ExportOptions

__all__ = ["HandheldError", "ExportedProgram", "NpuArtefact", "Generation", "fetch", "load", "quantize", "export",
           "program_metadata", "quantize_npu", "spinquant", "qat",
           "evaluate", "bench", "bench_report", "generate", "stream", "chat"]


@dataclass(frozen=True)
class ExportedProgram:
    path: Path
    file_bytes: int
    seconds: float
    metadata: ProgramMetadata  # what the .pte says about itself (scheme, quantization, provenance, ...)


@dataclass(frozen=True)
class NpuArtefact:
    path: Path  # the calibrated .pt2, to lower where the vendor SDK is
    backend: str
    scheme: str
    chip: str
    seq_len: int  # tokens per call, also the KV cache's length
    calibration: dict  # sequences and tokens the activation ranges were set on


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]
    stats: object  # handheld.decoding.generation.GenerationStats: TTFT, prefill and decode tok/s


def fetch(name: str = "smollm2-135m-instruct", log=lambda _: None) -> Path:
    """A known pretrained file (the demo's SmolLM2 by default), downloaded once and checked by its sha256."""
    from handheld.core.fetch.catalog import fetch as fetch_file

    return fetch_file(name, log=log)


def load(checkpoint: str | Path, *, max_seq_len: int = MAX_SEQ_LEN, full_logits: bool = False):
    """A checkpoint (Meta, Hugging Face or GGUF) as its own eager PyTorch model: float as stored, or the scheme a
    pre-quantized checkpoint (SpinQuant, QLoRA) carries. `full_logits` returns logits for every position."""
    from handheld.core.checkpoints import read_checkpoint
    from handheld.quant.schemes import checkpoint_model

    return checkpoint_model(read_checkpoint(Path(checkpoint)), max_seq_len, full_logits)


def quantize(checkpoint: str | Path, scheme: str = "8da4w", *, max_seq_len: int = MAX_SEQ_LEN,
             full_logits: bool = False, tokenizer: str | Path | None = None, group_size: int | None = None,
             scale_rule: str | None = None, calib: str | Path | None = None, calib_tokens: int | None = None,
             budget_mb: float | None = None, rotation: str | None = None):
    """The eager model `export` would lower for this scheme (its oracle): a `handheld.quant.schemes.PreparedModel`
    (.model, .label, .group_size, .quantization: how the 4-bit weights were rounded). The options become one typed,
    validated `SchemeOptions` (an option the scheme would ignore is refused); `calib` (a UTF-8 text) runs GPTQ,
    after `rotation` ("quarot": random Hadamard rotations, the best quality per byte measured on SmolLM2)."""
    from handheld.quant.schemes import prepare_checkpoint

    return prepare_checkpoint(Path(checkpoint), scheme, max_seq_len=max_seq_len, full_logits=full_logits,
                              group_size=group_size, tokenizer=_optional(tokenizer), scale_rule=scale_rule,
                              calib=_optional(calib), calib_tokens=calib_tokens, budget_mb=budget_mb,
                              rotation=rotation)


def export(checkpoint: str | Path, output: str | Path, options: ExportOptions | None = None, *, log=lambda _: None,
           **fields) -> ExportedProgram:
    """A checkpoint (Meta, Hugging Face or GGUF) as a `.pte`, written atomically at `output`, for any backend: xnnpack
    (the default), or an NPU (qnn, mediatek; also from a `.pt2` of `quantize_npu`), where the vendor SDK is installed.
    `options`: a `handheld.export.options.ExportOptions`, or its fields as keywords, `handheld export`'s flags
    (scheme, backend, max_seq_len, tokenizer, full_logits, group_size, scale_rule, calib, calib_tokens, budget_mb, rotation,
    soc, calib_sequences, skip_memory_check, kv_cache); `scheme` None keeps a pre-quantized checkpoint's own."""
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    if options is not None and fields:
        raise HandheldError("pass export options either as an ExportOptions or as keywords, not both")
    paths = {k: _optional(v) for k, v in fields.items() if k in ("tokenizer", "calib")}
    typed = options or ExportOptions.of(**(fields | paths))
    result = export_program(Path(checkpoint), Path(output), typed, log)
    return ExportedProgram(result.path, result.file_bytes, result.seconds, program_metadata(result.path))


def program_metadata(program: str | Path) -> ProgramMetadata:
    """What a `.pte` says about itself (scheme, quantization, shapes, provenance), read without running it."""
    from handheld.runtime_bindings.pte_file import read_pte_structure

    return ProgramMetadata.from_constant_methods(read_pte_structure(program).constant_methods, str(program))


def quantize_npu(checkpoint: str | Path, calib: str | Path | None, output: str | Path, *, backend: str, scheme: str,
                 soc: str | None = None, seq_len: int = NPU_SEQ_LEN, sequences: int = NPU_CALIB_SEQUENCES,
                 tokenizer: str | Path | None = None, log=lambda _: None) -> NpuArtefact:
    """`handheld quantize`: an NPU scheme (qnn 16a4w/16a8w/8a8w, mediatek a16w4/a16w8/a8w8) applied to a float
    checkpoint and calibrated on `sequences` windows of `calib`, written as a `.pt2` at `output` on any machine:
    `evaluate` scores it on the CPU, `export(output, ..., backend=...)` lowers it where the vendor SDK is."""
    from handheld.core.atomic import refuse_overwriting_inputs
    from handheld.export.npu import ARTEFACT_SUFFIX, NpuOptions, calibrate_checkpoint, save_quantized

    output = Path(output)
    if output.suffix != ARTEFACT_SUFFIX:
        raise HandheldError(f"-o must end in {ARTEFACT_SUFFIX} (eval and export recognise the artefact by it)")
    options = NpuOptions(backend, scheme, soc, seq_len)
    options.resolve()  # bad names fail before any work
    refuse_overwriting_inputs(output, [Path(checkpoint), _optional(calib), _optional(tokenizer)])
    quantized = calibrate_checkpoint(Path(checkpoint), options, _optional(calib), _optional(tokenizer), sequences, log=log)
    save_quantized(quantized, output)
    done = quantized.options
    return NpuArtefact(output, done.backend, done.scheme, done.chip, done.seq_len, quantized.calibration)


def spinquant(checkpoint: str | Path, calib: str | Path, output: str | Path, *, device: str = "cpu",
              progress: bool = False, **options):
    """`handheld spinquant`: learn R1/R2 on `calib`, quantize, and write Meta's SpinQuant checkpoint at `output`
    (export it with `export(output, ...)`). `options`: the fields of `handheld.training.options.SpinQuantOptions`
    (steps, lr, seq_len, samples, batch_size, weight_quant, rotations, group_size, seed, resume, ...).
    Returns a `SpinQuantResult` (first and last quantized loss, steps, seconds)."""
    from handheld.training.distributed import process_group
    from handheld.training.options import SpinQuantOptions
    from handheld.training.spinquant import run_spinquant

    typed = _options(SpinQuantOptions, checkpoint=Path(checkpoint), calib=Path(calib), output=Path(output), **options)
    with process_group(device) as group:
        return run_spinquant(typed, group, progress=progress)


def qat(checkpoint: str | Path, data: str | Path, output: str | Path, *, device: str = "cpu", progress: bool = False,
        **options):
    """`handheld qat`: quantization-aware fine-tuning then LoRA (phase "both", the default), or one phase, on `data`
    (plain text or .jsonl dialogs); writes Meta's QLoRA checkpoint at `output`. `options`: the fields of
    `handheld.training.options.QatOptions` (phase, lora_lr, lora_steps, scale_rule, seq_len, lora_rank, lora_alpha,
    group_size, resume, ...)
    and of its `TrainConfig` (steps, lr, batch_size, grad_accum, warmup, eval_every, save_every, seed).
    Returns one `PhaseResult` per phase trained (losses, validation, tok/s)."""
    import dataclasses

    from handheld.training.distributed import process_group
    from handheld.training.options import QatOptions, TrainConfig
    from handheld.training.qat import run_qat

    schedule = {name: options.pop(name) for name in [f.name for f in dataclasses.fields(TrainConfig)] if name in options}
    train = dataclasses.replace(QatOptions.train, **schedule)
    typed = _options(QatOptions, checkpoint=Path(checkpoint), data=Path(data), output=Path(output), train=train,
                     **options)
    with process_group(device) as group:
        return run_qat(typed, group, progress=progress)


def _options(kind, **fields):
    """`kind(**fields)`, an unknown field refused in one line naming the known ones (not a TypeError)."""
    import dataclasses

    known = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise HandheldError(f"unknown option {', '.join(unknown)} for {kind.__name__}; known: {', '.join(known)}")
    return kind(**fields)


def evaluate(model: str | Path, text: str | Path, *, tokenizer: str | Path, log=lambda _: None, **options):
    """`handheld eval`: perplexity of a `.pte` (exported with full_logits; on handheld's native runner with `target`),
    of a checkpoint in eager PyTorch under `scheme`, or of an NPU scheme simulated on the CPU (a `.pt2`, or a
    checkpoint with `backend` and `calib`), on a UTF-8 text. `options`: the fields of
    `handheld.measure.evaluation.EvalOptions` (context, stride, max_tokens, reference, scheme, group_size, backend,
    soc, calib, calib_sequences, target). Returns an `Evaluation` (perplexity, tokens_scored, top1_agreement and
    mean_kl against `reference`, host_perplexity with `target`, ...; `.as_dict()` is `handheld eval --json`)."""
    from handheld.measure.evaluation import EvalOptions, evaluate_model

    paths = {k: _optional(v) for k, v in options.items() if k in ("reference", "calib")}
    typed = _options(EvalOptions, **(options | paths))
    return evaluate_model(Path(model), Path(text), Path(tokenizer), typed, log)


def bench(programs: list[str | Path], **options) -> list[dict]:
    """`handheld bench`'s rows (one per program: samples, stats with medians, load, TTFT, tok/s, peak RSS); the
    options are `bench_report`'s."""
    return bench_report(programs, **options)["rows"]


def bench_report(programs: list[str | Path], *, prompt_len: int = 64, gen_len: int = 128, runs: int = 5,
                 warmup: int = 1, threads: int | None = None, runner: str | None = None, target: str = "host",
                 count_work: bool = False, cool_down_s: float = 0.0, bandwidth: bool = False,
                 log=lambda _: None) -> dict:
    """`handheld bench --json`'s whole report: the host, the memory bandwidth (with `bandwidth`, the roofline's) and
    the rows. `runner` None: python on the host, native elsewhere; `target` host, qemu-aarch64, android-arm64 or
    adb[:SERIAL]; `threads` None: the usable cores (a phone's big cores)."""
    from handheld.measure.bench import bench_programs

    return bench_programs([Path(p) for p in programs], threads=threads, runner=runner, bandwidth=bandwidth,
                          progress=log, prompt_len=prompt_len, gen_len=gen_len, runs=runs, warmup=warmup,
                          target=target, count_work=count_work, cool_down_s=cool_down_s)


def generate(model: str | Path, tokenizer: str | Path | None, prompt: str, *, on_token=lambda _: None,
             **options) -> Generation:
    """`handheld generate`: greedy text for `prompt` from a `.pte` (ExecuTorch's runtime) or a checkpoint (eager
    PyTorch), speculative with `draft`; `on_token` sees each token id as it is chosen. `tokenizer` None: a
    checkpoint's own. `options`: the fields of `handheld.decoding.text.GenerateOptions` (max_new_tokens, chat, system,
    scheme, group_size, max_seq_len, draft, draft_tokens, verbose)."""
    from handheld.decoding.text import GenerateOptions, generate_text, open_model

    typed = _options(GenerateOptions, **(options | {k: _optional(v) for k, v in options.items() if k == "draft"}))
    tok, ids = _prompted(model, tokenizer, prompt, typed)
    tokens, stats = generate_text(open_model(Path(model), typed), tok, ids, typed, on_token)
    return Generation(tok.decode(tokens), tokens, stats)


def stream(model: str | Path, tokenizer: str | Path | None, prompt: str, **options) -> Iterator[str]:
    """The same text as `generate` (greedy; no draft), yielded as the tokens are chosen (whole UTF-8 characters)."""
    from handheld.decoding.generation import GreedySteps
    from handheld.decoding.text import GenerateOptions, open_model, stop_ids

    typed = _options(GenerateOptions, **options)
    if typed.draft is not None:
        raise HandheldError("stream decodes greedily; speculative decoding (draft) is generate's")
    tok, ids = _prompted(model, tokenizer, prompt, typed)
    opened = open_model(Path(model), typed)
    stops = stop_ids(opened, tok)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in GreedySteps(opened.runner, ids, typed.max_new_tokens, stops):
        piece = decoder.decode(tok.decode_bytes([token]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _prompted(model, tokenizer, prompt: str, options):
    """The tokenizer (read first: a bad one fails at once) and the prompt's ids (in the chat template with chat)."""
    from handheld.core.tokenizers.tokenizer import load_tokenizer, prompt_ids
    from handheld.decoding.text import tokenizer_for

    tok = load_tokenizer(tokenizer_for(Path(model), _optional(tokenizer)))
    return tok, prompt_ids(tok, prompt, options.chat, options.system)


def _program_and_tokenizer(program, tokenizer, quiet: bool = True):
    """The `.pte` and its tokenizer (read first: a bad one fails at once), refused when the ids do not fit."""
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.runtime_bindings.python.program import PteProgram

    tok = load_tokenizer(str(tokenizer))
    model = PteProgram(program, quiet=quiet)
    if tok.vocab_size > model.vocab_size:
        raise HandheldError(f"tokenizer has {tok.vocab_size} ids but {program} only {model.vocab_size}")
    return model, tok


def chat(program: str | Path, tokenizer: str | Path, *, system: str | None = None, max_new_tokens: int = 256,
         quiet: bool = True):
    """A `ChatSession` over a `.pte` (what `handheld chat` drives): `.reply(text, on_token)` per turn, `.reset()`."""
    from handheld.decoding.chat import ChatSession

    if max_new_tokens < 1:
        raise HandheldError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    model, tok = _program_and_tokenizer(program, tokenizer, quiet)
    return ChatSession(model, tok, model.eos_ids, max_new_tokens, system)


def _optional(path: str | Path | None) -> Path | None:
    return Path(path) if path is not None else None
