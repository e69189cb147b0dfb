"""ExecuTorch's own LLM runner on a handheld `.pte` (its greedy parity with `handheld generate`:
`handheld.measure.runner_parity`).

ExecuTorch's C++ `TextLLMRunner` (the runner behind the Android library's `LlmModule`) is reached through the
executorch wheel's Python binding. It takes its prompt as text, encodes it with its own C++ tokenizer (the
`pytorch_tokenizers` library, which the wheel depends on) and hands back each generated token as its decoded
piece of text, never as an id. So a comparison with handheld's greedy loop checks three things:

- the prompt: the runner's tokenizer turns the text into handheld's prompt ids (checked with the same C++
  tokenizer library, and against the number of prompt tokens the runner reports);
- the tokens: each piece maps back to exactly one id under the runner's own tokenizer's decoding (one-to-one
  for byte-level vocabularies; checked piece by piece, `None` where it is not), and those ids equal handheld's.
  The runner's names are used, not handheld's: for Llama 3 tiktoken files ExecuTorch names the reserved
  specials as llama-models does (`<|step_id|>` at 5, then `<|reserved_special_token_2|>` from 11) while
  handheld follows Llama 3.2's tokenizer.json (`..._2|>` at 5, `..._3|>` from 11): same ids, other text;
- BOS: the runner adds BOS by count (`num_bos`), so it gets 1 exactly when handheld's tokenizer adds BOS.

The binding passes each piece to Python as `str`: a piece that is not valid UTF-8 by itself (one byte of a
multi-byte character, common with byte-level BPE) makes it raise, and that is reported as an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handheld.core.errors import HandheldError, first_line
from handheld.core.tokenizers.tokenizer import Tokenizer


@dataclass(frozen=True)
class RunnerOutput:
    pieces: list[str]  # one decoded piece per generated token, in order
    prompt_tokens: int  # as the runner counted them
    generated_tokens: int


def run_text_llm_runner(pte: Path, tokenizer_path: Path, text: str, *, num_bos: int, max_new_tokens: int) -> RunnerOutput:
    """Greedy (temperature 0) generation by ExecuTorch's `TextLLMRunner`, loaded fresh as an app would."""
    from handheld.runtime_bindings.python.program import load_runtime_kernels

    load_runtime_kernels()  # without them the runner fails with "Missing operator" on quantized programs
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    try:
        runner = TextLLMRunner(str(pte), str(tokenizer_path))
    except RuntimeError as e:
        raise HandheldError(f"ExecuTorch's TextLLMRunner cannot load {pte} with {tokenizer_path}: {first_line(e)}") from None
    config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=0.0, num_bos=num_bos, num_eos=0)
    pieces, stats = [], []
    try:
        runner.generate(text, config, token_callback=pieces.append, stats_callback=stats.append)
    except UnicodeDecodeError:
        raise HandheldError(f"ExecuTorch's runner binding cannot hand over generated token {len(pieces) + 1} of {pte} "
                            "as text (not valid UTF-8 by itself); its ids are out of reach") from None
    except RuntimeError as e:
        raise HandheldError(f"ExecuTorch's TextLLMRunner failed on {pte}: {first_line(e)}") from None
    if not stats:
        raise HandheldError(f"ExecuTorch's TextLLMRunner reported no statistics for {pte}")
    return RunnerOutput(pieces, stats[-1].num_prompt_tokens, stats[-1].num_generated_tokens)


def executorch_tokenizer(path: Path):
    """The C++ tokenizer ExecuTorch's runner would pick for `path` (it tries the kinds in this order)."""
    from pytorch_tokenizers import pytorch_tokenizers_cpp as cpp

    kinds = (cpp.HFTokenizer, cpp.Tiktoken, cpp.SPTokenizer, cpp.Llama2cTokenizer) if path.suffix == ".json" \
        else (cpp.Tiktoken, cpp.SPTokenizer, cpp.Llama2cTokenizer)
    for kind in kinds:
        tokenizer = kind()
        try:
            tokenizer.load(str(path))
        except RuntimeError:
            continue
        if tokenizer.is_loaded():
            return tokenizer
    raise HandheldError(f"ExecuTorch's tokenizers cannot read {path}")


def runner_prompt(tokenizer: Tokenizer, ids: list[int]) -> tuple[str, int]:
    """The text and BOS count that make the runner start from `ids`: BOS as a count when handheld's tokenizer
    added it, the rest as text (the runner's tokenizer turns control tokens' text back into control ids)."""
    num_bos = int(tokenizer.add_bos and ids[:1] == [tokenizer.bos_id])
    try:
        return tokenizer.decode_bytes(ids[num_bos:]).decode("utf-8"), num_bos
    except UnicodeDecodeError:
        raise HandheldError("the prompt does not decode to UTF-8 text, which is all the runner takes") from None


def runner_piece_ids(executorch_tok, vocab_size: int) -> dict[str, list[int]]:
    """Every id of the vocabulary under the piece ExecuTorch's tokenizer decodes it to. Ids whose piece is not
    UTF-8 by itself are left out: the binding cannot hand them over (the runner raises instead)."""
    table: dict[str, list[int]] = {}
    for i in range(min(vocab_size, executorch_tok.vocab_size())):
        try:
            table.setdefault(executorch_tok.decode(i), []).append(i)
        except UnicodeDecodeError:
            continue
    return table
