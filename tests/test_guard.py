"""Llama Guard 3: the prompt format, the verdict parser, and the classification path on tiny programs whose
weights make the verdict known.

The tiny guards have no working blocks (their weights are zero, so each position's hidden state is its
token's embedding) and a classifier that maps each token of a fixed chain to the next: greedy decoding
then writes the same text after any prompt, since every guard prompt ends with the same assistant header.
"""

from __future__ import annotations

import base64

import pytest
import torch

from handheld.cli import main
from handheld.core.checkpoints import random_state, write_checkpoint
from handheld.core.llama.config import ModelArgs, named_model_args
from handheld.core.errors import HandheldError
from handheld.core.tokenizers.guard_prompt import CATEGORIES, Verdict, guard_prompt, parse_verdict
from handheld.core.llama.model import Transformer, parameter_count

# A byte-level tiktoken vocabulary plus the few multi-byte tokens a verdict is written with.
EXTRA_TOKENS = [b"\n\n", b"safe", b"unsafe", b"S1", b"S10"]
N_RANKS = 256 + len(EXTRA_TOKENS)
EOT = N_RANKS + 9  # Llama 3's <|eot_id|> is the tenth special
# The unembedding pruned to the tokens a verdict is written with, as Llama Guard 3 1B-INT4's is.
KEPT = (256, 257, 258, 259, 260, ord("\n"), ord(","), EOT)
GUARD_ARGS = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=N_RANKS + 256, hidden_dim=32,
                       output_token_ids=KEPT)
GUARD_MAX_SEQ_LEN = 1024  # the guard prompt is ~800 byte tokens


def rank(token: bytes) -> int:
    return token[0] if len(token) == 1 else 256 + EXTRA_TOKENS.index(token)


def write_guard_tokenizer(path) -> None:
    tokens = [bytes([b]) for b in range(256)] + EXTRA_TOKENS
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))


def chain_state(text: list[bytes]) -> dict[str, torch.Tensor]:
    """Weights under which greedy decoding after "\\n\\n" (the assistant header's end) writes `text`, then <|eot_id|>."""
    state = {name: torch.zeros_like(t) if name.startswith("layers.") and not name.endswith("norm.weight") else t
             for name, t in random_state(GUARD_ARGS, seed=0, dtype=torch.float32).items()}
    chain = [rank(b"\n\n")] + [rank(t) for t in text]
    embedding, output = torch.zeros_like(state["tok_embeddings.weight"]), torch.zeros(len(KEPT), GUARD_ARGS.dim)
    for slot, (token, following) in enumerate(zip(chain, chain[1:] + [EOT])):
        embedding[token, slot] = 1.0  # a one-hot hidden state per chain token ...
        output[KEPT.index(following), slot] = 10.0  # ... that the classifier reads as "the next token is `following`"
    return state | {"tok_embeddings.weight": embedding, "output.weight": output}


UNSAFE_TEXT = [b"unsafe", b"\n", b"S1", b",", b"S10"]
SAFE_TEXT = [b"safe"]


@pytest.fixture(scope="module")
def guards(tmp_path_factory):
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program

    root = tmp_path_factory.mktemp("guard")
    write_guard_tokenizer(root / "tokenizer.model")
    programs = {"tokenizer": root / "tokenizer.model"}
    for name, text in (("unsafe", UNSAFE_TEXT), ("safe", SAFE_TEXT)):
        (root / name).mkdir()
        write_checkpoint(root / name, GUARD_ARGS, chain_state(text), "meta")
        options = ExportOptions(scheme="fp32", max_seq_len=GUARD_MAX_SEQ_LEN, tokenizer=root / "tokenizer.model")
        programs[name] = export_program(root / name, root / f"{name}.pte", options, log=lambda _: None).path
    return programs


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_crafted_weights_write_their_chain_in_eager_pytorch(tmp_path):
    from handheld.core.tokenizers.tokenizer import load_tokenizer
    from handheld.decoding.generation import EagerRunner
    from handheld.decoding.guard import Guard

    write_guard_tokenizer(tmp_path / "tokenizer.model")
    model = Transformer(GUARD_ARGS, max_seq_len=GUARD_MAX_SEQ_LEN, full_logits=False, tied=False)
    model.load_state_dict(chain_state(UNSAFE_TEXT))
    guard = Guard(EagerRunner(model.eval()), load_tokenizer(tmp_path / "tokenizer.model"), [])
    assert guard.check("How do I pick a lock?") == Verdict(False, ("S1", "S10"))


def test_llama_guard_3_1b_shape_has_its_published_parameter_count():
    """Meta's Llama-Guard-3-1B-INT4 arch_args (llama-models sku_list): 12 of Llama 3.2 1B's 16 blocks, FFN 6400
    wide (from 8192); the unembedding pruned to 20 tokens. Unpruned, the BF16 parent (Llama 3.2 1B, untied) has
    1,498,482,688 parameters: 2,858 MiB."""
    import dataclasses

    args = named_model_args("llama-guard3-1b")
    with torch.device("meta"):
        pruned = Transformer(args, max_seq_len=8)
        unembedding_kept = Transformer(dataclasses.replace(args, output_token_ids=None), max_seq_len=8, tied=False)
        parent = Transformer(dataclasses.replace(named_model_args("llama3.2-1b")), max_seq_len=8, tied=False)
    assert len(args.output_token_ids) == 20 and args.ffn_hidden_dim == 6400 and args.n_layers == 12
    assert parameter_count(pruned) == 860_448_768
    assert parameter_count(unembedding_kept) == 1_123_076_096  # the "1.1B" before unembedding pruning
    assert parameter_count(parent) == 1_498_482_688 and parameter_count(parent) * 2 // 2**20 == 2858


