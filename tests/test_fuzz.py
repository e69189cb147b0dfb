"""Inputs come from strangers: seeded mutations of every file handheld reads, fed to the commands that read them.

Mutations: truncation, byte flips (in headers, where parsers live), garbage, and for JSON files missing keys,
wrong types, huge, negative and zero numbers, a non-object root. Files: params.json, config.json, Meta and
Hugging Face weights (safetensors headers), GGUF, tokenizer.model, tokenizer.json, .pte, bench baselines.
Commands: inspect, export (-o must stay absent), generate, report --baseline.

Pass: exit 0 (a harmless mutation) or exit 1 with one line `handheld: error: ...`; never a traceback, never a
file at -o, never a hang (each case has a deadline). The count of cases tried is printed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import signal
import zlib
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from conftest import ODD_ARGS, odd_state
from handheld.cli import main
from handheld.core.checkpoints import random_state, write_checkpoint
from handheld.core.tokenizers.tokenizer import write_byte_tokenizer

SEED = 20261129
DEADLINE_S = 30
Mutation = Callable[[bytes, random.Random], bytes]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(1, len(data)))]


def flip_header(data: bytes, rng: random.Random) -> bytes:
    """Flip a few bytes among the first KiB: where lengths, counts, offsets and magic numbers live."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(0, min(len(out), 1024))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def garbage(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 7, 512)))


def json_mutations(data: bytes, rng: random.Random) -> bytes:
    value = json.loads(data)
    paths = list(_leaf_paths(value))
    if not paths or rng.random() < 0.1:
        return json.dumps(rng.choice([[1, 2], "text", 3, None])).encode()
    path = rng.choice(paths)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.25 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(["x", [], {}, None, True, -1, 0, 10**30, -(10**30), 1e308, 0.5, "1e5"])
    return json.dumps(value).encode()


def _leaf_paths(value, prefix=()) -> Iterator[tuple]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in list(items)[:400]:
        if isinstance(child, (dict, list)) and child:
            yield from _leaf_paths(child, prefix + (key,))
        yield prefix + (key,)


BYTE_MUTATIONS = (truncate, flip_header, garbage)


def cases(data: bytes, count: int, mutations, rng: random.Random) -> Iterator[bytes]:
    for _ in range(count):
        yield rng.choice(mutations)(data, rng)


class _Deadline(Exception):
    pass


def _alarm(signum, frame):
    raise _Deadline()


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main() in this process under a deadline; any exception escaping it is a finding."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(DEADLINE_S)
    try:
        code = main(argv)
    except _Deadline:
        raise AssertionError(f"hang: {argv} ran past {DEADLINE_S} s") from None
    except SystemExit as e:  # argparse
        code = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, capsys.readouterr().err


def check_clean(code: int, err: str, what: str) -> None:
    assert code in (0, 1), f"{what}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    if code == 1:
        lines = err.strip().splitlines()
        # One line naming the problem; only the regression gate adds its failures below, indented.
        assert lines[0].startswith("handheld: error: "), f"{what}: no error line\n{err}"
        assert all(line.startswith("  ") for line in lines[1:]), f"{what}: more than one error line\n{err}"
        assert len(lines) == 1 or "regression gate failed" in lines[0], f"{what}: more than one error line\n{err}"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    from test_gguf import write_vocab_gguf
    from handheld.core.tokenizers.hf_tokenizer import write_tokenizer_files
    from handheld.core.tokenizers.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("valid")
    for name, fmt in (("meta", "meta"), ("hf", "hf"), ("bytes", "meta"), ("bpe", "meta")):
        (root / name).mkdir()
    write_checkpoint(root / "meta", ODD_ARGS, odd_state(), "meta")
    write_checkpoint(root / "hf", ODD_ARGS, odd_state(), "hf")
    # Models whose vocabularies fit a byte-level tokenizer.model (512 ids) and a 300-token tokenizer.json.
    byte_args = dataclasses.replace(ODD_ARGS, vocab_size=512)
    write_checkpoint(root / "bytes", byte_args, random_state(byte_args, seed=0, dtype=torch.float32), "meta")
    write_byte_tokenizer(root / "bytes" / "tokenizer.model")
    write_checkpoint(root / "bpe", ODD_ARGS, odd_state(), "meta")
    write_vocab_gguf(root / "vocab.gguf")
    write_tokenizer_files(load_tokenizer(root / "vocab.gguf"), root / "bpe")
    return {"meta": root / "meta", "hf": root / "hf", "bytes": root / "bytes", "bpe": root / "bpe"}


TOTAL = {"cases": 0}


def _fuzz_checkpoint(valid_dir: Path, member: str, mutations, count: int, tmp_path: Path, capsys, seed: int) -> int:
    rng = random.Random(seed)
    data = (valid_dir / member).read_bytes()
    for i, mutated in enumerate(cases(data, count, mutations, rng)):
        case = tmp_path / f"case{i}"
        shutil.copytree(valid_dir, case)
        (case / member).write_bytes(mutated)
        code, err = run_cli(["inspect", str(case)], capsys)
        check_clean(code, err, f"inspect {member} case {i}")
        if code == 1:  # invalid input: export must fail the same way and leave nothing behind
            out = tmp_path / f"out{i}.pte"
            code, err = run_cli(["export", "--checkpoint", str(case), "-o", str(out)], capsys)
            check_clean(code, err, f"export {member} case {i}")
            assert code == 1 and not out.exists() and not list(tmp_path.glob(f".out{i}.pte*")), f"export {member} case {i}"
        shutil.rmtree(case)
    return count


