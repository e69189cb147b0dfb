"""Chat templates from model files, rendered as transformers renders them, in a sandbox."""

from __future__ import annotations

import pytest

from handheld.core.chat_template import ChatTemplate
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
