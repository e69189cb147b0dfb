"""Arguments and helpers more than one verb uses: recipes' common flags, the regression gate, eager models."""

from __future__ import annotations

import argparse
from pathlib import Path

from handheld.core.defaults import GROUP_SIZE, NPU_CALIB_SEQUENCES
from handheld.core.errors import HandheldError


def add_group_size(p: argparse.ArgumentParser, applies_to: str = "4-bit schemes") -> None:
    p.add_argument("--group-size", type=int, help=f"weights per scale in {applies_to} (default {GROUP_SIZE})")


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", metavar="OLD.json", help="bench results to compare against (the CI gate)")
    p.add_argument("--max-regression", type=float, metavar="PCT",
                   help="fail when a median decode/prefill rate falls, or peak RSS or the work count rises, by more than PCT percent")
    p.add_argument("--gate", default="all",
                   help="all (default) or work: check only the deterministic work counts (emulators, noisy runners)")


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """What both training jobs (spinquant, qat) take: a float checkpoint in, a pre-quantized one out, resumable."""
    p.add_argument("--checkpoint", required=True, help="float checkpoint: Meta or Hugging Face directory, or a .gguf file")
    p.add_argument("-o", "--output", required=True, help="directory to write (created atomically)")
    p.add_argument("--group-size", type=int, default=GROUP_SIZE, help=f"4-bit weight group size (default {GROUP_SIZE})")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT.resume/")
    p.add_argument("--tokenizer", help="tokenizer file (default: the checkpoint's own)")
    add_memory_check_argument(p)
    p.add_argument("--device", default="auto",
                   help="auto (default: a CUDA GPU when torch sees one, else the CPU), cpu or cuda; under torchrun "
                   "each process takes GPU LOCAL_RANK (NCCL), or the CPU (gloo)")


def add_memory_check_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-memory-check", action="store_true",
                   help="start even when the estimated peak memory exceeds what is available (the check is refused "
                   "in one line naming both numbers otherwise)")


def add_guard_and_verbose_arguments(p: argparse.ArgumentParser, checked: str) -> None:
    """generate --chat and chat: a Llama Guard 3 program reads `checked`, and the runtimes' own logs on request."""
    p.add_argument("--guard", metavar="GUARD.pte",
                   help=f"check {checked} with a Llama Guard 3 program before showing them")
    p.add_argument("--guard-tokenizer", help="with --guard: the guard's tokenizer (default: --tokenizer)")
    p.add_argument("--verbose", action="store_true", help="show ExecuTorch's and torch's own log lines on stderr")


def guard_from_args(args: argparse.Namespace):
    """The --guard program with its tokenizer, or None without --guard."""
    if args.guard_tokenizer and not args.guard:
        raise HandheldError("--guard-tokenizer goes with --guard")
    if not args.guard:
        return None
    from handheld.cli.guard import load_guard

    tokenizer = args.guard_tokenizer or args.tokenizer
    if not tokenizer:
        raise HandheldError("--guard needs the guard's tokenizer: pass --guard-tokenizer (or --tokenizer)")
    return load_guard(args.guard, tokenizer)


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def read_baseline(args: argparse.Namespace) -> dict | None:
    """Read the baseline before any long work, so a bad path fails at once."""
    from handheld.measure.bench import load_results

    if (args.baseline is None) != (args.max_regression is None):
        raise HandheldError("--baseline and --max-regression go together")
    return load_results([Path(args.baseline)]) if args.baseline else None


def apply_gate(results: dict, baseline: dict | None, max_regression: float | None, gate: str) -> None:
    from handheld.measure.gate import GATES, regressions

    if gate not in GATES:
        raise HandheldError(f"unknown --gate {gate!r}; known gates: {', '.join(GATES)}")
    if baseline is None:
        return
    failures = regressions(results, baseline, max_regression, gate)
    if failures:
        raise HandheldError("regression gate failed:\n  " + "\n  ".join(failures))
    checked = "no median" if gate == "all" else "no work count"
    print(f"regression gate passed: {checked} moved more than {max_regression:g}% the wrong way")


def add_npu_arguments(p: argparse.ArgumentParser) -> None:
    """What an NPU scheme takes besides --backend and --scheme: the chip and the calibration text."""
    p.add_argument("--soc", help="NPU chip: qnn SM8550, SM8650 (default), SM8750; mediatek mt6989 (default), mt6991, mt6993")
    p.add_argument("--calib", help="UTF-8 text: xnnpack 4-bit schemes calibrate their weights on it (GPTQ); NPU "
                   "schemes set their activation ranges from it")
    p.add_argument("--calib-sequences", type=int, default=NPU_CALIB_SEQUENCES,
                   help=f"NPU schemes: calibration sequences drawn from --calib (default {NPU_CALIB_SEQUENCES})")


def quiet_library_noise() -> None:
    """Hide, in this process, what the libraries print on every call that is not the user's business (--verbose
    shows it): torchao's warning at import about GPU-only extensions a CPU machine cannot load, torch's about an
    API torchao uses, and ExecuTorch's LLM ops checking their start position with an API torch is retiring (one
    warning per traced layer). Worker processes call it too: filters are not inherited."""
    import logging
    import warnings

    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="_check_is_size will be removed", category=FutureWarning)