@pytest.mark.parametrize("kind, member, count", [
    ("meta", "params.json", 40), ("meta", "consolidated.00.pth", 25), ("hf", "config.json", 40),
    ("hf", "model.safetensors", 30),
])
def test_fuzz_checkpoints(valid, kind, member, count, tmp_path, capsys):
    mutations = (json_mutations, truncate) if member.endswith(".json") else BYTE_MUTATIONS
    TOTAL["cases"] += _fuzz_checkpoint(valid[kind], member, mutations, count, tmp_path, capsys, SEED + zlib.crc32(member.encode()))


def test_fuzz_gguf(tmp_path, capsys):
    from test_gguf import ARGS, write_vocab_gguf
    from handheld.core.checkpoints.gguf import write_gguf

    write_vocab_gguf(tmp_path / "vocab.gguf")
    write_gguf(tmp_path / "model.gguf", ARGS, odd_state(), "Q8_0", tokenizer_from=tmp_path / "vocab.gguf")
    rng, data = random.Random(SEED + 1), (tmp_path / "model.gguf").read_bytes()
    for i, mutated in enumerate(cases(data, 50, BYTE_MUTATIONS, rng)):
        case = tmp_path / f"case{i}.gguf"
        case.write_bytes(mutated)
        code, err = run_cli(["inspect", str(case)], capsys)
        check_clean(code, err, f"inspect gguf case {i}")
        code, err = run_cli(["generate", str(case), "--prompt", "the", "--max-new-tokens", "1"], capsys)
        check_clean(code, err, f"generate gguf case {i}")
        case.unlink()
    TOTAL["cases"] += 100


@pytest.mark.parametrize("kind, name", [("bytes", "tokenizer.model"), ("bpe", "tokenizer.json"),
                                        ("bpe", "tokenizer_config.json")])
def test_fuzz_tokenizers(valid, kind, name, tmp_path, capsys):
    """Each mutated file sits in its checkpoint, which generate reads as the model's own tokenizer."""
    mutations = BYTE_MUTATIONS if name == "tokenizer.model" else (json_mutations, truncate, flip_header)
    rng, data = random.Random(SEED + zlib.crc32(name.encode())), (valid[kind] / name).read_bytes()
    for i, mutated in enumerate(cases(data, 25, mutations, rng)):
        case = tmp_path / f"case{i}"
        shutil.copytree(valid[kind], case)
        (case / name).write_bytes(mutated)
        code, err = run_cli(["generate", str(case), "--prompt", "the", "--max-new-tokens", "2"], capsys)
        check_clean(code, err, f"generate with {name} case {i}")
        code, err = run_cli(["generate", str(case), "--chat", "--prompt", "the", "--max-new-tokens", "2"], capsys)
        check_clean(code, err, f"generate --chat with {name} case {i}")
        shutil.rmtree(case)
    TOTAL["cases"] += 50


def test_fuzz_pte(odd_fp32_pte, tmp_path, capsys):
    rng, data = random.Random(SEED + 3), odd_fp32_pte.read_bytes()
    for i, mutated in enumerate(cases(data, 40, BYTE_MUTATIONS, rng)):
        case = tmp_path / f"case{i}.pte"
        case.write_bytes(mutated)
        code, err = run_cli(["inspect", str(case)], capsys)
        check_clean(code, err, f"inspect pte case {i}")
    TOTAL["cases"] += 40


def test_fuzz_pt2(own_pt2, byte_checkpoint, calib_text, tmp_path, capsys):
    """NPU artefacts: damaged archives are refused in one line (poisoned ones: tests/test_pt2_safety.py)."""
    rng, data = random.Random(SEED + 5), own_pt2.read_bytes()
    tokenizer = str(byte_checkpoint / "tokenizer.model")
    for i, mutated in enumerate(cases(data, 10, BYTE_MUTATIONS, rng)):
        case = tmp_path / f"case{i}.pt2"
        case.write_bytes(mutated)
        code, err = run_cli(["eval", str(case), "--text", str(calib_text), "--tokenizer", tokenizer, "--max-tokens", "40",
                             "--context", "16", "--stride", "8"], capsys)
        check_clean(code, err, f"eval pt2 case {i}")
    TOTAL["cases"] += 10


def test_fuzz_bench_baselines(tmp_path, capsys):
    from test_bench import FIXED

    current = tmp_path / "now.json"
    current.write_text(json.dumps(FIXED))
    rng, data = random.Random(SEED + 4), json.dumps(FIXED).encode()
    for i, mutated in enumerate(cases(data, 40, (json_mutations, truncate), rng)):
        baseline = tmp_path / "old.json"
        baseline.write_bytes(mutated)
        code, err = run_cli(["report", str(current), "-o", str(tmp_path / f"r{i}"), "--baseline", str(baseline),
                             "--max-regression", "5"], capsys)
        check_clean(code, err, f"report --baseline case {i}")
    TOTAL["cases"] += 40


def test_zz_report_case_count(capsys):
    """Runs last in this file: says how many cases the harness tried."""
    with capsys.disabled():
        print(f"\nfuzz harness: {TOTAL['cases']} cases tried (seed {SEED}), no traceback, no output left at -o")
    assert TOTAL["cases"] >= 200 or TOTAL["cases"] == 0  # 0: the file was run in part (-k)
