"""Read a `.pte` file's structure without running any of it: its methods and its constant methods' values.

A `.pte` is untrusted input. Loading it into a runtime executes its methods (including the delegates'
compiled code), so what can be learned by parsing is learned by parsing: the header is checked, the
program's flatbuffer (without its weight segments) is converted to JSON by ExecuTorch's bundled `flatc` in a
separate process (which verifies the buffer against the schema), and constant methods are read as the
values their plans return. `inspect` and every metadata reader use this; only `forward` is ever executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handheld.core.errors import HandheldError

HEAD_BYTES = 64  # ExecuTorch's kNumHeadBytes: enough for the flatbuffer identifier and extended header
_IDENTIFIER = slice(4, 8)  # flatbuffer file identifier, "ET" + 2-digit schema version
_SCALARS = {"Int": "int_val", "Bool": "bool_val", "Double": "double_val", "String": "string_val"}
# The flatbuffer handed to flatc, at most: a program's instructions and metadata (weights live in segments; handheld's
# largest, the 3B shape's, is a few MB). flatc's JSON is ~10x its input and its run time follows: the cap bounds both.
MAX_PROGRAM_BYTES = 64 * 2**20


@dataclass(frozen=True)
class PteStructure:
    methods: list[str]
    constant_methods: dict[str, Any]  # name -> value (a list when the method returns several)
    program_bytes: int  # the flatbuffer part; the rest of the file is weight and delegate segments
    delegates: dict[str, int]  # backend id (XnnpackBackend, QnnBackend, NeuropilotBackend) -> delegate blobs


def check_pte_header(path: Path) -> bytes:
    """The head of the file, after checking it is an ExecuTorch program by its identifier."""
    if not path.is_file():
        raise HandheldError(f"{path} not found")
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    ident = head[_IDENTIFIER]
    if len(head) < 8 or ident[:2] != b"ET" or not ident[2:].isdigit():
        raise HandheldError(f"{path} is not an ExecuTorch .pte program")
    return head


def read_pte_structure(path: str | Path) -> PteStructure:
    path = Path(path)
    head = check_pte_header(path)
    program_size = _program_size(path, head)
    with open(path, "rb") as f:
        program = json.loads(_to_json(path, f.read(program_size)))
    plans = program.get("execution_plan")
    if not isinstance(plans, list) or not plans:
        raise HandheldError(f"{path} holds no methods")
    constants = {}
    delegates: dict[str, int] = {}
    for plan in plans:
        value = _constant_value(plan)
        if value is not None:
            constants[plan["name"]] = value
        for delegate in (plan.get("delegates") or []) if isinstance(plan, dict) else []:
            backend = str(delegate.get("id")) if isinstance(delegate, dict) else "?"
            delegates[backend] = delegates.get(backend, 0) + 1
    return PteStructure(sorted(str(p.get("name")) for p in plans), constants, program_size, delegates)


def _program_size(path: Path, head: bytes) -> int:
    from executorch.exir._serialize._program import _get_extended_header

    size = path.stat().st_size
    header = _get_extended_header(head)
    if header is None or not header.is_valid():
        return _parseable(path, size)  # no segments: the whole file is the flatbuffer
    if not 0 < header.program_size <= size or header.segment_base_offset > size:
        raise HandheldError(f"{path} is truncated or damaged: its header claims {header.program_size:,} bytes of "
                            f"program and segments from byte {header.segment_base_offset:,}; the file has {size:,}")
    return _parseable(path, header.program_size)


def _parseable(path: Path, program_size: int) -> int:
    if program_size > MAX_PROGRAM_BYTES:
        raise HandheldError(f"{path}'s program (without weight segments) is {program_size:,} bytes, more than the "
                            f"{MAX_PROGRAM_BYTES // 2**20} MiB handheld parses; weights inline in the program? re-export "
                            f"it with segments (ExecuTorch's default)")
    return program_size


def _to_json(path: Path, program: bytes) -> bytes:
    from executorch.exir._serialize._flatbuffer import _program_flatbuffer_to_json

    try:
        return _program_flatbuffer_to_json(program)
    except Exception as e:  # flatc's failure comes back as a CalledProcessError or a parse error
        raise HandheldError(f"{path} is not a valid ExecuTorch program (its flatbuffer does not parse: "
                            f"{e.__class__.__name__})") from None


def _constant_value(plan: dict) -> Any:
    """The value a method returns when it is a constant (no instructions, only scalar outputs); else None."""
    if not isinstance(plan, dict) or plan.get("operators") or plan.get("delegates"):
        return None
    if any(chain.get("instructions") for chain in plan.get("chains") or []):
        return None
    values, outputs = plan.get("values") or [], plan.get("outputs") or []
    found = []
    for index in outputs:
        if not isinstance(index, int) or not 0 <= index < len(values):
            return None
        entry = values[index]
        key = _SCALARS.get(entry.get("val_type"))
        if key is None:
            return None
        found.append(entry.get("val", {}).get(key, False if key == "bool_val" else 0))
    if not found:
        return None
    return found if len(found) != 1 else found[0]
