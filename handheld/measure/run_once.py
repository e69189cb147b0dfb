"""One measured run of one `.pte` in this process: load, prefill a synthetic prompt, decode greedily.

`handheld bench` starts this module in a fresh child process per run, so the peak RSS it reports is
that program's own (plus the interpreter and runtime, which `rss_before_load_bytes` shows):

    python -m handheld.measure.run_once MODEL.pte --prompt-len 64 --gen-len 128 --threads 2

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

def current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """The address space's high-water mark. Not getrusage's ru_maxrss: that survives exec, so a child
    would report its parent's peak when the parent was bigger."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError("/proc/self/status has no VmHWM line")


def set_threads(threads: int) -> None:
    """Size ExecuTorch's thread pool (XNNPACK and the optimized kernels run on it)."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


def measure_once(path: str, prompt_len: int, gen_len: int, threads: int) -> dict:
    from handheld.core.errors import HandheldError
    from handheld.decoding.generation import generate, synthetic_prompt
    from handheld.runtime_bindings.pte_file import read_pte_structure
    from handheld.runtime_bindings.python.program import PteProgram, load_runtime_kernels

    load_runtime_kernels()
    set_threads(threads)
    # Reading the metadata (a parse, and its imports) is not loading the program: outside the measured window.
    structure = read_pte_structure(path)
    rss_before = current_rss_bytes()
    start = time.perf_counter()
    program = PteProgram(path, structure)
    load_s = time.perf_counter() - start
    # The prompt fills positions 0..P-1, then gen_len - 1 decode steps follow (the first token comes from prefill).
    if prompt_len + gen_len - 1 > program.max_seq_len:
        raise HandheldError(
            f"{path}: prompt {prompt_len} + generated {gen_len} tokens need {prompt_len + gen_len - 1} cache "
            f"positions; the program has {program.max_seq_len} (export it with a larger --max-seq-len)"
        )
    prompt = synthetic_prompt(prompt_len)
    tokens, stats = generate(program, prompt, gen_len, stop_ids=[])  # no stop ids: always gen_len tokens
    return {
        "load_s": load_s,
        "ttft_s": stats.ttft_s,
        "prefill_tok_s": stats.prefill_tok_s,
        "decode_tok_s": stats.decode_tok_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_load_bytes": rss_before,
        "generated_tokens": stats.generated_tokens,
        "first_tokens": tokens[:8],
        "metadata": {k: v for k, v in program.constant_methods.items() if k != "handheld_op_counts"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pte")
    parser.add_argument("--prompt-len", type=int, required=True)
    parser.add_argument("--gen-len", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    from handheld.core.errors import HandheldError

    try:
        result = measure_once(args.pte, args.prompt_len, args.gen_len, args.threads)
    except HandheldError as e:
        print(f"handheld: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
