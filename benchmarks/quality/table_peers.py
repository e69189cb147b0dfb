"""llama.cpp's rows of the quality table (benchmarks/quality/table.py): an F32 GGUF of the checkpoint's weights,
the formats llama.cpp quantizes from it itself, each scored on the table's windows through llama.cpp's own logits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from handheld.core.fetch.catalog import cached_path, get_pretrained
from handheld.core.checkpoints import read_checkpoint
from handheld.core.checkpoints.gguf import write_gguf
from peers.llama_cpp_q4_0 import gguf_bytes_per_token
from table import CONTEXT, LLAMA_CPP_TYPES, scores

# llama.cpp's file types (llama.h's llama_ftype) by the names its quantize tool prints.
FTYPES = {"F32": 0, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q5_K_M": 17}


def peer_info() -> dict:
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def recorded_peer_rows(which: str, table) -> dict[str, dict]:
    """llama.cpp's rows of this checkpoint as the table recorded them (a run of a few handheld rows reuses them)."""
    rows = {kind: table.report["rows"].get(f"{which}:llama.cpp:{kind}") for kind in LLAMA_CPP_TYPES}
    missing = [kind for kind, row in rows.items() if row is None]
    if missing:
        raise SystemExit(f"the table has no llama.cpp {', '.join(missing)} rows for {which}: run it without --rows")
    return rows


def gguf_file(which: str, checkpoint: Path, work: Path, kind: str) -> Path:
    """The checkpoint's weights as a GGUF of `kind`: F32 written by handheld, the rest quantized by llama.cpp."""
    import llama_cpp

    out = work / f"{which}-{kind}.gguf"
    if out.exists():
        return out
    partial = out.with_suffix(".partial")
    if kind == "F32":
        loaded = read_checkpoint(checkpoint)
        write_gguf(partial, loaded.args, loaded.state, "F32", tokenizer_from=cached_path(get_pretrained("smollm2-135m-instruct")))
    else:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = FTYPES[kind], len(os.sched_getaffinity(0))
        source = gguf_file(which, checkpoint, work, "F32")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
            raise SystemExit(f"llama.cpp failed to quantize {source} to {kind}")
    partial.rename(out)
    return out


def llama_cpp_logits_fn(path: Path) -> Callable[[list[int]], torch.Tensor]:
    """Logits for every position of a window, from a fresh KV cache each time."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT, n_batch=CONTEXT, n_ubatch=CONTEXT, logits_all=True,
                          n_threads=len(os.sched_getaffinity(0)), verbose=False)

    def run(window: list[int]) -> torch.Tensor:
        llm.reset()
        llm.eval(window)
        return torch.from_numpy(np.array(llm.scores[: len(window)], dtype=np.float32))

    return run


def llama_cpp_rows(which: str, checkpoint: Path, work: Path, texts: dict, reference, table) -> dict[str, dict]:
    """Every llama.cpp row of this checkpoint (measured now unless the table has it from this commit)."""
    rows = {}
    for kind in LLAMA_CPP_TYPES:
        key = f"{which}:llama.cpp:{kind}"
        if not table.has(key):
            path = gguf_file(which, checkpoint, work, kind)
            result = scores(llama_cpp_logits_fn(path), reference, texts)
            table.add(key, {"checkpoint": which, "kind": "llama.cpp", "row": kind, "scores": result,
                            "bytes_per_token": gguf_bytes_per_token(path), "file_bytes": path.stat().st_size,
                            "file_kind": "GGUF", **peer_info()})
        rows[kind] = table.report["rows"][key]
    return rows
