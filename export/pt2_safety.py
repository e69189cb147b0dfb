"""Reading a `.pt2` (torch.export archive) from a stranger without running anything it carries.

torch.export.load can execute code from the file in several ways (torch 2.13): sample inputs retried with an
unrestricted unpickler when the safe one fails, weights or constants marked `use_pickle`, opaque or TorchScript
objects (plain pickle), AOTInductor members (a native library), sympy expressions (`eval`), operator names
resolved under `torch.`/`math.` (`torch.os.system` resolves), and guard code that is `exec`'d. `check_pt2` reads
the archive as data first (zipfile, json, pickletools) and admits only what `handheld quantize` writes: named
members, raw tensor bytes, a sample-input pickle that rebuilds tensors and nothing else, and a graph whose every
call is a torch operator. `weights_only_loads` then makes every torch.load inside torch.export.load refuse
anything but tensors even where torch's own code asks for less.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

from handheld.core.errors import HandheldError

# Members after the archive's root folder, as torch.export.save writes them for a program of plain tensors.
_MEMBERS = re.compile(r"(archive_format|archive_version|version|byteorder|\.data/(version|serialization_id)"
                      r"|models/model\.json|data/weights/model_weights_config\.json"
                      r"|data/constants/model_constants_config\.json|data/weights/weight_\d+|data/constants/tensor_\d+"
                      r"|data/sample_inputs/model\.pt|extra/[A-Za-z0-9_.-]+\.json)")
_TENSOR_FILE = re.compile(r"(weight|tensor)_\d+")
# What torch.save writes for a tuple of int64 tensors: rebuild a tensor from its storage, nothing else.
_GLOBALS = frozenset({"torch._utils _rebuild_tensor_v2", "torch LongStorage", "collections OrderedDict"})
_OPCODES = frozenset({"PROTO", "STOP", "MARK", "GLOBAL", "BINPERSID", "REDUCE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
                      "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_LIST", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
                      "BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2", "BINFLOAT", "NONE", "NEWTRUE",
                      "NEWFALSE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "FRAME", "MEMOIZE"})
_MAX_JSON_BYTES = 256 * 2**20


def check_pt2(path: Path) -> None:
    """Refuse, in one line naming the problem, any .pt2 that holds more than a plain exported program."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(archive)
            for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                if config in members:
                    _check_tensor_config(_json(archive, members[config]), config)
            if "data/sample_inputs/model.pt" in members:
                _check_sample_inputs(archive.read(members["data/sample_inputs/model.pt"]))
            _check_graph(_json(archive, members["models/model.json"]))
    except zipfile.BadZipFile as e:
        raise HandheldError(f"{path} is not a .pt2 archive ({e})") from None
    except HandheldError as e:
        raise HandheldError(f"{path} is refused: {e}") from None


def _checked_members(archive: zipfile.ZipFile) -> dict[str, str]:
    """{name after the root folder: full member name}; one root, known names only, each once."""
    names = archive.namelist()
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or len(set(names)) != len(names):
        raise HandheldError("its archive has several root folders or repeated members")
    inner = {name.split("/", 1)[1]: name for name in names if "/" in name}
    unknown = sorted(name for name in inner if not _MEMBERS.fullmatch(name))
    if unknown:
        raise HandheldError(f"it carries members a plain exported program does not ({', '.join(unknown[:3])})")
    if "models/model.json" not in inner:
        raise HandheldError("it has no models/model.json")
    return inner


def _json(archive: zipfile.ZipFile, member: str) -> Any:
    if archive.getinfo(member).file_size > _MAX_JSON_BYTES:
        raise HandheldError(f"{member} is larger than {_MAX_JSON_BYTES // 2**20} MiB")
    try:
        return json.loads(archive.read(member))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandheldError(f"{member} is not JSON ({e.__class__.__name__})") from None


def _check_tensor_config(config: Any, name: str) -> None:
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise HandheldError(f"{name} is not a tensor table")
    for key, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False \
                or not _TENSOR_FILE.fullmatch(str(entry.get("path_name", ""))):
            raise HandheldError(f"{name} stores {key!r} as a pickle or under an unexpected name")


def _check_sample_inputs(data: bytes) -> None:
    if not data:
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            pickles = [n for n in inner.namelist() if n.endswith(".pkl")]
            if len(pickles) != 1 or not pickles[0].endswith("/data.pkl"):
                raise HandheldError("its sample inputs hold other pickles than one data.pkl")
            _check_pickle(inner.read(pickles[0]))
    except zipfile.BadZipFile:
        raise HandheldError("its sample inputs are not a torch.save archive") from None


def _check_pickle(data: bytes) -> None:
    """Every opcode plain data or a tensor rebuild; every imported name on the allow-list."""
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name not in _OPCODES:
                raise HandheldError(f"its sample inputs' pickle uses {opcode.name}, which can run code")
            if opcode.name == "GLOBAL" and argument not in _GLOBALS:
                raise HandheldError(f"its sample inputs' pickle imports {argument!r}")
    except ValueError as e:
        raise HandheldError(f"its sample inputs' pickle is damaged ({e})") from None


def _check_graph(model: Any) -> None:
    """The graph calls torch operators only, with no guard code and no symbolic expressions (sympy evals them)."""
    program = model.get("exported_program", model) if isinstance(model, dict) else None
    if not isinstance(program, dict):
        raise HandheldError("its model.json is not an exported program")
    if program.get("guards_code") or program.get("range_constraints"):
        raise HandheldError("its program carries guard code or symbolic ranges (a handheld NPU program has neither)")
    for key, value in _walk(program):
        if key == "as_expr" and value:
            raise HandheldError("its program carries a symbolic expression")
        if key == "target" and isinstance(value, str) and not (value.startswith("torch.ops.") or value == "_operator.getitem"):
            raise HandheldError(f"its graph calls {value!r}, not a torch operator")


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield key, child
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every torch.load in the block loads tensors only (torch reads this variable on each call, overriding an
    explicit weights_only=False); the previous setting is restored."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
