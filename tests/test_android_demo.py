"""android_demo/: what can be checked without an Android SDK or a phone.

push.sh runs against a fake `adb` that records its arguments; the app's chat templates render as the models'
own Jinja templates do; the workflow and the Kotlin source name what the README says they use. The app itself
is built only on GitHub's runners (.github/workflows/android.yml) and has not run on a phone here.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from handheld.core.tokenizers.chat_template import ChatTemplate

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "android_demo"
PUSH = DEMO / "push.sh"
ACTIVITY = DEMO / "src" / "main" / "java" / "handheld" / "chat" / "MainActivity.kt"
TEMPLATES = json.loads((DEMO / "src" / "main" / "assets" / "templates.json").read_text())
BASH = shutil.which("bash")
FOLDER = "/data/local/tmp/handheld"

# Prints what FAKE_ADB_DEVICES holds for `adb devices` and logs every call, one argument per tab.
FAKE_ADB = """#!/bin/sh
printf '%s\\t' "$@" >> "$FAKE_ADB_LOG"
printf '\\n' >> "$FAKE_ADB_LOG"
if [ "$1" = devices ]; then printf 'List of devices attached\\n%b\\n' "$FAKE_ADB_DEVICES"; fi
"""


def push(tmp_path: Path, *args: str, devices: str | None = "", files: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Runs push.sh with only a fake adb on PATH (none when devices is None); returns the run and adb's calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "adb.log"
    if devices is not None:
        (bin_dir / "adb").write_text(FAKE_ADB)
        (bin_dir / "adb").chmod(0o755)
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    env = {"PATH": str(bin_dir), "FAKE_ADB_LOG": str(log), "FAKE_ADB_DEVICES": devices or ""}
    done = subprocess.run([BASH, str(PUSH), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=10)
    calls = [line.split("\t")[:-1] for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def one_line_error(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr


def test_push_without_adb_fails_in_one_line(tmp_path):
    done, _ = push(tmp_path, "m.pte", "tokenizer.model", devices=None, files=("m.pte", "tokenizer.model"))
    one_line_error(done, "adb not found")


@pytest.mark.parametrize("devices", ["", "R5CT1234\\tunauthorized", "R5CT1234\\toffline"])
def test_push_without_a_ready_device_fails_in_one_line(tmp_path, devices):
    done, calls = push(tmp_path, "m.pte", "tokenizer.model", devices=devices, files=("m.pte", "tokenizer.model"))
    one_line_error(done, "no device connected")
    assert calls == [["devices"]]


def test_push_asks_for_a_serial_among_several_devices_and_checks_it(tmp_path):
    two = "R5CT1234\\tdevice\\nemulator-5554\\tdevice"
    done, _ = push(tmp_path, "m.pte", "tokenizer.model", devices=two, files=("m.pte", "tokenizer.model"))
    one_line_error(done, "2 devices connected: choose one with -s SERIAL")
    done, _ = push(tmp_path, "-s", "R5CT9999", "m.pte", "tokenizer.model", devices=two)
    one_line_error(done, "no device R5CT9999")


def test_push_refuses_a_missing_file_before_calling_adb(tmp_path):
    done, calls = push(tmp_path, "m.pte", "tokenizer.model", devices="R5CT1234\\tdevice", files=("m.pte",))
    one_line_error(done, "no such file: tokenizer.model")
    assert calls == []


def test_push_copies_program_tokenizer_and_config_into_the_apps_folder(tmp_path):
    files = ("m.pte", "tokenizer.json", "tokenizer_config.json")
    done, calls = push(tmp_path, "m.pte", str(tmp_path / "tokenizer.json"), devices="R5CT1234\\tdevice", files=files)
    assert done.returncode == 0, done.stderr
    assert calls == [
        ["devices"],
        ["shell", f"mkdir -p '{FOLDER}'"],
        ["push", "m.pte", FOLDER + "/"],
        ["push", str(tmp_path / "tokenizer.json"), FOLDER + "/"],
        ["push", str(tmp_path / "tokenizer_config.json"), FOLDER + "/"],
        ["shell", f"chmod 755 '{FOLDER}'"],
        ["shell", "chmod 644 " + " ".join(f"'{FOLDER}/{name}'" for name in files)],
    ]
    # The app opens on the folder push.sh fills.
    assert f'DEFAULT_FOLDER = "{FOLDER}"' in ACTIVITY.read_text()


def test_push_to_a_chosen_device_and_folder(tmp_path):
    two = "R5CT1234\\tdevice\\nemulator-5554\\tdevice"
    files = ("m.pte", "tokenizer.model")
    done, calls = push(tmp_path, "-s", "emulator-5554", "-d", "/data/local/tmp/x/", *files, devices=two, files=files)
    assert done.returncode == 0, done.stderr
    assert calls[0] == ["devices"] and all(call[:2] == ["-s", "emulator-5554"] for call in calls[1:])
    assert [call[2:] for call in calls[1:4]] == [["shell", "mkdir -p '/data/local/tmp/x'"],
                                                 ["push", "m.pte", "/data/local/tmp/x/"],
                                                 ["push", "tokenizer.model", "/data/local/tmp/x/"]]


def test_push_quotes_what_the_device_shell_reads(tmp_path):
    """adb shell hands one command line to the phone's shell: a folder name cannot add commands to it."""
    import shlex

    hostile = "/data/local/tmp/it's; reboot $(id) `x`"
    files = ("m.pte", "tokenizer.model")
    done, calls = push(tmp_path, "-d", hostile, *files, devices="R5CT1234\\tdevice", files=files)
    assert done.returncode == 0, done.stderr
    shell_lines = [call[1] for call in calls if call[0] == "shell"]
    assert [shlex.split(line) for line in shell_lines] == [
        ["mkdir", "-p", hostile], ["chmod", "755", hostile], ["chmod", "644", *(f"{hostile}/{name}" for name in files)]]


