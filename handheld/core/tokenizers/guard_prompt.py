"""Llama Guard 3's prompt format and its verdict, as Meta publishes them (text only; running a guard
program is `handheld.decoding.guard`).

The guard reads one user turn (rendered with the tokenizer's chat format) that lists the hazard
categories and the conversation, and answers with text: first line `safe` or `unsafe`, and when unsafe a
second line with the violated categories, comma-separated (`S1,S10`). The categories are the MLCommons
hazard taxonomy, S1..S14, with the names of Meta's reference prompt builder (llama-cookbook's
`prompt_format_utils.LLAMA_GUARD_3_CATEGORY`, which always lists all 14; the 1B model card's table
stops at S13, Code Interpreter Abuse being a tool-use category).
"""

from __future__ import annotations

from dataclasses import dataclass

from handheld.core.errors import HandheldError

# MLCommons hazard categories, in the reference prompt's order and wording.
CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

_TASK = ("Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
         "with the below categories.")
_INSTRUCTIONS = ("Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
                 " - First line must read 'safe' or 'unsafe'.\n"
                 " - If unsafe, a second line must include a comma-separated list of violated categories.")


@dataclass(frozen=True)
class Verdict:
    safe: bool
    categories: tuple[str, ...] = ()  # S-codes, in the guard's order

    def lines(self) -> list[str]:
        """What `handheld guard` prints: the verdict, then the categories with their names."""
        if self.safe:
            return ["safe"]
        return ["unsafe"] + ([", ".join(f"{c} ({CATEGORIES[c]})" for c in self.categories)] if self.categories else [])

    def summary(self) -> str:
        return "safe" if self.safe else " ".join(["unsafe", ",".join(self.categories)]).strip()


def guard_prompt(prompt: str, response: str | None = None) -> str:
    """The user turn that asks the guard about the prompt (or, given a response, about the response)."""
    role = "User" if response is None else "Agent"
    categories = "\n".join(f"{code}: {name}." for code, name in CATEGORIES.items())
    turns = [f"User: {prompt}"] + ([] if response is None else [f"Agent: {response}"])
    conversation = "\n\n".join(turns)
    return (f"{_TASK.format(role=role)}\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
            f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n{_INSTRUCTIONS.format(role=role)}")


def parse_verdict(text: str) -> Verdict:
    """The guard's generated text, read as the release specifies; anything else is an error, never a guess."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first == "safe" and len(lines) == 1:
        return Verdict(True)
    if first != "unsafe" or len(lines) > 2:
        raise HandheldError(f"the guard's output is not a verdict (first line 'safe' or 'unsafe'): {text.strip()[:80]!r}")
    codes = tuple(code.strip() for code in lines[1].split(",")) if len(lines) == 2 else ()
    unknown = [code for code in codes if code not in CATEGORIES]
    if unknown:
        raise HandheldError(f"the guard named unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                            f"known: S1..S{len(CATEGORIES)}")
    return Verdict(False, codes)
