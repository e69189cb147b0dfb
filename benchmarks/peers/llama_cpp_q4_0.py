"""Peer: llama.cpp Q4_0 on the same checkpoint, measured like `handheld bench` and written in its row schema.

Needs `pip install -e '.[peers]'` (llama-cpp-python compiles llama.cpp). On a VM whose kernel exposes
fewer SIMD extensions than CPUID reports (here: AVX2 but no AVX-512 or AMX in /proc/cpuinfo), a native
build dies with SIGILL; build for what /proc/cpuinfo lists instead:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" pip install -e '.[peers]'

Two steps:

    python benchmarks/peers/llama_cpp_q4_0.py convert --checkpoint CKPT --out DIR     # DIR/model-f16.gguf, DIR/model-q4_0.gguf
    python benchmarks/peers/llama_cpp_q4_0.py bench DIR/model-q4_0.gguf --prompt-len 64 --gen-len 128 --json OUT.json

The GGUF is written with the `gguf` package from handheld's own checkpoint reader (Meta's weight layout is
GGUF's), with a placeholder vocabulary of the right size: speed does not depend on the token strings.
Each run is a fresh process (peak RSS is the run's own); decode and prefill rates follow ExecuTorch's
runner's definitions, as handheld bench does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# llama.cpp's file type ids (enum llama_ftype).
FTYPE_F16, FTYPE_Q4_0 = 1, 2
def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte (llama.cpp's BPE vocabularies look bytes up by these)."""
    from handheld.core.tokenizers.hf_tokenizer import byte_decoder

    symbol = {b: c for c, b in byte_decoder().items()}
    return [symbol[b] for b in range(256)]


def placeholder_vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Byte tokens, then unique filler pieces, then Llama 3's 256 special tokens (control type)."""
    from gguf import TokenType

    n_special = 256
    tokens = byte_symbols()
    tokens += [f"t{i}" for i in range(vocab_size - n_special - 256)]
    tokens += ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(n_special - 2)]
    types = [TokenType.NORMAL] * (vocab_size - n_special) + [TokenType.CONTROL] * n_special
    return tokens, [int(t) for t in types], ["t 0"]


def write_f16_gguf(checkpoint: Path, out: Path) -> None:
    from handheld.core.checkpoints import read_checkpoint
    from handheld.core.checkpoints.gguf import GgufVocabulary, write_gguf

    ckpt = read_checkpoint(checkpoint)
    tokens, types, merges = placeholder_vocab(ckpt.args.vocab_size)
    vocabulary = GgufVocabulary(tokens, types, merges, bos_id=ckpt.args.vocab_size - 256,
                                eos_id=ckpt.args.vocab_size - 255)
    # Norm gains stay float32 (llama.cpp's converter does the same); matrices go to F16.
    write_gguf(out, ckpt.args, ckpt.state, "F16", vocabulary=vocabulary)


def convert(checkpoint: Path, out_dir: Path) -> Path:
    import llama_cpp

    out_dir.mkdir(parents=True, exist_ok=True)
    f16, q4 = out_dir / "model-f16.gguf", out_dir / "model-q4_0.gguf"
    if not f16.exists():
        write_f16_gguf(checkpoint, f16.with_suffix(".partial"))
        f16.with_suffix(".partial").rename(f16)
    if not q4.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPE_Q4_0
        params.nthread = 2
        partial = q4.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), params) != 0:
            raise SystemExit(f"llama.cpp failed to quantize {f16}")
        partial.rename(q4)
    print(f"wrote {f16} and {q4}")
    return q4


