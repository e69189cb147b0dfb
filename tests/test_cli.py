"""The command line: an end-to-end run from a shell, and every bad input as one clear line, no traceback,
and nothing left behind at the output path."""

import json
import subprocess
import sys

import pytest

from conftest import ODD_ARGS, odd_state, delegated_linears
from handheld.core.checkpoints import write_checkpoint
from handheld.cli import main
from handheld.core.errors import HandheldError


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, pattern):
    import re

    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("handheld: error:")]
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def assert_nothing_written(directory):
    assert not [p.name for p in directory.iterdir() if p.suffix in (".pte", ".partial") or ".partial" in p.name]


def test_shell_end_to_end(tmp_path):
    """init-random -> inspect -> export -> inspect -> generate, as a user types them."""

    def sh(*args):
        result = subprocess.run(["handheld", *args], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr
        return result.stdout

    ckpt, pte = tmp_path / "tiny", tmp_path / "tiny.pte"
    assert "wrote random-weight tiny" in sh("init-random", "--model", "tiny", "--format", "hf", "-o", str(ckpt))
    assert "parameters  197,088" in sh("inspect", str(ckpt))
    sh("export", "--checkpoint", str(ckpt), "--scheme", "fp32", "--backend", "xnnpack", "--max-seq-len", "64", "-o", str(pte))
    info = json.loads(sh("inspect", str(pte), "--json"))
    assert info["ops_delegated"]["linear"] == delegated_linears(2)
    assert info["metadata"]["handheld_model"] == "tiny"
    out = sh("generate", str(pte), "--tokenizer", str(ckpt / "tokenizer.model"), "--prompt", "naïve 🦙", "--max-new-tokens", "12")
    stats = out.strip().splitlines()[-1]
    assert stats.startswith("prompt tokens 12 | generated ")  # BOS + 11 bytes
    assert "TTFT" in stats and "prefill" in stats and "decode" in stats
    chat = sh("generate", str(pte), "--tokenizer", str(ckpt / "tokenizer.model"), "--prompt", "hi", "--chat", "--max-new-tokens", "4")
    assert chat.strip().splitlines()[-1].startswith("prompt tokens ")
    # Quiet by default: ExecuTorch's native CPU-probe lines and torch's warnings only with --verbose.
    for verbose in ([], ["--verbose"]):
        done = subprocess.run(["handheld", "generate", str(pte), "--tokenizer", str(ckpt / "tokenizer.model"), "--prompt",
                               "hi", "--max-new-tokens", "2", *verbose], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and ("cpuinfo" in done.stderr) == bool(verbose), done.stderr
        assert bool(done.stderr.strip()) == bool(verbose), done.stderr


def test_help_explains_every_command():
    result = subprocess.run([sys.executable, "-m", "handheld", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("init-random", "inspect", "export", "generate", "demo"):
        assert command in result.stdout


def test_export_help_names_every_scheme_and_backend():
    from handheld.export.backends import BACKENDS
    from handheld.quant.schemes import SCHEMES

    result = subprocess.run([sys.executable, "-m", "handheld", "export", "--help"], capture_output=True, text=True)
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for name in [*SCHEMES, *BACKENDS]:
        assert f" {name} " in text or f" {name}," in text or f" {name};" in text or f" {name}:" in text, name


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(tmp_path / "nope"), "-o", str(tmp_path / "m.pte"))
    assert_clean_error(code, err, r"checkpoint .*nope not found")
    assert_nothing_written(tmp_path)


def _odd_checkpoint_dir(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_checkpoint(ckpt, ODD_ARGS, odd_state(), "meta")
    return ckpt


def test_truncated_checkpoint(capsys, tmp_path):
    ckpt = _odd_checkpoint_dir(tmp_path)
    weights = ckpt / "consolidated.00.pth"
    weights.write_bytes(weights.read_bytes()[:5000])
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.pte"))
    assert_clean_error(code, err, r"consolidated.00.pth: truncated or not a PyTorch checkpoint")
    assert_nothing_written(tmp_path)


def test_params_disagreeing_with_weights(capsys, tmp_path):
    ckpt = _odd_checkpoint_dir(tmp_path)
    params = json.loads((ckpt / "params.json").read_text()) | {"n_kv_heads": 4}
    (ckpt / "params.json").write_text(json.dumps(params))
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.pte"))
    assert_clean_error(code, err, r"tensor layers\.0\.attention\.wk\.weight has shape \(48, 96\) but the params imply \(96, 96\)")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["init-random", "--model", "llama9"], r"unknown model 'llama9'; known models: llama-guard3-1b, llama3.2-1b, llama3.2-3b, smollm2-135m, tiny"),
        (["init-random", "--model", "tiny", "--format", "gguf"], r"unknown format 'gguf'; known formats: meta, hf"),
        (["export", "--checkpoint", "CKPT", "--scheme", "int2"], r"unknown scheme 'int2'; known schemes: fp32, bf16"),
        (["export", "--checkpoint", "CKPT", "--backend", "tpu"], r"unknown backend 'tpu'; known backends: xnnpack"),
    ],
)
def test_unknown_names_list_the_known_ones(capsys, tmp_path, odd_checkpoint, argv, pattern):
    argv = [str(odd_checkpoint) if a == "CKPT" else a for a in argv]
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "out"))
    assert_clean_error(code, err, pattern)
    assert not (tmp_path / "out").exists()


