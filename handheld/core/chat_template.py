"""A model's own chat template (Jinja2, as Hugging Face and GGUF files carry it), rendered as transformers
renders it: a sandboxed, immutable environment, `trim_blocks` / `lstrip_blocks`, loop controls,
`raise_exception`, `strftime_now` and `tojson`, with `messages`, `bos_token`, `eos_token` and `add_generation_prompt`. The sandbox keeps a
template from a downloaded file from reaching Python internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from handheld.core.errors import HandheldError


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
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)  # Llama 3.x templates date the chat
        try:
            template = env.from_string(self.source)
            return template.render(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                   add_generation_prompt=add_generation_prompt)
        except HandheldError:
            raise
        except jinja2.TemplateError as e:
            raise HandheldError(f"the model's chat template failed: {e.__class__.__name__}: {e}") from None


def _raise(message: Any) -> None:
    raise HandheldError(f"the model's chat template refused the conversation: {message}")
