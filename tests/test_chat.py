"""`handheld chat` and the ChatSession under it (handheld/decoding/chat.py): multi-turn in the model's template,
the KV cache kept across turns, the oldest turns dropped to fit the context, /reset, Ctrl-C, piped input."""

from __future__ import annotations

import io

import pytest

from handheld.cli import main
from handheld.core.tokenizers.tokenizer import load_tokenizer
from handheld.decoding.chat import ChatSession
from handheld.runtime_bindings.python.program import PteProgram


def chat_cli(capsys, monkeypatch, pte, tokenizer, lines: str, *flags):
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))  # a pipe: not a terminal, no prompt shown
    code = main(["chat", str(pte), "--tokenizer", str(tokenizer), *flags])
    out, err = capsys.readouterr()
    return code, out, err


def session(pte, tokenizer, max_new_tokens=4):
    program = PteProgram(pte)
    return ChatSession(program, load_tokenizer(str(tokenizer)), program.eos_ids, max_new_tokens)


def test_a_piped_chat_answers_each_line_like_generate_chat(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer):
    code, out, err = chat_cli(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer, "abc\n\n/reset\nabc\n/quit\nignored\n",
                              "--max-new-tokens", "4")
    assert code == 0, err
    first, again = out.split("[conversation reset]\n")  # answers may hold newlines of their own
    assert again == first  # after /reset the same first turn, the same answer
    assert main(["generate", str(odd_fp32_pte), "--tokenizer", str(odd_chat_tokenizer), "--prompt", "abc", "--chat",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.rsplit("\n", 2)[0] + "\n" == first  # generate's last line is its statistics


class CountingCalls:
    """A program that records each call's (tokens, start position)."""

    def __init__(self, program):
        self.program, self.max_seq_len, self.calls = program, program.max_seq_len, []

    def forward(self, tokens, start_pos):
        self.calls.append((len(tokens), start_pos))
        return self.program.forward(tokens, start_pos)


def test_later_turns_reuse_the_cache_and_answer_as_a_fresh_prefill_does(odd_fp32_pte, odd_chat_tokenizer):
    talking = session(odd_fp32_pte, odd_chat_tokenizer)
    talking.model = counting = CountingCalls(talking.model)
    talking.reply("abc")
    turn = len(counting.calls)
    second = talking.reply("abd")
    prefill_tokens, start = counting.calls[turn]
    assert start > 0 and prefill_tokens < len(talking.cached) - len(second.tokens)  # only past the shared prefix
    fresh = session(odd_fp32_pte, odd_chat_tokenizer)
    fresh.turns = talking.turns[:2]  # the same conversation, nothing in the cache
    assert fresh.reply("abd").tokens == second.tokens


def test_the_oldest_turns_go_when_the_context_is_full_and_it_is_said_once(capsys, monkeypatch, odd_fp32_pte,
                                                                           odd_chat_tokenizer):
    talking = session(odd_fp32_pte, odd_chat_tokenizer)
    replies = [talking.reply("abcabc") for _ in range(4)]  # a 48-token program holds about two exchanges
    assert replies[0].dropped_turns == 0 and any(r.dropped_turns for r in replies[1:])
    assert len(talking.prompt_for("abc")[0]) + talking.reply_room <= 48
    code, out, _ = chat_cli(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer, "abcabc\n" * 4, "--max-new-tokens", "4")
    assert code == 0 and out.count("older turns are being dropped") == 1


def test_ctrl_c_stops_an_answer_not_the_chat(odd_fp32_pte, odd_chat_tokenizer):
    talking = session(odd_fp32_pte, odd_chat_tokenizer, max_new_tokens=8)
    seen = []

    def impatient(token):
        seen.append(token)
        if len(seen) == 2:
            raise KeyboardInterrupt

    stopped = talking.reply("abc", impatient)
    assert stopped.interrupted and stopped.tokens == seen  # the answer so far, the token on screen included
    assert talking.turns[-1].content == talking.tokenizer.decode(stopped.tokens)
    assert not talking.reply("abd").interrupted  # the chat goes on


def test_a_message_that_cannot_fit_is_one_line_and_exit_1_from_a_pipe(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer):
    code, _, err = chat_cli(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer, "a" * 60 + "\n")
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("handheld: error:")]
    assert "the message takes" in line and "the program holds 48" in line and "Traceback" not in err


@pytest.mark.parametrize("flags, problem", [(["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
                                            (["--guard-tokenizer", "x"], "--guard-tokenizer goes with --guard")])
def test_bad_flags_are_one_line(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer, flags, problem):
    code, _, err = chat_cli(capsys, monkeypatch, odd_fp32_pte, odd_chat_tokenizer, "abc\n", *flags)
    assert code == 1 and problem in err
