"""ExecuTorch's own LLM runner (the C++ `TextLLMRunner` behind Android's `LlmModule`) runs handheld's programs:
for every scheme handheld exports, its greedy tokens equal `handheld generate`'s on a plain prompt and on a chat.
fp32, bf16 and Meta's SpinQuant and QLoRA layouts (made by handheld's own jobs) run on a tiny model, 8da4w on the
proxy model (each export costs ~25 s per layer here, so each scheme is exported once). Token ids are compared:
the runner's are recovered from its decoded pieces (each maps to exactly one id); its prompt ids come from
ExecuTorch's C++ tokenizer and the prompt length the runner reports.

A random tiny model emits arbitrary ids, and the runner's binding hands each piece to Python as text: it cannot
pass one byte of a multi-byte character. So the tiny model's tokenizer here has only ASCII pieces (a real
tiktoken file with merges); the byte tokenizer handheld writes for tiny models has 128 ranks that are such bytes
(the last test shows the error). The proxy model (trained, with its own tokenizer.model) covers a real
vocabulary; SmolLM2 (tokenizer.json) is covered by benchmarks/peers/executorch_runner_parity.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch

import handheld
from conftest import BYTE_ARGS, PARITY_MAX_SEQ_LEN, sample_text
from handheld.core.checkpoints import TOKENIZER, random_state, write_checkpoint
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.tokenizer import load_tokenizer, prompt_ids, write_byte_tokenizer
from handheld.export.options import ExportOptions
from handheld.export.program import export_program
from handheld.measure.runner_parity import check_parity
from handheld.runtime_bindings.llm_runner import (executorch_tokenizer, run_text_llm_runner,
                                                  runner_piece_ids, runner_prompt)

PROXY = Path(handheld.__file__).parent / "proxy"
PROXY_MAX_SEQ_LEN = 96
# (prompt, chat): each fits the tiny programs' 48 positions with the tokens generated after it.
TINY_PROMPTS = [("the model reads every token", False), ("hi", True)]
PROXY_PROMPTS = [("The default value of the argument is", False), ("How do I open a file?", True)]
NEW_TOKENS = 14
TINY_SCHEMES = ["fp32", "bf16", "spinquant", "qlora"]  # 8da4w: on the proxy
BLOCK_WEIGHT_SCALE = 8.0
MIN_DISTINCT_TOKENS = 4  # a parity of one repeated token proves little


def write_ascii_tokenizer(path: Path) -> None:
    """256 ranks in tiktoken's format whose pieces are all ASCII: the printable bytes, tab and newline, then
    pairs of common letters (which BPE merges, so prompts exercise both tokenizers' merge order)."""
    singles = [bytes([b]) for b in (9, 10, *range(32, 127))]
    letters = b"etaoinshrdlu "
    pairs = [bytes([a, b]) for a in letters for b in letters][: 256 - len(singles)]
    ranks = singles + pairs
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))


@pytest.fixture(scope="module")
def ascii_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ascii_meta")
    state = random_state(BYTE_ARGS, seed=13, dtype=torch.float32)
    for name in state:  # at the init's scale a random model repeats one token, which would make parity trivial
        if name.startswith("layers.") and not name.endswith("norm.weight"):
            state[name] = BLOCK_WEIGHT_SCALE * state[name]
    write_checkpoint(directory, BYTE_ARGS, state, "meta")
    write_ascii_tokenizer(directory / TOKENIZER)
    return directory


@pytest.fixture(scope="module")
def ascii_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(sample_text(400, seed=5))
    return path


def spinquant_checkpoint(checkpoint: Path, text: Path, out: Path) -> Path:
    """Meta's SpinQuant layout (learned R1/R2, R4, RTN), from a few steps of handheld's job."""
    from handheld.training.distributed import Group
    from handheld.training.spinquant import SpinQuantOptions, run_spinquant

    run_spinquant(SpinQuantOptions(checkpoint=checkpoint, calib=text, output=out, steps=2, seq_len=32, samples=4,
                                   batch_size=4), Group(), progress=False)
    return out


def qlora_checkpoint(checkpoint: Path, text: Path, out: Path) -> Path:
    """Meta's QLoRA layout (8da4w QAT, then LoRA adapters), from a few steps of handheld's job."""
    from handheld.training.distributed import Group
    from handheld.training.loop import TrainConfig
    from handheld.training.qat import QatOptions, run_qat

    train = TrainConfig(steps=2, lr=1e-3, batch_size=2, grad_accum=1, warmup=1, eval_every=2, save_every=2)
    run_qat(QatOptions(checkpoint=checkpoint, data=text, output=out, train=train, seq_len=32, lora_rank=4,
                       lora_alpha=8.0, lora_lr=1e-2), Group(), progress=False)
    return out


