"""Greedy speculative decoding is lossless: its tokens are the target's own, token for token.

The draft is the target with perturbed weights (it agrees on some tokens, not all, so both the accept
and the reject path run) or the target itself (every draft is accepted). Eager models and `.pte`
programs both; the caches roll back by position only, which these equalities check.
"""

from __future__ import annotations

import pytest
import torch

from conftest import ODD_ARGS, PARITY_MAX_SEQ_LEN, odd_state
from handheld.core.checkpoints import write_checkpoint
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer
from handheld.decoding.generation import EagerRunner, generate, synthetic_prompt
from handheld.decoding.speculative import speculative_generate

PROMPT = synthetic_prompt(7)


def _blocks(state: dict[str, torch.Tensor]) -> list[str]:
    return [name for name in state if name.startswith("layers.") and not name.endswith("norm.weight")]


def target_state() -> dict[str, torch.Tensor]:
    """The odd model with its blocks' weights scaled up, so its greedy text varies instead of repeating a token."""
    state = odd_state()
    return state | {name: 10 * state[name] for name in _blocks(state)}


def draft_state(noise: float = 0.05) -> dict[str, torch.Tensor]:
    """The target's weights, every block's moved by `noise` of its own spread: it agrees with the target often."""
    state = target_state()
    gen = torch.Generator().manual_seed(99)
    return state | {name: state[name] + noise * state[name].std() * torch.randn(state[name].shape, generator=gen)
                    for name in _blocks(state)}


def eager(state: dict[str, torch.Tensor], full_logits: bool = True, max_seq_len: int = PARITY_MAX_SEQ_LEN) -> EagerRunner:
    model = Transformer(ODD_ARGS, max_seq_len=max_seq_len, full_logits=full_logits)
    model.load_state_dict(state, strict=False)  # tied: output.weight is the embedding
    return EagerRunner(model.eval())


def plain(state, prompt, max_new, stops=()):
    tokens, _ = generate(eager(state, full_logits=False), prompt, max_new, list(stops))
    return tokens


@pytest.mark.parametrize("k", [1, 3, 5])
def test_eager_output_equals_the_target_alone(k):
    expected = plain(target_state(), PROMPT, 30)
    assert len(set(expected)) > 10  # a varied text, not one token repeated
    tokens, stats = speculative_generate(eager(target_state()), eager(draft_state()), PROMPT, 30, [], draft_tokens=k)
    assert tokens == expected
    assert 0.0 < stats.acceptance_rate < 1.0, stats  # both paths ran: some drafts accepted, some rejected
    assert stats.generated_tokens == 30 and stats.target_calls < 30


def test_same_weights_accept_every_draft():
    expected = plain(target_state(), PROMPT, 25)
    tokens, stats = speculative_generate(eager(target_state()), eager(target_state()), PROMPT, 25, [], draft_tokens=4)
    assert tokens == expected
    assert stats.acceptance_rate == 1.0 and stats.drafted > 0
    assert stats.tokens_per_target_call > 3  # 5 tokens per verify call, but for the prefill and the last call


def test_stops_where_the_target_stops():
    expected = plain(target_state(), PROMPT, 30)
    stop = expected[11]
    tokens, _ = speculative_generate(eager(target_state()), eager(draft_state()), PROMPT, 30, [stop], draft_tokens=3)
    assert tokens == plain(target_state(), PROMPT, 30, [stop]) == expected[: expected.index(stop)]


@pytest.mark.parametrize("k", [2, 6])
def test_the_end_of_the_cache_is_where_the_target_alone_ends(k):
    prompt = synthetic_prompt(PARITY_MAX_SEQ_LEN - 9)
    expected = plain(target_state(), prompt, 100)
    tokens, _ = speculative_generate(eager(target_state()), eager(draft_state()), prompt, 100, [], draft_tokens=k)
    assert tokens == expected and len(tokens) == 10  # positions up to max_seq_len, as generate() does


def test_a_target_with_last_position_logits_only_is_refused():
    with pytest.raises(HandheldError, match="--full-logits"):
        speculative_generate(eager(target_state(), full_logits=False), eager(target_state()), PROMPT, 5, [])


