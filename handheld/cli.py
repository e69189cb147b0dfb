"""The `handheld` command line. Each subcommand is a small function taking its parsed arguments.

User errors (`HandheldError`) print one line and exit 1; nothing else is caught.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import sys
from pathlib import Path

from handheld import __version__
from handheld.errors import HandheldError

DEFAULT_MAX_SEQ_LEN = 128


def cmd_init_random(args: argparse.Namespace) -> None:
    from handheld.atomic import atomic_dir
    from handheld.checkpoints import TOKENIZER, random_state, write_checkpoint, FORMATS
    from handheld.config import named_model_args
    from handheld.tokenizer import write_byte_tokenizer

    if args.format not in FORMATS:
        raise HandheldError(f"unknown format {args.format!r}; known formats: {', '.join(FORMATS)}")
    model_args = named_model_args(args.model)
    state = random_state(model_args, seed=args.seed)
    with atomic_dir(args.output) as tmp:
        write_checkpoint(tmp, model_args, state, args.format)
        if model_args.vocab_size == 512:  # exactly a byte-level tokenizer's 256 ranks + 256 specials
            write_byte_tokenizer(tmp / TOKENIZER)
    print(f"wrote random-weight {args.model} checkpoint ({args.format} format) to {args.output}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from handheld.export.summary import describe_checkpoint, describe_pte, format_checkpoint, format_pte

    path = Path(args.path)
    if path.is_dir():
        info = describe_checkpoint(path)
        text = format_checkpoint(info)
    else:
        info = describe_pte(path)
        text = format_pte(info)
    print(json.dumps(info, indent=2) if args.json else text)


def cmd_export(args: argparse.Namespace) -> None:
    from handheld.export.program import export_checkpoint
    from handheld.quant.schemes import SchemeOptions

    result = export_checkpoint(
        Path(args.checkpoint),
        Path(args.output),
        scheme_name=args.scheme,
        backend_name=args.backend,
        max_seq_len=args.max_seq_len,
        tokenizer_path=Path(args.tokenizer) if args.tokenizer else None,
        options=SchemeOptions(group_size=args.group_size),
        full_logits=args.full_logits,
        log=lambda msg: print(f"[export] {msg}", flush=True),
    )
    print(f"wrote {result.path} ({result.file_bytes / 2**20:.1f} MiB) in {result.seconds:.0f} s")


def cmd_generate(args: argparse.Namespace) -> None:
    from handheld.runtime_bindings.generation import generate
    from handheld.tokenizer import Message, Tokenizer

    tokenizer = Tokenizer(args.tokenizer)
    runner, stop_ids, vocab_size = _step_model(args)
    if tokenizer.vocab_size > vocab_size:
        raise HandheldError(f"tokenizer has {tokenizer.vocab_size} ids but {args.model} only {vocab_size}")
    if args.chat:
        prompt = tokenizer.encode_dialog_prompt([Message("user", args.prompt)])
    else:
        prompt = tokenizer.encode(args.prompt, bos=True)
    # Byte-level BPE splits multi-byte characters across tokens: decode bytes incrementally.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def show(token: int) -> None:
        sys.stdout.write(decoder.decode(tokenizer.decode_bytes([token])))
        sys.stdout.flush()

    _, stats = generate(runner, prompt, args.max_new_tokens, stop_ids or tokenizer.stop_ids, on_token=show)
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    print(stats.line())


def _step_model(args: argparse.Namespace):
    """A `.pte` through ExecuTorch, or a checkpoint directory in eager PyTorch under a scheme."""
    from handheld.runtime_bindings.generation import EagerRunner

    if not Path(args.model).is_dir():
        from handheld.runtime_bindings.pte import PteProgram

        if args.scheme:
            raise HandheldError("--scheme applies to checkpoint directories; a .pte already has its scheme")
        program = PteProgram(args.model)
        return program, program.eos_ids, program.vocab_size
    prepared = _eager_model(args, max_seq_len=args.max_seq_len, full_logits=False)
    print(f"[eager PyTorch, scheme {prepared.label}]", file=sys.stderr)
    return EagerRunner(prepared.model), [], prepared.model.args.vocab_size


def _eager_model(args: argparse.Namespace, max_seq_len: int, full_logits: bool):
    """A checkpoint directory's model under `--scheme` / `--group-size`, in eager PyTorch."""
    from handheld.checkpoints import read_checkpoint
    from handheld.quant.schemes import SchemeOptions, prepare_model

    return prepare_model(read_checkpoint(args.model), args.scheme, SchemeOptions(group_size=args.group_size),
                         max_seq_len=max_seq_len, full_logits=full_logits)


