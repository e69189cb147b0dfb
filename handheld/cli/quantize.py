"""`handheld quantize`: an NPU scheme applied to a float checkpoint and calibrated on text, on any machine.

Writes a `.pt2` (the converted program, `torch.export.save`, with handheld's metadata inside) that
`handheld eval` scores on the CPU and `handheld export --backend qnn|mediatek` lowers where the vendor SDK is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handheld.cli._shared import add_npu_arguments, npu_quantized, optional_path
from handheld.core.defaults import NPU_SEQ_LEN
from handheld.core.errors import HandheldError

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
    from handheld.core.atomic import refuse_overwriting_inputs
    from handheld.export.npu import ARTEFACT_SUFFIX, NpuOptions, save_quantized

    output = Path(args.output)
    if output.suffix != ARTEFACT_SUFFIX:
        raise HandheldError(f"-o must end in {ARTEFACT_SUFFIX} (eval and export recognise the artefact by it)")
    options = NpuOptions(args.backend, args.scheme, args.soc, args.seq_len)
    options.resolve()
    refuse_overwriting_inputs(output, [Path(args.checkpoint), optional_path(args.calib), optional_path(args.tokenizer)])
    quantized = npu_quantized(args, Path(args.checkpoint), options)
    save_quantized(quantized, output)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB): {quantized.options.backend} "
          f"{quantized.options.scheme} for {quantized.options.chip}, {options.seq_len} tokens per call; score it with "
          f"`handheld eval {output}`, lower it with `handheld export --checkpoint {output} --backend {options.backend}`")