def test_push_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", str(PUSH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_workflow_builds_the_apk_and_uploads_it():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "android.yml").read_text())
    assert workflow["permissions"] == {"contents": "read"}
    steps = workflow["jobs"]["apk"]["steps"]
    runs = [step.get("run", "") for step in steps]
    assert "gradle -p android_demo assembleDebug" in runs
    gradle = next(step for step in steps if step.get("uses", "").startswith("gradle/actions/setup-gradle"))
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", gradle["with"]["gradle-version"])  # pinned: there is no wrapper
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"].startswith("android_demo/build/outputs/apk/debug/")


def test_app_uses_llm_module_as_executorch_1_5_declares_it():
    # Signatures from extension/android/.../extension/llm/LlmModule.kt and LlmCallback.kt (v1.4 to main).
    source = ACTIVITY.read_text()
    for call in ('LlmModule("$dir/$pte", "$dir/$tok", 0f)', "it.load()", "llm.generate(prompt, Int.MAX_VALUE, callback, false)",
                 "module?.stop()", "llm.resetContext()", "module?.close()", "override fun onResult(result: String)",
                 "override fun onStats(stats: String)"):
        assert call in source, call
    # The stats JSON fields the app reads (extension/llm/runner/stats.h).
    for field in ("inference_start_ms", "prompt_eval_end_ms", "inference_end_ms", "first_token_ms", "prompt_tokens",
                  "generated_tokens"):
        assert f'"{field}"' in source, field


def test_app_runtime_is_the_exporters_release():
    exporter = importlib.metadata.version("executorch").split("+")[0]
    gradle = (DEMO / "build.gradle.kts").read_text()
    assert f'implementation("org.pytorch:executorch-android:{exporter}")' in gradle


def test_app_reads_every_template_field_the_asset_has():
    read = set(re.findall(r'o\.get(?:String|JSONArray)\("(\w+)"\)', ACTIVITY.read_text()))
    assert all(set(entry) == read for entry in TEMPLATES)


# The models' own templates: SmolLM2-135M-Instruct's (its GGUF, Apache-2.0) and Meta-Llama-3-Instruct's.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' "
           "+ message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@pytest.mark.parametrize("name, jinja", [("SmolLM2 (ChatML)", SMOLLM2), ("Llama 3", LLAMA3)])
def test_app_templates_render_a_two_turn_chat_as_the_models_own(name, jinja):
    app = next(entry for entry in TEMPLATES if entry["name"] == name)
    # What MainActivity sends: the opening and the first message, then (after the reply streamed into the
    # KV cache) the end of the reply and the second message.
    opening = app["first"] + (app["system"].replace("{system}", app["default_system"]) if app["default_system"] else "")
    sent = (opening + app["user"].replace("{user}", "What is 2+2?") + "4" + app["end"]
            + app["user"].replace("{user}", "And 3+3?"))
    chat = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"}]
    assert sent == ChatTemplate(jinja, bos_token="<|begin_of_text|>").render(chat)
    # The app picks the entry whose marker tokenizer_config.json's template holds, and drops the stop token.
    assert [entry["name"] for entry in TEMPLATES if entry["marker"] and entry["marker"] in jinja] == [name]
    assert app["end"].strip() in app["stops"]


def test_executorchs_tokenizers_read_the_llama3_template_as_special_tokens(llama3_tokenizer_path, llama3_tokenizer_json):
    # LlmModule tokenizes with these C++ tokenizers (the executorch wheel's binding of them): the app's template
    # text must become the header ids, not text, and the stop token must come back as the text the app drops.
    cpp = pytest.importorskip("pytorch_tokenizers.pytorch_tokenizers_cpp")
    app = next(entry for entry in TEMPLATES if entry["name"] == "Llama 3")
    text = app["first"] + app["user"].replace("{user}", "Hi")
    for kind, path in ((cpp.Tiktoken, llama3_tokenizer_path), (cpp.HFTokenizer, llama3_tokenizer_json)):
        tokenizer = kind()
        tokenizer.load(str(path))
        assert tokenizer.encode(text, 0, 0) == [128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271]
        assert tokenizer.decode(128009) in app["stops"]