def cmd_eval(args: argparse.Namespace) -> None:
    from handheld.evaluation import eager_logits_fn, evaluate, pte_logits_fn
    from handheld.tokenizer import Tokenizer

    text_path = Path(args.text)
    if not text_path.is_file():
        raise HandheldError(f"text file {text_path} not found")
    tokenizer = Tokenizer(args.tokenizer)
    ids = tokenizer.encode(text_path.read_text(encoding="utf-8"), bos=False)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    if Path(args.model).is_dir():
        prepared = _eager_model(args, max_seq_len=args.context, full_logits=True)
        logits_fn, mode, scheme = eager_logits_fn(prepared.model), "eager", prepared.label
    else:
        from handheld.runtime_bindings.pte import PteProgram

        program = PteProgram(args.model)
        if args.context > program.max_seq_len:
            raise HandheldError(f"--context {args.context} exceeds {args.model}'s max sequence length {program.max_seq_len}")
        logits_fn, mode, scheme = pte_logits_fn(program), ".pte", program.metadata.get("handheld_scheme", "unknown")
    label = f"{mode}, scheme {scheme}"
    reference_fn = None
    if args.reference:
        from handheld.checkpoints import load_model

        reference_fn = eager_logits_fn(load_model(args.reference, max_seq_len=args.context))
    result = evaluate(logits_fn, ids, args.context, args.stride, reference_fn=reference_fn)
    if args.json:
        print(json.dumps({"model": str(args.model), "mode": mode, "scheme": scheme, "text": str(text_path),
                          **result.as_dict()}, indent=2))
        return
    line = f"{args.model} ({label}): perplexity {result.perplexity:.4f} over {result.tokens_scored} tokens " \
           f"(context {result.context}, stride {result.stride})"
    if result.top1_agreement is not None:
        line += f" | top-1 agreement {result.top1_agreement:.2%} | mean KL {result.mean_kl:.5f} nats"
    print(line)


def cmd_spinquant(args: argparse.Namespace) -> None:
    from handheld.distributed import process_group
    from handheld.recipes.spinquant import SpinQuantOptions, run_spinquant

    options = SpinQuantOptions(
        checkpoint=Path(args.checkpoint), calib=Path(args.calib), output=Path(args.output), steps=args.steps, lr=args.lr,
        seq_len=args.seq_len, samples=args.samples, batch_size=args.batch_size, weight_quant=args.weight_quant,
        group_size=args.group_size, seed=args.seed, resume=args.resume, save_every=args.save_every,
        tokenizer=Path(args.tokenizer) if args.tokenizer else None,
    )
    with process_group() as group:
        result = run_spinquant(options, group)
    if group.is_main:
        losses = f"quantized loss {result.first_loss:.4f} -> {result.last_loss:.4f} | " if result.steps else ""
        print(f"wrote SpinQuant checkpoint ({options.weight_quant.upper()}) to {options.output} | {losses}"
              f"learning {result.learn_seconds:.0f} s, quantization {result.quantize_seconds:.0f} s")


def cmd_qat(args: argparse.Namespace) -> None:
    from handheld.distributed import process_group
    from handheld.recipes.qat import QatOptions, run_qat
    from handheld.training import TrainConfig

    train = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                        warmup=args.warmup, eval_every=args.eval_every, save_every=args.save_every, seed=args.seed)
    options = QatOptions(
        checkpoint=Path(args.checkpoint), data=Path(args.data), output=Path(args.output), phase=args.phase, train=train,
        lora_lr=args.lora_lr, seq_len=args.seq_len, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        group_size=args.group_size, resume=args.resume, tokenizer=Path(args.tokenizer) if args.tokenizer else None,
    )
    with process_group() as group:
        results = run_qat(options, group)
    if group.is_main:
        for r in results:
            val = f", validation {r.validation[-1][1]:.4f}" if r.validation else ""
            print(f"{r.phase}: {r.steps} steps, loss {r.first_loss:.4f} -> {r.last_loss:.4f}{val}, {r.tokens_per_s:.0f} tok/s")
        print(f"wrote {options.phase} checkpoint to {options.output}")