def test_failed_lowering_leaves_no_file(capsys, tmp_path, odd_checkpoint, monkeypatch):
    import handheld.export.pte_writer as writer

    def half_written(program, config, file):
        file.write(b"partial program")
        raise HandheldError("emission failed (simulated)")

    monkeypatch.setattr(writer, "_emit", half_written)
    out = tmp_path / "m.pte"
    out_existing = tmp_path / "keep.pte"
    out_existing.write_bytes(b"an earlier good export")
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(odd_checkpoint), "-o", str(out))
    assert_clean_error(code, err, "simulated")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pte"]
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(odd_checkpoint), "-o", str(out_existing))
    assert code == 1 and out_existing.read_bytes() == b"an earlier good export"


def test_prompt_longer_than_max_seq_len(capsys, odd_tokenizer, odd_fp32_pte):
    code, _, err = run_cli(capsys, "generate", str(odd_fp32_pte), "--tokenizer", str(odd_tokenizer), "--prompt", "a" * 60)
    assert_clean_error(code, err, r"prompt has 61 tokens but the program's max sequence length is 48")


def test_eager_checkpoint_and_pte_generate_the_same_text(capsys, odd_tokenizer, odd_checkpoint, odd_fp32_pte):
    common = ["--tokenizer", str(odd_tokenizer), "--prompt", "abcabd", "--max-new-tokens", "12"]
    code, from_pte, _ = run_cli(capsys, "generate", str(odd_fp32_pte), *common)
    assert code == 0
    code, from_eager, err = run_cli(capsys, "generate", str(odd_checkpoint), *common, "--max-seq-len", "48")
    assert code == 0 and "| eager PyTorch, fp32" in from_eager and "| ExecuTorch, fp32" in from_pte
    assert from_pte.splitlines()[0] == from_eager.splitlines()[0]
    assert "generated 12" in from_pte.splitlines()[-1]


def test_eager_generation_applies_the_scheme(capsys, odd_tokenizer, odd_checkpoint):
    code, out, err = run_cli(capsys, "generate", str(odd_checkpoint), "--tokenizer", str(odd_tokenizer),
                             "--prompt", "abc", "--scheme", "8da4w", "--max-new-tokens", "3")
    assert code == 0 and "eager PyTorch, 8da4w" in out and "generated 3" in out


def test_tokenizer_larger_than_the_model(capsys, tmp_path, odd_fp32_pte):
    from handheld.core.tokenizers.tokenizer import write_byte_tokenizer

    write_byte_tokenizer(tmp_path / "tokenizer.model")
    code, _, err = run_cli(capsys, "generate", str(odd_fp32_pte), "--tokenizer", str(tmp_path / "tokenizer.model"), "--prompt", "x")
    assert_clean_error(code, err, r"tokenizer has 512 ids but .* only 300")


@pytest.mark.parametrize("command", ["inspect", "generate"])
def test_a_file_that_is_not_a_pte(capsys, tmp_path, command):
    bogus = tmp_path / "model.pte"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a program")
    tok = tmp_path / "tokenizer.model"
    from handheld.core.tokenizers.tokenizer import write_byte_tokenizer

    write_byte_tokenizer(tok)
    argv = [command, str(bogus)] + (["--tokenizer", str(tok), "--prompt", "x"] if command == "generate" else [])
    code, _, err = run_cli(capsys, *argv)
    assert_clean_error(code, err, r"model.pte is not an ExecuTorch .pte program")


def test_init_random_refuses_a_non_empty_directory(capsys, tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    code, _, err = run_cli(capsys, "init-random", "--model", "tiny", "-o", str(tmp_path))
    assert_clean_error(code, err, r"exists and is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]
