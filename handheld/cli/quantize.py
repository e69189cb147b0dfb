"""`handheld quantize`: an NPU scheme applied to a float checkpoint and calibrated on text, on any machine.

Writes a `.pt2` (the converted program, `torch.export.save`, with handheld's metadata inside) that
`handheld eval` scores on the CPU and `handheld export --backend qnn|mediatek` lowers where the vendor SDK is.
"""

from __future__ import annotations

import argparse

from handheld.cli._shared import add_npu_arguments
from handheld.core.defaults import NPU_SEQ_LEN

HELP = "calibrate an NPU scheme (qnn, mediatek) on text and write a .pt2 to lower where the vendor SDK is"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="float checkpoint: Meta or Hugging Face directory, or a .gguf file")
    p.add_argument("--backend", required=True, help="qnn or mediatek")
    p.add_argument("--scheme", required=True, help="qnn: 16a4w, 16a8w, 8a8w; mediatek: a16w4, a16w8, a8w8")
    add_npu_arguments(p)
    p.add_argument("--seq-len", type=int, default=NPU_SEQ_LEN,
                   help=f"tokens per call = KV-cache length of the static program (default {NPU_SEQ_LEN})")
    p.add_argument("--tokenizer", help="tokenizer to read --calib with (default: the checkpoint's own)")
    p.add_argument("-o", "--output", required=True, help=".pt2 file to write (written atomically)")


def run(args: argparse.Namespace) -> None:
    from handheld import api

    made = api.quantize_npu(args.checkpoint, args.calib, args.output, backend=args.backend, scheme=args.scheme,
                              soc=args.soc, seq_len=args.seq_len, sequences=args.calib_sequences, tokenizer=args.tokenizer,
                              log=lambda msg: print(f"[quantize] {msg}", flush=True))
    print(f"wrote {made.path} ({made.path.stat().st_size / 2**20:.1f} MiB): {made.backend} {made.scheme} for {made.chip}, "
          f"{made.seq_len} tokens per call; score it with `handheld eval {made.path}`, lower it with "
          f"`handheld export --checkpoint {made.path} --backend {made.backend}`")
