"""`handheld export --scheme 8da4w --calib TEXT [--budget-mb MB] [--rotation quarot]`: GPTQ on the user's text, after a
rotation, and mixed precision within a byte budget, recorded in the .pte and shown by inspect; bad text refused."""

import hashlib

import pytest

from conftest import PARITY_MAX_SEQ_LEN, sample_text
from test_cli import assert_clean_error, run_cli
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.core.tokenizers.tokenizer import load_tokenizer
from handheld.measure.quality import eager_logits_fn, evaluate
from handheld.quant.linears import block_linears
from handheld.quant.mixed_precision import planned_bytes_per_token
from handheld.quant.schemes import SchemeOptions, apply_scheme, read_calibration


def _eager(checkpoint, options=SchemeOptions(), calibrated=False):
    loaded = read_checkpoint(checkpoint)
    model = build_model(loaded, PARITY_MAX_SEQ_LEN, full_logits=True)
    calibration = read_calibration(options, load_tokenizer(loaded.tokenizer_path), PARITY_MAX_SEQ_LEN) if calibrated else None
    return apply_scheme(model, "8da4w", options, calibration).eval() if options else model.eval()


def budget_mb(checkpoint) -> float:
    """Halfway between the all-4-bit and the all-8-bit program: some block linears are promoted, not all."""
    model = build_model(read_checkpoint(checkpoint), PARITY_MAX_SEQ_LEN)
    four, eight = (planned_bytes_per_token(model, 32, 8, frozenset(names)) for names in ((), block_linears(model)))
    return (four + eight) / 2 / 1e6


@pytest.fixture(scope="module")
def gptq_pte(byte_checkpoint, calib_text, tmp_path_factory):
    """One export serves GPTQ, the rotation and mixed precision (exports are the slow part of the suite)."""
    out = tmp_path_factory.mktemp("gptq") / "gptq.pte"
    code = run_cli_plain("export", "--checkpoint", str(byte_checkpoint), "--scheme", "8da4w", "--calib", str(calib_text),
                         "--budget-mb", str(budget_mb(byte_checkpoint)), "--rotation", "quarot",
                         "--max-seq-len", str(PARITY_MAX_SEQ_LEN), "-o", str(out))
    assert code == 0
    return out


def run_cli_plain(*argv):
    from handheld.cli import main

    return main(list(argv))


def test_calibrated_program_records_its_text_and_follows_its_oracle(byte_checkpoint, calib_text, gptq_pte):
    from handheld.runtime_bindings.python.program import PteProgram

    program = PteProgram(gptq_pte)
    record = program.metadata.quantization
    assert record["scale_rule"] == "weighted" and record["group_size"] == 32
    assert record["calibration"]["sha256"] == hashlib.sha256(calib_text.read_bytes()).hexdigest()
    assert record["calibration"]["method"] == "gptq" and record["calibration"]["seq_len"] == PARITY_MAX_SEQ_LEN
    assert record["rotation"] == {"method": "quarot", "seed": 0}
    options = SchemeOptions(calib=calib_text, budget_mb=budget_mb(byte_checkpoint), rotation="quarot")
    oracle, data_free, floating = _eager(byte_checkpoint, options, True), _eager(byte_checkpoint), _eager(byte_checkpoint, None)
    ids = list(range(1, 40))
    ours = program.forward(ids, 0)[-1]
    expected, other, flt = (eager_logits_fn(model)(ids)[-1] for model in (oracle, data_free, floating))
    # The program follows the calibrated model far more closely than the calibration moved it off the data-free one.
    assert (ours - expected).abs().max() < 0.25 * (expected - other).abs().max()
    assert (expected - flt).abs().max() > 0  # and it is quantized


def test_mixed_precision_program_stays_within_its_budget_and_says_which_linears_are_8_bit(byte_checkpoint, gptq_pte):
    from handheld.cli.inspect import describe_pte, format_pte
    from handheld.runtime_bindings.python.program import PteProgram

    metadata = PteProgram(gptq_pte).metadata
    record, budget = metadata.quantization, budget_mb(byte_checkpoint)
    assert record["budget_mb"] == budget and record["sensitivity"] == "fisher"
    eight = record["eight_bit_linears"]
    assert 0 < len(eight) < len(block_linears(build_model(read_checkpoint(byte_checkpoint), PARITY_MAX_SEQ_LEN)))
    assert metadata.bytes_per_token() <= budget * 1e6
    assert metadata.weight_bytes["8-bit linears"] > 0
    shown = format_pte(describe_pte(gptq_pte))
    assert f"budget {budget:g} MB per token; {len(eight)} block linears 8-bit by fisher sensitivity" in shown
    assert "rotation                 quarot (seed 0), before GPTQ" in shown
    assert all(f"    {name}" in shown.splitlines() for name in eight)