def cmd_bench(args: argparse.Namespace) -> None:
    from handheld.bench import BenchConfig, run_bench
    from handheld.host import measure_bandwidth_gbs

    config = BenchConfig(prompt_len=args.prompt_len, gen_len=args.gen_len, runs=args.runs, warmup=args.warmup,
                         threads=args.threads, runner=args.runner, target=args.target, count_work=args.count_work)
    baseline = _read_baseline(args)
    bandwidth = None if args.no_bandwidth else measure_bandwidth_gbs(config.threads)
    if bandwidth:
        print(f"memory bandwidth (triad, {config.threads} threads): {bandwidth:.1f} GB/s")
    results = run_bench([Path(p) for p in args.models], config, bandwidth_gbs=bandwidth)
    print(_summary_lines(results))
    if args.json:
        from handheld.atomic import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    _gate(results, baseline, args.max_regression, args.gate)


def cmd_report(args: argparse.Namespace) -> None:
    from handheld.bench import load_results
    from handheld.report import load_evals, write_report

    results = load_results([Path(p) for p in args.results])
    baseline = _read_baseline(args)
    report = write_report(results, Path(args.output), evals=load_evals([Path(p) for p in args.eval]),
                          base_name=args.base, notes=args.note)
    print(f"wrote {report}")
    _gate(results, baseline, args.max_regression, args.gate)


def _read_baseline(args: argparse.Namespace) -> dict | None:
    """Read the baseline before any long work, so a bad path fails at once."""
    from handheld.bench import load_results

    if (args.baseline is None) != (args.max_regression is None):
        raise HandheldError("--baseline and --max-regression go together")
    return load_results([Path(args.baseline)]) if args.baseline else None


def _gate(results: dict, baseline: dict | None, max_regression: float | None, gate: str) -> None:
    from handheld.regression import GATES, regressions

    if gate not in GATES:
        raise HandheldError(f"unknown --gate {gate!r}; known gates: {', '.join(GATES)}")
    if baseline is None:
        return
    failures = regressions(results, baseline, max_regression, gate)
    if failures:
        raise HandheldError("regression gate failed:\n  " + "\n  ".join(failures))
    checked = "no median" if gate == "all" else "no work count"
    print(f"regression gate passed: {checked} moved more than {max_regression:g}% the wrong way")


