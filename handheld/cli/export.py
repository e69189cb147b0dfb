"""`handheld export`: lower a checkpoint to an ExecuTorch `.pte` under a scheme, for a backend.

CPU (xnnpack): an eager scheme; 4-bit schemes round data-free by a scale rule, or with --calib by GPTQ on
that text. NPU (qnn, mediatek): a calibrated scheme, from a checkpoint and --calib or
from a `.pt2` that `handheld quantize` wrote; the vendor SDK must be installed, which is checked first.
"""

from __future__ import annotations

import argparse

from handheld.cli._shared import add_group_size, add_memory_check_argument, add_npu_arguments
from handheld.core.defaults import GPTQ_CALIB_TOKENS, KV_CACHE, MAX_SEQ_LEN, NPU_SEQ_LEN, ROTATION, SCALE_RULE

HELP = "lower a checkpoint to an ExecuTorch .pte"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="Meta or Hugging Face checkpoint directory, or a .gguf file; "
                   "for NPU backends also a .pt2 from `handheld quantize`")
    p.add_argument("--scheme", help="numeric scheme: fp32 (default), bf16, fp16, 8da4w (Llama 3.2 mobile 4-bit), "
                   "8da4w-c4 (8da4w with a 4-bit classifier, like ExecuTorch's export_llm); "
                   "pre-quantized checkpoints (SpinQuant, QLoRA) bring their own; qnn: 16a4w, 16a8w, 8a8w; "
                   "mediatek: a16w4, a16w8, a8w8")
    add_group_size(p)
    p.add_argument("--scale-rule", help=f"xnnpack 4-bit schemes: how a group's scale is chosen: weighted (error-weighted "
                   f"search), extreme (the extreme stored exactly), absmax (torchao's own); default {SCALE_RULE}")
    p.add_argument("--calib-tokens", type=int, help=f"xnnpack 4-bit schemes with --calib: tokens of it GPTQ reads "
                   f"(default {GPTQ_CALIB_TOKENS})")
    p.add_argument("--budget-mb", type=float, help="xnnpack 4-bit schemes with --calib: mixed precision; MB of weights a "
                   "decoded token may read, the linears whose 4-bit rounding costs most (measured on --calib) kept "
                   "8-bit within it")
    p.add_argument("--rotation", help=f"xnnpack 4-bit schemes with --calib: rotate before GPTQ: quarot (random Hadamard "
                   f"rotations folded in, one small online Hadamard per layer; the best quality per byte measured) or "
                   f"none; default {ROTATION}")
    p.add_argument("--backend", default="xnnpack", help="delegate to lower to: xnnpack (default), qnn, mediatek")
    add_npu_arguments(p)
    p.add_argument("--max-seq-len", type=int, help=f"KV cache length: prompt + generated tokens (default "
                   f"{MAX_SEQ_LEN}; NPU programs: {NPU_SEQ_LEN}, also their fixed tokens per call)")
    p.add_argument("--kv-cache", default=KV_CACHE, help=f"what the KV cache stores (CPU programs): "
                   f"{KV_CACHE} (default), or int8 per token and head (ExecuTorch's quantized cache: ~3.7x fewer bytes "
                   f"per cached token, a small quality cost)")
    p.add_argument("--tokenizer", help="tokenizer for the BOS/EOS ids (default: the checkpoint's own)")
    add_memory_check_argument(p)
    p.add_argument("--full-logits", action="store_true", help="return logits for every position (needed by `handheld eval`)")
    p.add_argument("-o", "--output", required=True, help=".pte file to write (written atomically)")


def run(args: argparse.Namespace) -> None:
    from handheld import api

    log = lambda msg: print(f"[export] {msg}", flush=True)  # noqa: E731
    result = api.export(
        args.checkpoint, args.output, log=log, scheme=args.scheme, backend=args.backend, max_seq_len=args.max_seq_len,
        tokenizer=args.tokenizer, full_logits=args.full_logits, group_size=args.group_size, scale_rule=args.scale_rule,
        calib=args.calib, calib_tokens=args.calib_tokens, budget_mb=args.budget_mb, rotation=args.rotation, soc=args.soc,
        calib_sequences=args.calib_sequences, skip_memory_check=args.skip_memory_check, kv_cache=args.kv_cache,
    )
    meta = result.metadata
    print(f"wrote {result.path} ({result.file_bytes / 2**20:.1f} MiB) in {result.seconds:.0f} s: {meta.backend} "
          f"{meta.scheme}")