def tiny_program(scheme: str, checkpoint: Path, text: Path, folder: Path) -> tuple[Path, Path]:
    """The tiny model's `.pte` under `scheme` and its tokenizer; pre-quantized layouts export under their own scheme."""
    if scheme == "spinquant":
        checkpoint, scheme = spinquant_checkpoint(checkpoint, text, folder / "spinquant"), None
    elif scheme == "qlora":
        checkpoint, scheme = qlora_checkpoint(checkpoint, text, folder / "qlora"), None
    pte = folder / "tiny.pte"
    export_program(checkpoint, pte, ExportOptions(scheme=scheme, max_seq_len=PARITY_MAX_SEQ_LEN), log=lambda _: None)
    return pte, checkpoint / TOKENIZER


@pytest.fixture(scope="module")
def tiny_pte(ascii_checkpoint, ascii_text, tmp_path_factory):
    """scheme -> (program, tokenizer), each built once (~25 s per export on 2 cores)."""
    built = {}

    def build(scheme: str) -> tuple[Path, Path]:
        if scheme not in built:
            built[scheme] = tiny_program(scheme, ascii_checkpoint, ascii_text, tmp_path_factory.mktemp(scheme))
        return built[scheme]

    return build


def assert_parity(pte: Path, tokenizer: Path, prompts: list[tuple[str, bool]]) -> None:
    for prompt, chat in prompts:
        parity = check_parity(pte, tokenizer, prompt, chat=chat, max_new_tokens=NEW_TOKENS)
        where = f"{pte.name}, {'chat' if chat else 'text'} {prompt!r}"
        assert parity.same_prompt, f"{where}: runner prompt {parity.runner_prompt_ids} ({parity.runner_prompt_tokens}) " \
                                   f"vs {parity.prompt_ids}"
        assert len(set(parity.handheld_ids)) >= MIN_DISTINCT_TOKENS, f"{where}: {parity.handheld_ids}"
        assert None not in parity.runner_ids, f"{where}: {parity.runner_ids}"
        assert parity.runner_ids == parity.handheld_ids, f"{where}: runner {parity.runner_ids} vs {parity.handheld_ids}"


@pytest.mark.slow
@pytest.mark.parametrize("scheme", TINY_SCHEMES)
def test_runner_matches_handheld_on_the_tiny_model(scheme, tiny_pte):
    assert_parity(*tiny_pte(scheme), TINY_PROMPTS)


@pytest.mark.slow
def test_runner_matches_handheld_on_the_proxy_model(tmp_path):
    pte = tmp_path / "proxy_8da4w.pte"
    export_program(PROXY, pte, ExportOptions(scheme="8da4w", max_seq_len=PROXY_MAX_SEQ_LEN), log=lambda _: None)
    assert_parity(pte, PROXY / TOKENIZER, PROXY_PROMPTS)


def test_bos_goes_to_the_runner_as_a_count_and_control_tokens_as_text(ascii_checkpoint):
    tokenizer = load_tokenizer(ascii_checkpoint / TOKENIZER)
    assert runner_prompt(tokenizer, prompt_ids(tokenizer, "the model")) == ("the model", 1)
    text, num_bos = runner_prompt(tokenizer, prompt_ids(tokenizer, "hi", chat=True))
    assert num_bos == 1 and text == "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" \
                                     "<|start_header_id|>assistant<|end_header_id|>\n\n"
    # Every id of the vocabulary (ranks and specials) is one piece of its own, so the runner's pieces give back ids.
    table = runner_piece_ids(executorch_tokenizer(ascii_checkpoint / TOKENIZER), 512)
    assert sorted(i for ids in table.values() for i in ids) == list(range(512)) and len(table) == 512


@pytest.mark.slow
def test_a_piece_that_is_not_utf8_by_itself_is_one_clear_error(tiny_pte, tmp_path):
    """The byte tokenizer's ranks 128-255 are lone bytes: the runner's binding cannot hand them to Python."""
    pte, _ = tiny_pte("fp32")
    byte_tokenizer = tmp_path / TOKENIZER
    write_byte_tokenizer(byte_tokenizer)
    with pytest.raises(HandheldError, match="not valid UTF-8 by itself"):
        run_text_llm_runner(pte, byte_tokenizer, "\xe9t\xe9", num_bos=1, max_new_tokens=PARITY_MAX_SEQ_LEN - 8)
