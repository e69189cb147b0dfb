"""A model's own chat template (Jinja2, as Hugging Face and GGUF files carry it), rendered as transformers
renders it: a sandboxed, immutable environment, `trim_blocks` / `lstrip_blocks`, loop controls,
`raise_exception`, `strftime_now` and `tojson`, with `messages`, `bos_token`, `eos_token` and `add_generation_prompt`. The sandbox keeps a
template from a downloaded file from reaching Python internals; a step budget and a size cap on `*` and `**` keep
one that loops forever or builds a giant string from hanging the caller (one line instead).
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from handheld.core.errors import HandheldError

# Lines of the compiled template one render may run: real chat templates run a few hundred per message.
MAX_TEMPLATE_STEPS = 2_000_000
MAX_TEMPLATE_VALUE = 1_000_000  # items or characters one `*` may build; digits of a `**` result, roughly


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | ipython
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja2 text
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        import jinja2

        env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)  # Llama 3.x templates date the chat
        try:
            template = env.from_string(self.source)
            with _step_budget(MAX_TEMPLATE_STEPS):
                return template.render(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                       add_generation_prompt=add_generation_prompt)
        except HandheldError:
            raise
        except jinja2.TemplateError as e:
            raise HandheldError(f"the model's chat template failed: {e.__class__.__name__}: {e}") from None
        except RecursionError:
            raise HandheldError("the model's chat template recursed without end") from None


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` checked before they run: `'x' * 10**9` would exhaust memory in one step."""
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            sizes = [len(v) for v in (left, right) if isinstance(v, (str, list, tuple))]
            counts = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
            if sizes and counts and sizes[0] * counts[0] > MAX_TEMPLATE_VALUE:
                raise HandheldError(f"the model's chat template builds a value of {sizes[0] * counts[0]:,} items "
                                    f"(more than {MAX_TEMPLATE_VALUE:,}): refused")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) * max(1.0, _digits(left)) > MAX_TEMPLATE_VALUE / 100:
            raise HandheldError(f"the model's chat template raises to the power {right}: refused")
        return super().call_binop(context, operator, left, right)


def _digits(value: Any) -> float:
    return float(len(str(abs(int(value))))) if isinstance(value, (int, float)) and abs(value) < 1e300 else 1e6


@contextlib.contextmanager
def _step_budget(limit: int):
    """Count the lines the compiled template runs (its code objects are named "<template>"); a template past
    `limit` is stopped with one line. Deterministic, unlike a timer; the caller's tracer is restored after."""
    steps = 0

    def in_template(frame, event, arg):
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > limit:
                raise HandheldError(f"the model's chat template ran more than {limit:,} steps (a loop without end?): "
                                    f"refused")
        return in_template

    def on_call(frame, event, arg):
        return in_template if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


def _raise(message: Any) -> None:
    raise HandheldError(f"the model's chat template refused the conversation: {message}")