def gguf_bytes_per_token(path: Path) -> int:
    """Every tensor's bytes, but one row of the embedding table unless it doubles as the classifier."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    embedding = tensors["token_embd.weight"]
    if "output.weight" in tensors:
        rows = int(embedding.shape[-1])  # GGUF lists dimensions innermost first
        total -= int(embedding.n_bytes) * (rows - 1) // rows
    return total


def gguf_scheme(path: Path) -> str:
    """The weights' type as llama.cpp names it (Q4_0, F16, ...), from the file's own general.file_type."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "unknown type"
    name = LlamaFileType(int(field.parts[field.data[0]][0])).name  # e.g. MOSTLY_Q4_0
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def last_position_argmax(llm) -> int:
    """Greedy: the argmax of the last evaluated position's logits. `Llama.scores` is filled only with
    logits_all=True (logits for every prompt position: extra prefill work), so read llama.cpp's own buffer."""
    import llama_cpp

    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def measure_once(path: str, prompt_len: int, gen_len: int, threads: int) -> dict:
    """One run, in this (fresh) process."""
    import llama_cpp

    from handheld.decoding.generation import synthetic_prompt
    from handheld.measure.run_once import current_rss_bytes, peak_rss_bytes

    rss_before = current_rss_bytes()
    start = time.perf_counter()
    # n_batch = n_ctx: the prompt goes in one batch, and the logits buffer has a row per position.
    llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_len + gen_len, n_batch=prompt_len + gen_len, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - start
    prompt = synthetic_prompt(prompt_len)
    start = time.perf_counter()
    llm.eval(prompt)
    token = last_position_argmax(llm)
    first = time.perf_counter()
    generated = [token]
    for _ in range(gen_len - 1):
        llm.eval([token])
        token = last_position_argmax(llm)
        generated.append(token)
    end = time.perf_counter()
    return {"load_s": load_s, "ttft_s": first - start, "prefill_tok_s": prompt_len / (first - start),
            "decode_tok_s": (gen_len - 1) / (end - first), "peak_rss_bytes": peak_rss_bytes(),
            "rss_before_load_bytes": rss_before, "generated_tokens": len(generated), "first_tokens": generated[:8]}


def bench(path: Path, prompt_len: int, gen_len: int, runs: int, warmup: int, threads: int) -> dict:
    from handheld.measure.bench import METRICS, SCHEMA, summarize
    from handheld.measure.host import host_info

    samples = []
    for i in range(warmup + runs):
        child = subprocess.run([sys.executable, __file__, "child", str(path), str(prompt_len), str(gen_len), str(threads)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"llama.cpp run failed:\n{child.stderr[-2000:]}")
        sample = json.loads(child.stdout.strip().splitlines()[-1])
        sample["program_rss_bytes"] = sample["peak_rss_bytes"] - sample["rss_before_load_bytes"]
        print(f"{path.name} {'warm-up' if i < warmup else 'run'}: decode {sample['decode_tok_s']:.2f} tok/s, "
              f"prefill {sample['prefill_tok_s']:.1f} tok/s, peak RSS {sample['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        if i >= warmup:
            samples.append(sample)
    from importlib import metadata

    import llama_cpp

    # The build decides the speed: which vector units it was compiled for (never AMX the VM does not grant).
    host = host_info() | {"versions": host_info()["versions"] | {"llama-cpp-python": metadata.version("llama-cpp-python")},
                          "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip()}
    scheme = gguf_scheme(path)
    return {
        "schema": SCHEMA, "name": f"llama.cpp {scheme}", "path": str(path), "file_bytes": path.stat().st_size,
        "model": "same checkpoint", "scheme": scheme, "backend": "llama.cpp CPU", "max_seq_len": prompt_len + gen_len,
        "bytes_per_token": gguf_bytes_per_token(path), "prompt_len": prompt_len, "gen_len": gen_len, "runs": runs,
        "warmup": warmup, "threads": threads, "runner": "llama-cpp-python", "target": "host", "samples": samples,
        "stats": {m: summarize([s[m] for s in samples]) for m in METRICS}, "host": host,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="checkpoint -> F16 GGUF -> Q4_0 GGUF")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("bench", help="measure a GGUF like handheld bench")
    p.add_argument("gguf", type=Path)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write a handheld-bench results file with this one row")
    p = sub.add_parser("child")
    p.add_argument("path")
    p.add_argument("prompt_len", type=int)
    p.add_argument("gen_len", type=int)
    p.add_argument("threads", type=int)
    args = parser.parse_args()
    if args.command == "convert":
        convert(args.checkpoint, args.out)
    elif args.command == "child":
        print(json.dumps(measure_once(args.path, args.prompt_len, args.gen_len, args.threads)))
    else:
        row = bench(args.gguf, args.prompt_len, args.gen_len, args.runs, args.warmup, args.threads)
        print(json.dumps(row["stats"], indent=2))
        if args.json:
            from handheld.measure.bench import SCHEMA

            from handheld.measure.host import run_record

            record = {"schema": SCHEMA, "made_by": run_record(), "memory_bandwidth_gbs": None, "rows": [row]}
            args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
