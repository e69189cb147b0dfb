"""Chat templates from model files, rendered as transformers renders them, in a sandbox."""

from __future__ import annotations

import pytest

from handheld.core.tokenizers.chat_template import ChatTemplate
from handheld.core.errors import HandheldError

# SmolLM2-135M-Instruct's template, as its GGUF carries it (Apache-2.0).
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' "
           "+ message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_smollm2_template_golden_text():
    template = ChatTemplate(SMOLLM2)
    user = [{"role": "user", "content": "What is the capital of France?"}]
    assert template.render(user) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}] + user
    assert template.render(system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")


def test_templates_cannot_reach_python_internals():
    escape = ChatTemplate("{{ ().__class__.__base__.__subclasses__() }}")
    with pytest.raises(HandheldError, match="unsafe"):
        escape.render([])


def test_a_template_that_refuses_says_so():
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok")
    with pytest.raises(HandheldError, match="refused the conversation: user first"):
        strict.render([{"role": "assistant", "content": "x"}])
    assert strict.render([{"role": "user", "content": "x"}]) == "ok"


def test_a_broken_template_is_one_error():
    with pytest.raises(HandheldError, match="chat template failed"):
        ChatTemplate("{% for %}").render([])


@pytest.mark.parametrize("source, problem", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", r"ran more than 2,000,000 steps"),
    ("{% for m in messages %}{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}{% endfor %}",
     r"ran more than 2,000,000 steps"),
    ("{{ 'x' * 1000000000 }}", r"builds a value of 1,000,000,000 items"),
    ("{{ [1, 2] * 999999999 }}", r"builds a value of 1,999,999,998 items"),
    ("{{ 9 ** 99999999 }}", r"raises to the power 99999999"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", r"recursed without end"),
])
def test_a_template_that_would_hang_or_explode_is_refused_in_one_line(source, problem):
    """A stranger's GGUF or tokenizer_config.json carries the template: it must not hang the chat."""
    with pytest.raises(HandheldError, match=problem):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_the_budget_leaves_real_templates_and_the_callers_tracer_alone():
    import sys

    seen = []

    def tracer(frame, event, arg):
        seen.append(event)
        return None

    sys.settrace(tracer)
    try:
        long_chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 200} for i in range(400)]
        text = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}").render(long_chat)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert text.count("<user>") == 200