def test_gptq_beats_data_free_rounding_on_held_out_text(byte_checkpoint, calib_text):
    tokenizer = load_tokenizer(read_checkpoint(byte_checkpoint).tokenizer_path)
    held_out = tokenizer.encode(sample_text(300, seed=11), bos=False)
    floating = eager_logits_fn(_eager(byte_checkpoint, None))
    kl = {name: evaluate(eager_logits_fn(model), held_out, PARITY_MAX_SEQ_LEN, PARITY_MAX_SEQ_LEN // 2, floating,
                         progress=False).mean_kl
          for name, model in (("gptq", _eager(byte_checkpoint, SchemeOptions(calib=calib_text), True)),
                              ("data-free", _eager(byte_checkpoint)))}
    assert kl["gptq"] < 0.8 * kl["data-free"], kl


@pytest.mark.parametrize("content, problem", [
    (None, r"text file .*missing\.txt not found"),
    (b"  \n\n", r"text file .* is empty"),
    (b"caf\xe9 au lait\n" * 50, r"text file .* is not UTF-8 text \(byte 3 is 0xe9\)"),
    (b"too short for a hessian\n", r"has \d+ tokens.*GPTQ needs at least 1024"),
])
def test_bad_calibration_text_is_one_line_and_nothing_is_written(capsys, byte_checkpoint, tmp_path, content, problem):
    text = tmp_path / "missing.txt"
    if content is not None:
        text = tmp_path / "calib.txt"
        text.write_bytes(content)
    out = tmp_path / "out.pte"
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(byte_checkpoint), "--scheme", "8da4w", "--calib",
                           str(text), "-o", str(out))
    assert_clean_error(code, err, problem)
    assert not out.exists() and list(tmp_path.iterdir()) == ([text] if content is not None else [])


@pytest.mark.parametrize("flags, problem", [
    (["--scheme", "fp32", "--calib", "x.txt"], r"--calib applies to xnnpack's 4-bit schemes; scheme fp32 has no groups"),
    (["--scheme", "8da4w", "--scale-rule", "q9"], r"unknown scale rule 'q9'; known scale rules: weighted, extreme, absmax"),
    (["--scheme", "8da4w", "--calib", "x.txt", "--calib-tokens", "10"], r"--calib-tokens must be at least 1024"),
    (["--scheme", "8da4w", "--budget-mb", "1"], r"--budget-mb needs --calib TEXT"),
    (["--scheme", "8da4w", "--calib", "x.txt", "--budget-mb", "-2"], r"--budget-mb must be a positive number"),
    (["--scheme", "bf16", "--calib", "x.txt", "--budget-mb", "2"], r"applies to xnnpack's 4-bit schemes; scheme bf16 has no groups"),
    (["--scheme", "8da4w", "--rotation", "quarot"], r"--rotation quarot needs --calib TEXT"),
    (["--scheme", "8da4w", "--calib", "x.txt", "--rotation", "spin"], r"unknown rotation 'spin'; known rotations: none, quarot"),
    (["--scheme", "fp16", "--rotation", "quarot"], r"--rotation applies to xnnpack's 4-bit schemes; scheme fp16 has no groups"),
])
def test_options_that_cannot_apply_are_refused(capsys, byte_checkpoint, tmp_path, flags, problem):
    out = tmp_path / "out.pte"
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(byte_checkpoint), *flags, "-o", str(out))
    assert_clean_error(code, err, problem)
    assert not out.exists()


def test_quarot_keeps_the_float_function_and_none_keeps_the_model(byte_checkpoint):
    import copy

    import torch

    from handheld.quant.rotation import rotate

    model = _eager(byte_checkpoint, None)
    ids = list(range(1, 40))
    before = eager_logits_fn(model)(ids)
    assert rotate(model, "none") is model
    rotated = rotate(copy.deepcopy(model), "quarot").eval()
    after = eager_logits_fn(rotated)(ids)
    assert rotated.output.weight is not rotated.tok_embeddings.weight  # the classifier is untied, its norm folded in
    assert (after - before).abs().max() < 1e-4 * before.std()  # float64 rotations, stored in float32
    assert rotated.layers[0].feed_forward.online_hadamard