def test_zero_draft_tokens_is_refused():
    with pytest.raises(HandheldError, match="--draft-tokens"):
        speculative_generate(eager(target_state()), eager(target_state()), PROMPT, 5, [], draft_tokens=0)


@pytest.fixture(scope="module")
def spec_programs(tmp_path_factory):
    """The odd model as a full-logits fp32 target, and its perturbed twin as a last-logits draft."""
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    root = tmp_path_factory.mktemp("speculative")
    programs = {}
    for name, state, full in (("target", target_state(), True), ("draft", draft_state(), False)):
        (root / name).mkdir()
        write_checkpoint(root / name, ODD_ARGS, state, "meta")
        options = ExportOptions(scheme="fp32", max_seq_len=PARITY_MAX_SEQ_LEN, full_logits=full)
        programs[name] = export_program(root / name, root / f"{name}.pte", options, log=lambda _: None).path
    return programs


def test_pte_output_equals_the_target_alone(spec_programs):
    from handheld.runtime_bindings.python.program import PteProgram

    expected, _ = generate(PteProgram(spec_programs["target"]), PROMPT, 30, [])
    assert expected == plain(target_state(), PROMPT, 30)  # the program is the eager model
    tokens, stats = speculative_generate(PteProgram(spec_programs["target"]), PteProgram(spec_programs["draft"]),
                                         PROMPT, 30, [], draft_tokens=3)
    assert tokens == expected and 0.0 < stats.acceptance_rate < 1.0
    # The program as its own draft (a second load: its own cache): every draft accepted.
    tokens, stats = speculative_generate(PteProgram(spec_programs["target"]), PteProgram(spec_programs["target"]),
                                         PROMPT, 30, [], draft_tokens=4)
    assert tokens == expected and stats.acceptance_rate == 1.0


def write_letters_tokenizer(path):
    """44 single-character ranks ("0".."["): with Llama 3's 256 specials, exactly the odd model's 300 ids."""
    import base64

    path.write_text("".join(f"{base64.b64encode(bytes([48 + i])).decode()} {i}\n" for i in range(44)))
    return path


def test_generate_with_a_draft_prints_the_target_text_and_the_acceptance(spec_programs, tmp_path, capsys):
    from handheld.cli import main

    common = ["--tokenizer", str(write_letters_tokenizer(tmp_path / "tokenizer.model")), "--prompt", "01201",
              "--max-new-tokens", "20"]
    assert main(["generate", str(spec_programs["target"]), *common]) == 0
    alone = capsys.readouterr().out.splitlines()
    assert main(["generate", str(spec_programs["target"]), *common, "--draft", str(spec_programs["draft"]),
                 "--draft-tokens", "3"]) == 0
    drafted = capsys.readouterr().out.splitlines()
    assert drafted[:-1] == alone[:-1]  # the same text
    assert "acceptance" in drafted[-1] and "tokens per target call" in drafted[-1] and "generated 20" in drafted[-1]
    # The draft as target: it returns its last position's logits only.
    assert main(["generate", str(spec_programs["draft"]), *common, "--draft", str(spec_programs["target"])]) == 1
    assert "export it with --full-logits" in capsys.readouterr().err


def test_a_draft_with_another_vocabulary_is_refused():
    from handheld.core.pte_metadata import ProgramMetadata
    from handheld.decoding.speculative import check_compatible

    target = ProgramMetadata(max_seq_len=64, vocab_size=300, n_layers=2, bos_id=44, eos_ids=(45, 53), full_logits=True)
    check_compatible(target, ProgramMetadata(max_seq_len=32, vocab_size=300, n_layers=1, bos_id=44, eos_ids=(53, 45)))
    for other in ({"vocab_size": 512}, {"bos_id": 1}, {"eos_ids": (45,)}):
        draft = ProgramMetadata(**{"max_seq_len": 64, "vocab_size": 300, "n_layers": 1, "bos_id": 44, "eos_ids": (45, 53)} | other)
        with pytest.raises(HandheldError, match="does not share the target's tokenizer"):
            check_compatible(target, draft)
