"""Greedy parity of `handheld generate` with ExecuTorch's own `TextLLMRunner` on one program and prompt: the
prompt ids, the generated ids and BOS (what is compared and why: `handheld.runtime_bindings.llm_runner`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from handheld.core.tokenizers.tokenizer import load_tokenizer, prompt_ids
from handheld.decoding.generation import generate
from handheld.runtime_bindings.llm_runner import executorch_tokenizer, run_text_llm_runner, runner_piece_ids, runner_prompt
from handheld.runtime_bindings.python.program import PteProgram


@dataclass(frozen=True)
class Parity:
    """One prompt through `handheld generate`'s greedy loop and through ExecuTorch's `TextLLMRunner`."""

    prompt: str
    chat: bool
    num_bos: int  # BOS tokens the runner was asked to add
    prompt_ids: list[int]  # handheld's
    runner_prompt_ids: list[int]  # ExecuTorch's C++ tokenizer on the text the runner received
    runner_prompt_tokens: int  # the prompt length the runner reported
    handheld_ids: list[int]
    runner_ids: list[int | None]  # recovered from the runner's pieces
    handheld_text: str
    runner_text: str

    @property
    def same_prompt(self) -> bool:
        return self.runner_prompt_ids == self.prompt_ids and self.runner_prompt_tokens == len(self.prompt_ids)

    @property
    def same_tokens(self) -> bool:
        return self.runner_ids == self.handheld_ids

    def as_dict(self) -> dict:
        return asdict(self) | {"same_prompt": self.same_prompt, "same_tokens": self.same_tokens}



def check_parity(pte: Path, tokenizer_path: Path, prompt: str, *, chat: bool = False, system: str | None = None,
                 max_new_tokens: int = 16) -> Parity:
    """Greedy tokens of `handheld generate PTE --tokenizer T --prompt P [--chat]` and of ExecuTorch's runner."""
    pte, tokenizer_path = Path(pte), Path(tokenizer_path)
    tokenizer = load_tokenizer(tokenizer_path)
    ids = prompt_ids(tokenizer, prompt, chat, system)
    program = PteProgram(pte)  # as `handheld generate`: stop on the program's and the tokenizer's stop ids
    stops = sorted(set(program.eos_ids) | set(tokenizer.stop_ids))
    ours, _ = generate(program, ids, max_new_tokens, stops)
    text, num_bos = runner_prompt(tokenizer, ids)
    out = run_text_llm_runner(pte, tokenizer_path, text, num_bos=num_bos, max_new_tokens=max_new_tokens)
    executorch_tok = executorch_tokenizer(tokenizer_path)
    table = runner_piece_ids(executorch_tok, program.vocab_size)
    theirs = [_single(table.get(piece)) for piece in out.pieces]
    if theirs and theirs[-1] in stops:
        theirs = theirs[:-1]  # the runner hands over the stop token's piece too; handheld's loop does not
    return Parity(
        prompt=prompt, chat=chat, num_bos=num_bos, prompt_ids=ids,
        runner_prompt_ids=list(executorch_tok.encode(text, num_bos, 0)),
        runner_prompt_tokens=out.prompt_tokens, handheld_ids=ours, runner_ids=theirs,
        handheld_text=tokenizer.decode(ours), runner_text="".join(out.pieces[: len(theirs)]),
    )


def _single(ids: list[int] | None) -> int | None:
    return ids[0] if ids is not None and len(ids) == 1 else None
