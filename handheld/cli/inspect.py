"""`handheld inspect`: a `.pte`'s metadata, size and operator split, or a checkpoint's shape."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "describe a .pte (metadata, size, delegation) or a checkpoint (directory or .gguf)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> None:
    path = Path(args.path)
    if path.is_dir() or path.suffix == ".gguf":
        info, text = describe_checkpoint(path), format_checkpoint
    else:
        info, text = describe_pte(path), format_pte
    print(json.dumps(info, indent=2) if args.json else text(info))


def describe_pte(path: Path) -> dict[str, Any]:
    """From the file's structure alone: nothing in the program runs (see runtime_bindings/pte_file.py)."""
    from handheld.core.pte_metadata import ProgramMetadata
    from handheld.runtime_bindings.pte_file import read_pte_structure

    program = read_pte_structure(path)
    metadata = ProgramMetadata.from_constant_methods(program.constant_methods, str(path))
    counts = metadata.op_counts or {"delegated": {}, "portable": {}}
    delegated, portable = sum(counts["delegated"].values()), sum(counts["portable"].values())
    total = delegated + portable
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "methods": program.methods,
        "metadata": {k: v for k, v in program.constant_methods.items() if k not in _STRUCTURED},
        "weight_bytes": metadata.weight_bytes,
        "quantization": metadata.quantization,
        "provenance": metadata.provenance,
        "delegates": program.delegates,  # from the file's own structure, whoever wrote it
        "partitions": counts.get("partitions", {}),
        "ops_by_delegate": counts.get("by_backend", {}),
        "ops_delegated": counts["delegated"],
        "ops_not_delegated": counts["portable"],
        "delegated_share": delegated / total if total else None,
    }


_STRUCTURED = {"handheld_op_counts", "handheld_weight_bytes", "handheld_provenance", "handheld_quantization"}


def describe_checkpoint(directory: Path) -> dict[str, Any]:
    from handheld.core.checkpoints import read_checkpoint
    from handheld.export.metadata import model_name

    checkpoint = read_checkpoint(directory)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in checkpoint.state.values()})
    return {
        "checkpoint": str(directory),
        "format": checkpoint.format,
        "model": model_name(checkpoint.args),
        "parameters": sum(t.numel() for t in checkpoint.state.values()),
        "tied_embeddings": checkpoint.tied,
        "dtypes": dtypes,
        "stored_types": checkpoint.stored_types or None,
        "params": checkpoint.args.to_dict(),
        "tokenizer": str(checkpoint.tokenizer_path) if checkpoint.tokenizer_path else None,
    }


def format_pte(info: dict[str, Any]) -> str:
    lines = [
        f"file        {info['file']}",
        f"size        {info['file_bytes']:,} bytes ({info['file_bytes'] / 2**20:.1f} MiB)",
        f"methods     {', '.join(info['methods'])}",
        "metadata",
    ]
    lines += [f"  {key:24} {value}" for key, value in info["metadata"].items()]
    if info.get("provenance"):
        lines.append("made by     " + ", ".join(f"{key} {value}" for key, value in info["provenance"].items()))
    if info.get("quantization"):
        lines += format_quantization(info["quantization"])
    if info["weight_bytes"]:
        lines.append("weights by kind")
        lines += [f"  {kind:24} {n:>15,} bytes ({n / 2**20:.1f} MiB)" for kind, n in info["weight_bytes"].items()]
    lines.append("delegates   " + (", ".join(f"{backend} x{n}" for backend, n in info["delegates"].items()) or "none"))
    if info.get("partitions"):
        lines.append("partitions  " + ", ".join(f"{n} {backend}" for backend, n in info["partitions"].items()))
    share = info["delegated_share"]
    lines.append(f"operators   {'unknown' if share is None else f'{share:.0%} delegated'}")
    if info["ops_by_delegate"]:  # which delegate runs what
        for backend, ops in info["ops_by_delegate"].items():
            lines += _op_table(f"  run by {backend}", ops)
    else:  # programs written before handheld recorded the split by delegate
        lines += _op_table("  delegated", info["ops_delegated"])
    lines += _op_table("  not delegated (ExecuTorch kernels)", info["ops_not_delegated"])
    return "\n".join(lines)


def format_quantization(record: dict[str, Any]) -> list[str]:
    """How the program's integers were chosen: rule, calibration text, and the linears kept at 8 bits."""
    calibration = record.get("calibration") or {}
    lines = ["quantization",
             *(f"  {key:24} {record[key]}" for key in ("group_size", "scale_rule", "integers") if key in record)]
    if calibration:
        lines.append(f"  {'calibration':24} {calibration.get('method')} on {calibration.get('text')} "
                     f"(sha256 {str(calibration.get('sha256'))[:12]}..., {calibration.get('sequences')} x "
                     f"{calibration.get('seq_len')} tokens)")
    if record.get("rotation"):
        lines.append(f"  {'rotation':24} {record['rotation'].get('method')} (seed {record['rotation'].get('seed')}), "
                     "before GPTQ")
    if "budget_mb" in record:
        eight = record.get("eight_bit_linears") or []
        kinds: dict[str, int] = {}
        for name in eight:
            kinds[name.rsplit(".", 1)[-1]] = kinds.get(name.rsplit(".", 1)[-1], 0) + 1
        lines.append(f"  {'mixed precision':24} budget {record['budget_mb']:g} MB per token; {len(eight)} block linears "
                     f"8-bit by {record.get('sensitivity')} sensitivity"
                     + (f" ({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))})" if kinds else ""))
        lines += [f"    {name}" for name in eight]
    return lines


def _op_table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [f"{title}:"] + [f"    {name:32} {n}" for name, n in rows]


def format_checkpoint(info: dict[str, Any]) -> str:
    lines = [
        f"checkpoint  {info['checkpoint']} ({info['format']} format)",
        f"model       {info['model']}",
        f"parameters  {info['parameters']:,}",
        f"tied        {info['tied_embeddings']}",
        f"dtypes      {', '.join(info['dtypes'])}",
        *([f"stored as   {', '.join(f'{n} {kind}' for kind, n in info['stored_types'].items())}"] if info["stored_types"] else []),
        f"tokenizer   {info['tokenizer'] or 'none in the directory'}",
        "params",
    ]
    lines += [f"  {key:24} {value}" for key, value in info["params"].items()]
    return "\n".join(lines)