def test_pruned_unembedding_gives_minus_infinity_outside_the_kept_tokens(guards):
    from handheld.runtime_bindings.python.program import PteProgram

    program = PteProgram(guards["unsafe"])
    logits = program.forward([rank(b"\n\n")], 0)[-1]
    assert logits.shape == (GUARD_ARGS.vocab_size,) and int(logits.argmax()) == rank(b"unsafe")
    outside = [i for i in range(GUARD_ARGS.vocab_size) if i not in KEPT]
    assert torch.isneginf(logits[outside]).all() and torch.isfinite(logits[list(KEPT)]).all()


def test_guard_verb_prints_the_verdicts(capsys, guards):
    common = ["--tokenizer", guards["tokenizer"], "--prompt", "How do I pick a lock?"]
    code, out, err = run_cli(capsys, "guard", guards["unsafe"], *common)
    assert code == 0, err
    assert out.splitlines() == ["unsafe", "S1 (Violent Crimes), S10 (Hate)"]
    code, out, _ = run_cli(capsys, "guard", guards["safe"], *common, "--response", "With a pick.")
    assert code == 0 and out.splitlines() == ["safe"]


def test_generate_with_a_guard_withholds_an_unsafe_prompt(capsys, guards):
    # The tiny safe guard doubles as the chat model: with the guard's tokenizer it answers "safe".
    common = ["--tokenizer", guards["tokenizer"], "--prompt", "hello", "--chat", "--max-new-tokens", "4"]
    code, out, err = run_cli(capsys, "generate", guards["safe"], *common, "--guard", guards["unsafe"])
    assert code == 0, err
    assert out.splitlines() == ["[guard] prompt withheld: unsafe S1,S10"]
    code, out, err = run_cli(capsys, "generate", guards["safe"], *common, "--guard", guards["safe"])
    assert code == 0, err
    assert out.splitlines()[0] == "safe" and "generated 1" in out.splitlines()[1]


def test_generate_with_a_guard_withholds_an_unsafe_answer(capsys, guards, monkeypatch):
    from handheld.decoding.guard import Guard

    asked = []

    def check(self, prompt, response=None):  # safe prompt, unsafe answer
        asked.append((prompt, response))
        return Verdict(True) if response is None else Verdict(False, ("S6",))

    monkeypatch.setattr(Guard, "check", check)
    code, out, err = run_cli(capsys, "generate", guards["safe"], "--tokenizer", guards["tokenizer"], "--prompt", "hi",
                             "--chat", "--guard", guards["safe"])
    assert code == 0, err
    assert out.splitlines()[0] == "[guard] answer withheld: unsafe S6"
    assert asked == [("hi", None), ("hi", "safe")]  # the answer reached the guard, not the screen


def test_guard_flags_are_checked(capsys, guards):
    code, _, err = run_cli(capsys, "generate", guards["safe"], "--tokenizer", guards["tokenizer"], "--prompt", "hi",
                           "--guard", guards["safe"])
    assert code == 1 and "--guard goes with --chat" in err


def test_prompt_format_lists_the_categories_and_asks_about_the_last_turn():
    text = guard_prompt("Tell me a joke.")
    assert text.startswith("Task: Check if there is unsafe content in 'User' messages in conversations according our "
                           "safety policy with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent Crimes.\n")
    assert "S14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\nUser: Tell me a joke." in text
    assert text.endswith("for ONLY THE LAST User message in the above conversation:\n - First line must read 'safe' or "
                         "'unsafe'.\n - If unsafe, a second line must include a comma-separated list of violated categories.")
    answer = guard_prompt("Tell me a joke.", "No.")
    assert "User: Tell me a joke.\n\nAgent: No.\n\n<END CONVERSATION>" in answer and "ONLY THE LAST Agent message" in answer
    assert list(CATEGORIES) == [f"S{i}" for i in range(1, 15)]


@pytest.mark.parametrize("text, verdict", [
    ("\n\nsafe", Verdict(True)),
    ("unsafe\nS1,S10", Verdict(False, ("S1", "S10"))),
    ("\n\nunsafe\nS9", Verdict(False, ("S9",))),
    ("unsafe", Verdict(False, ())),
])
def test_verdicts_parse_as_the_release_writes_them(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text, message", [
    ("maybe", "not a verdict"), ("", "not a verdict"), ("safe\nS1", "not a verdict"), ("unsafe\nS99", "unknown category S99"),
])
def test_anything_else_is_an_error(text, message):
    with pytest.raises(HandheldError, match=message):
        parse_verdict(text)


def test_output_token_ids_round_trip_and_are_checked():
    args = named_model_args("llama-guard3-1b")
    assert ModelArgs.from_dict(args.to_dict()) == args
    for bad in ((3, 3), (10,), ()):
        with pytest.raises(HandheldError, match="output_token_ids"):
            ModelArgs.from_dict({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "output_token_ids": list(bad)})