def _summary_lines(results: dict) -> str:
    lines = []
    for row in results["rows"]:
        s = row["stats"]
        lines.append(f"{row['name']} ({row['scheme']}, {row['backend']}): decode {s['decode_tok_s']['median']:.2f} tok/s "
                     f"(cv {s['decode_tok_s']['cv']:.1%}), prefill {s['prefill_tok_s']['median']:.1f} tok/s, "
                     f"TTFT {s['ttft_s']['median']:.3f} s, peak RSS {s['peak_rss_bytes']['median'] / 2**20:.0f} MiB, "
                     f"load {s['load_s']['median']:.2f} s, file {row['file_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)


def cmd_build_runner(args: argparse.Namespace) -> None:
    from handheld.runtime_bindings.native import build_runner, runner_command

    binary = build_runner(args.target)
    print(binary)
    print("run it: " + " ".join(runner_command(binary, args.target)) + " MODEL.pte --prompt 128000,791,6864 --gen-len 32",
          file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> None:
    from handheld.demo import run_demo

    run_demo(Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    from handheld.config import known_model_names

    parser = argparse.ArgumentParser(
        prog="handheld",
        description="Take Llama 3.2 class models onto phones and Arm boards: load a checkpoint, "
        "quantize it, lower it to an ExecuTorch .pte and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"handheld {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-random", help="write a checkpoint with random weights (for benchmarks and tests)")
    p.add_argument("--model", required=True, help=f"named shape: {', '.join(known_model_names())}")
    p.add_argument("--format", default="meta", help="meta (consolidated.00.pth + params.json) or hf (safetensors + config.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="directory to create (must not exist or be empty)")
    p.set_defaults(func=cmd_init_random)

    p = sub.add_parser("inspect", help="describe a .pte (metadata, size, delegation) or a checkpoint directory")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("export", help="lower a checkpoint to an ExecuTorch .pte")
    p.add_argument("--checkpoint", required=True, help="Meta or Hugging Face checkpoint directory")
    p.add_argument("--scheme", help="numeric scheme: fp32 (default), bf16, 8da4w (Llama 3.2 mobile 4-bit); "
                   "pre-quantized checkpoints (SpinQuant, QLoRA) bring their own")
    p.add_argument("--group-size", type=int, default=32, help="weight group size of 4-bit schemes (default 32)")
    p.add_argument("--backend", default="xnnpack", help="delegate to lower to (xnnpack, ...)")
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, help="KV cache length: prompt + generated tokens")
    p.add_argument("--tokenizer", help="tokenizer.model for the BOS/EOS ids (default: the checkpoint's own)")
    p.add_argument("--full-logits", action="store_true", help="return logits for every position (needed by `handheld eval`)")
    p.add_argument("-o", "--output", required=True, help=".pte file to write (written atomically)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate text from a .pte (ExecuTorch runtime) or a checkpoint (eager PyTorch)")
    p.add_argument("model", help="a .pte program, or a checkpoint directory to run in eager PyTorch")
    p.add_argument("--tokenizer", required=True, help="tiktoken tokenizer.model (Llama 3 format)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in Llama 3's chat format as a user turn")
    p.add_argument("--scheme", help="checkpoints only: numeric scheme applied in eager PyTorch (default fp32)")
    p.add_argument("--group-size", type=int, default=32, help="checkpoints only: 4-bit group size")
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, help="checkpoints only: KV cache length")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="perplexity of a .pte or a checkpoint on a text, and agreement with a float reference")
    p.add_argument("model", help="a .pte exported with --full-logits, or a checkpoint directory (eager PyTorch)")
    p.add_argument("--text", required=True, help="UTF-8 text file to score")
    p.add_argument("--tokenizer", required=True, help="tiktoken tokenizer.model")
    p.add_argument("--context", type=int, default=256, help="window length in tokens (default 256)")
    p.add_argument("--stride", type=int, default=128, help="window step; each window scores its last `stride` tokens")
    p.add_argument("--max-tokens", type=int, help="score only the text's first N tokens")
    p.add_argument("--reference", help="float checkpoint to compare with: top-1 agreement and mean KL divergence")
    p.add_argument("--scheme", help="checkpoints only: scheme applied in eager PyTorch (default fp32)")
    p.add_argument("--group-size", type=int, default=32, help="checkpoints only: 4-bit group size")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "spinquant", help="learn SpinQuant rotations on calibration text and write Meta's SpinQuant checkpoint",
        description="Fold norms, learn R1/R2 by Cayley SGD on the 8da4w fake-quantized loss, fold R4 (online "
        "Hadamard), quantize with RTN or GPTQ, and write Meta's pre-quantized SpinQuant layout. Runs data-parallel "
        "under `torchrun --nproc-per-node N` (gloo on CPU, NCCL on GPUs).")
    _add_recipe_arguments(p)
    p.add_argument("--calib", required=True, help="plain UTF-8 calibration text")
    p.add_argument("--steps", type=int, default=100, help="Cayley SGD steps (default 100, as the paper)")
    p.add_argument("--lr", type=float, default=1.5, help="Cayley SGD learning rate (default 1.5, as the paper)")
    p.add_argument("--seq-len", type=int, default=256, help="calibration sequence length in tokens")
    p.add_argument("--samples", type=int, default=128, help="calibration sequences drawn from the text (default 128)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step, over all processes")
    p.add_argument("--weight-quant", default="rtn", help="rtn (round to nearest) or gptq (its own calibration pass)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial random Hadamards and the sample order")
    p.add_argument("--save-every", type=int, default=10, help="save resumable state every N steps")
    p.set_defaults(func=cmd_spinquant)

    p = sub.add_parser(
        "qat", help="quantization-aware fine-tuning, then LoRA on the frozen QAT backbone (Meta's QLoRA recipe)",
        description="Fine-tune under 8da4w fake quantization (phase qat), then train LoRA adapters on the frozen "
        "fake-quantized backbone (phase lora), and write Meta's pre-quantized QLoRA layout with the adapters unmerged. "
        "--phase float fine-tunes without quantization (the fair baseline). Data: plain text, or .jsonl chat dialogs "
        '({"messages": [{"role", "content"}, ...]}, loss on assistant tokens). Data-parallel under torchrun.')
    _add_recipe_arguments(p)
    p.add_argument("--data", required=True, help="plain UTF-8 text, or .jsonl chat dialogs")
    p.add_argument("--phase", default="both", help="qat, lora, both (qat then lora; default) or float")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per phase (default 100)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of full fine-tuning (qat, float)")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="peak learning rate of the adapters (lora)")
    p.add_argument("--warmup", type=int, default=10, help="linear warm-up steps before the cosine decay")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch, over all processes")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    p.add_argument("--lora-rank", type=int, default=16, help="adapter rank (Meta's files: 16)")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="adapter alpha; scale = alpha / rank (Meta's: 32)")
    p.add_argument("--eval-every", type=int, default=25, help="validation loss every N steps (5%% of the data held out)")
    p.add_argument("--save-every", type=int, default=25, help="save resumable state every N steps")
    p.add_argument("--seed", type=int, default=0, help="seeds the data order and the validation split")
    p.set_defaults(func=cmd_qat)

    p = sub.add_parser(
        "bench", help="measure .pte programs: load, TTFT, prefill and decode tok/s, peak RSS, file size",
        description="Runs each program --warmup + --runs times, each run in a fresh process (so peak RSS is that "
        "program's own), on a synthetic prompt (no tokenizer needed), generating exactly --gen-len tokens greedily. "
        "Rates follow ExecuTorch's LLM runner: prefill = prompt tokens / prefill time, decode = decode steps / "
        "decode time. Prints median, min, max and coefficient of variation; --json writes self-describing rows.")
    p.add_argument("models", nargs="+", metavar="MODEL.pte")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (default 64)")
    p.add_argument("--gen-len", type=int, default=128, help="generated tokens (default 128)")
    p.add_argument("--runs", type=int, default=5, help="measured runs per program (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="runtime threads (default: all cores)")
    p.add_argument("--runner", default="python",
                   help="python (ExecuTorch's Python runtime) or native (handheld's C++ runner, built on first use)")
    p.add_argument("--target", default="host",
                   help="host (this machine) or qemu-aarch64 (cross-built runner under qemu user-mode emulation; "
                   "figures are labelled emulated)")
    p.add_argument("--count-work", action="store_true",
                   help="native runner: one more run counting instructions (valgrind) or emulated blocks (qemu), "
                   "a deterministic figure the regression gate also checks")
    p.add_argument("--no-bandwidth", action="store_true", help="skip measuring memory bandwidth (no roofline)")
    p.add_argument("--json", type=Path, help="write the results here")
    _add_gate_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "report", help="Markdown report with charts from bench results; optional regression gate",
        description="Compares programs side by side (ratios against the fastest unquantized program, share of the "
        "memory-bandwidth roofline) in DIR/report.md with PNG charts; --eval adds perplexity from `handheld eval --json`.")
    p.add_argument("results", nargs="+", metavar="RESULTS.json", help="`handheld bench --json` output(s)")
    p.add_argument("-o", "--output", required=True, help="folder for report.md and the charts")
    p.add_argument("--eval", action="append", default=[], metavar="EVAL.json",
                   help="`handheld eval --json` output; matched to programs by scheme (repeatable)")
    p.add_argument("--base", help="program to compute ratios against (default: fastest fp32/bf16 program)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    _add_gate_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "build-runner", help="build handheld's native C++ runner (cached) and print its path",
        description="Builds runtime_bindings/native/handheld_runner.cpp with CMake against the ExecuTorch runtime in the "
        "installed executorch wheel (host), or cross-compiles it against the aarch64 wheel (qemu-aarch64). The binary "
        "loads a .pte, prefills --prompt token ids, decodes greedily and prints JSON statistics.")
    p.add_argument("--target", default="host", help="host or qemu-aarch64")
    p.set_defaults(func=cmd_build_runner)

    p = sub.add_parser("demo", help="the main job: build, export, run and compare the built-in default model")
    p.add_argument("--out", default="handheld-demo", help="folder for checkpoints, programs and the report")
    p.set_defaults(func=cmd_demo)
    return parser


def _add_gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", metavar="OLD.json", help="bench results to compare against (the CI gate)")
    p.add_argument("--max-regression", type=float, metavar="PCT",
                   help="fail when a median decode/prefill rate falls, or peak RSS or the work count rises, by more than PCT percent")
    p.add_argument("--gate", default="all",
                   help="all (default) or work: check only the deterministic work counts (emulators, noisy runners)")


def _add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """What both recipes (spinquant, qat) take: a float checkpoint in, a pre-quantized one out, resumable."""
    p.add_argument("--checkpoint", required=True, help="float checkpoint directory (Meta or Hugging Face format)")
    p.add_argument("-o", "--output", required=True, help="directory to write (created atomically)")
    p.add_argument("--group-size", type=int, default=32, help="4-bit weight group size (default 32)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT.resume/")
    p.add_argument("--tokenizer", help="tokenizer.model (default: the checkpoint's own)")


def main(argv: list[str] | None = None) -> int:
    # torchao warns at import about GPU-only extensions it cannot load on a CPU machine.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HandheldError as e:
        print(f"handheld: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("handheld: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
