"""`handheld export`: lower a checkpoint to an ExecuTorch `.pte` under a scheme, for a backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from handheld.cli._shared import add_group_size, optional_path
from handheld.core.defaults import MAX_SEQ_LEN

HELP = "lower a checkpoint to an ExecuTorch .pte"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="Meta or Hugging Face checkpoint directory, or a .gguf file")
    p.add_argument("--scheme", help="numeric scheme: fp32 (default), bf16, 8da4w (Llama 3.2 mobile 4-bit); "
                   "pre-quantized checkpoints (SpinQuant, QLoRA) bring their own")
    add_group_size(p)
    p.add_argument("--backend", default="xnnpack", help="delegate to lower to (default xnnpack)")
    p.add_argument("--max-seq-len", type=int, default=MAX_SEQ_LEN,
                   help=f"KV cache length: prompt + generated tokens (default {MAX_SEQ_LEN})")
    p.add_argument("--tokenizer", help="tokenizer for the BOS/EOS ids (default: the checkpoint's own)")
    p.add_argument("--full-logits", action="store_true", help="return logits for every position (needed by `handheld eval`)")
    p.add_argument("-o", "--output", required=True, help=".pte file to write (written atomically)")


def run(args: argparse.Namespace) -> None:
    from handheld.export.program import export_checkpoint

    result = export_checkpoint(
        Path(args.checkpoint), Path(args.output), scheme_name=args.scheme, backend_name=args.backend,
        max_seq_len=args.max_seq_len, tokenizer_path=optional_path(args.tokenizer), group_size=args.group_size,
        full_logits=args.full_logits, log=lambda msg: print(f"[export] {msg}", flush=True),
    )
    print(f"wrote {result.path} ({result.file_bytes / 2**20:.1f} MiB) in {result.seconds:.0f} s")
