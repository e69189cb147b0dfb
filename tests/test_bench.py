"""`handheld bench`, the regression gate and `handheld report`: schema, statistics and rendering.

No test asserts on a speed: timings vary; what must hold is the shape of the results and the logic on them.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from handheld.core.pte_metadata import ProgramMetadata
from handheld.measure.bench import METRICS, SCHEMA, BenchConfig, load_results, run_bench, summarize
from handheld.cli import main
from handheld.core.errors import HandheldError
from handheld.measure.gate import regressions
from handheld.measure.report import baseline_row, write_report
from handheld.decoding.generation import EagerRunner, generate
from handheld.decoding.generation import synthetic_prompt
from conftest import PARITY_MAX_SEQ_LEN

CONFIG = BenchConfig(prompt_len=6, gen_len=9, runs=2, warmup=1, threads=1)


@pytest.fixture(scope="module")
def bench_results(odd_fp32_pte):
    lines = []
    results = run_bench([odd_fp32_pte], CONFIG, progress=lines.append, bandwidth_gbs=20.0)
    return results, lines


def test_summarize_statistics():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["cv"] == pytest.approx(math.sqrt(1.25) / 2.5)
    assert summarize([7.0])["cv"] == 0.0


def test_bench_rows_describe_themselves(bench_results, odd_fp32_pte):
    results, lines = bench_results
    assert results["schema"] == SCHEMA and results["memory_bandwidth_gbs"] == 20.0
    (row,) = results["rows"]
    assert row["name"] == "odd_fp32" and row["file_bytes"] == odd_fp32_pte.stat().st_size
    # What ran comes from the program's metadata.
    assert (row["scheme"], row["backend"], row["max_seq_len"]) == ("fp32", "xnnpack", PARITY_MAX_SEQ_LEN)
    assert row["model"].startswith("llama(dim=96")
    assert (row["prompt_len"], row["gen_len"], row["threads"], row["runs"], row["warmup"]) == (6, 9, 1, 2, 1)
    assert row["host"]["cores"] >= 1 and row["host"]["cpu"] and row["host"]["versions"]["executorch"] == "1.5.1"
    assert len(row["samples"]) == 2
    for sample in row["samples"]:
        assert sample["generated_tokens"] == 9
        assert sample["peak_rss_bytes"] >= sample["rss_before_load_bytes"] > 0
        assert sample["program_rss_bytes"] == sample["peak_rss_bytes"] - sample["rss_before_load_bytes"]
    for metric in METRICS:
        s, values = row["stats"][metric], [sample[metric] for sample in row["samples"]]
        assert s["min"] == min(values) and s["max"] == max(values) and s["min"] <= s["median"] <= s["max"]
        assert s["cv"] >= 0
    assert len(lines) == 3 and "warm-up" in lines[0] and "run 2" in lines[2]  # progress, one line per run


def test_bench_tokens_are_the_eager_models_greedy_tokens(bench_results, odd_checkpoint):
    from handheld.core.checkpoints import load_model

    (row,) = bench_results[0]["rows"]
    prompt = synthetic_prompt(6)
    expected, _ = generate(EagerRunner(load_model(odd_checkpoint, max_seq_len=PARITY_MAX_SEQ_LEN).float()), prompt, 9, [])
    for sample in row["samples"]:
        assert sample["first_tokens"] == expected[:8]


def test_bytes_per_token_reads_one_row_of_an_untied_table():
    kinds = {"4-bit linears": 1000, "scales": 100, "8-bit embedding": 400, "8-bit classifier": 400, "embedding": 0, "other": 5}
    metadata = {"handheld_weight_bytes": json.dumps(kinds), "get_vocab_size": 4, "get_max_seq_len": 8}
    assert ProgramMetadata.from_constant_methods(metadata).bytes_per_token() == 1000 + 100 + 400 + 5 + 100
    foreign = ProgramMetadata.from_constant_methods({"get_vocab_size": 4, "get_max_seq_len": 8})
    assert foreign.bytes_per_token() is None and foreign.scheme == "unknown"  # not a handheld program


def test_bench_refuses_lengths_beyond_the_cache(odd_fp32_pte):
    config = BenchConfig(prompt_len=40, gen_len=10, runs=1, warmup=0, threads=1)
    with pytest.raises(HandheldError, match=r"need 49 cache positions; the program has 48"):
        run_bench([odd_fp32_pte], config, progress=lambda _: None)


def test_bench_config_rejects_bad_values():
    with pytest.raises(HandheldError, match="--runs must be at least 1"):
        BenchConfig(runs=0)
    with pytest.raises(HandheldError, match="unknown runner .jit.; known runners: python, native"):
        BenchConfig(runner="jit")


def _doctored(results: dict, metric: str, factor: float) -> dict:
    baseline = copy.deepcopy(results)
    baseline["rows"][0]["stats"][metric]["median"] *= factor
    return baseline


def test_regression_gate(bench_results):
    results, _ = bench_results
    assert regressions(results, results, 0.0) == []
    (failure,) = regressions(results, _doctored(results, "decode_tok_s", 1.5), 10)
    assert failure.startswith("odd_fp32: decode_tok_s median") and "-33.3%" in failure
    (failure,) = regressions(results, _doctored(results, "peak_rss_bytes", 0.5), 10)
    assert failure.startswith("odd_fp32: peak_rss_bytes") and "+100.0%" in failure
    assert regressions(results, _doctored(results, "prefill_tok_s", 1.05), 10) == []  # within the allowance
    renamed = copy.deepcopy(results)
    renamed["rows"][0]["name"] = "other"
    assert regressions(results, renamed, 10) == [
        "odd_fp32: measured now but not in the baseline (add it to the baseline to gate it)",
        "other: in the baseline but not measured now"]
    other_threads = copy.deepcopy(results)
    other_threads["rows"][0]["threads"] = 2
    assert "different settings than the baseline (threads 2 -> 1)" in regressions(results, other_threads, 10)[0]


def test_gate_refuses_what_it_cannot_compare(bench_results):
    results, _ = bench_results
    zero = _doctored(results, "decode_tok_s", 0.0)  # a baseline median of 0
    assert regressions(results, zero, 10) == ["odd_fp32: the baseline's decode_tok_s median is 0.0: not a figure to compare against"]
    other_toolchain = copy.deepcopy(results)
    other_toolchain["rows"][0]["toolchain"] = "clang 19; qemu 9.2"
    assert "(toolchain None -> clang 19; qemu 9.2); not comparable" in regressions(other_toolchain, results, 10)[0]
    counted = copy.deepcopy(results)
    counted["rows"][0]["work"] = {"metric": "instructions (valgrind)", "value": 1000}
    more_threads = copy.deepcopy(counted)
    more_threads["rows"][0]["threads"] = 4
    more_threads["rows"][0]["work"]["value"] = 1010
    assert regressions(more_threads, counted, 2, gate="work") == []  # the count runs single-threaded
    more_threads["rows"][0]["work"]["value"] = 1030
    assert "instructions (valgrind) 1,000 -> 1,030 (+3.0%)" in regressions(more_threads, counted, 2, gate="work")[0]


def test_report_refuses_to_overwrite_its_input(bench_results, tmp_path, capsys):
    results, _ = bench_results
    given = tmp_path / "results.json"
    given.write_text(json.dumps(results))
    before = given.read_bytes()
    assert main(["report", str(given), "-o", str(tmp_path)]) == 1
    assert "refusing to write" in capsys.readouterr().err and given.read_bytes() == before


def test_gate_on_the_command_line(bench_results, tmp_path, capsys):
    results, _ = bench_results
    current, doctored = tmp_path / "now.json", tmp_path / "old.json"
    current.write_text(json.dumps(results))
    doctored.write_text(json.dumps(_doctored(results, "decode_tok_s", 2.0)))
    assert main(["report", str(current), "-o", str(tmp_path / "r1"), "--baseline", str(current), "--max-regression", "5"]) == 0
    assert "regression gate passed" in capsys.readouterr().out
    assert main(["report", str(current), "-o", str(tmp_path / "r2"), "--baseline", str(doctored), "--max-regression", "5"]) == 1
    assert "odd_fp32: decode_tok_s median" in capsys.readouterr().err
    assert main(["report", str(current), "-o", str(tmp_path / "r3"), "--baseline", str(current)]) == 1
    assert "--baseline and --max-regression go together" in capsys.readouterr().err


def _fixed_row(name: str, scheme: str, decode: float, prefill: float, rss_mib: float, file_mb: float, gb_per_token: float) -> dict:
    def stat(v):
        return {"median": v, "min": 0.9 * v, "max": 1.1 * v, "cv": 0.05}

    return {
        "schema": SCHEMA, "name": name, "path": f"/x/{name}.pte", "file_bytes": int(file_mb * 1e6), "model": "llama3.2-1b",
        "scheme": scheme, "backend": "xnnpack", "max_seq_len": 256, "bytes_per_token": int(gb_per_token * 1e9),
        "prompt_len": 64, "gen_len": 128, "runs": 5, "warmup": 1, "threads": 2, "runner": "python", "target": "host",
        "samples": [],
        "stats": {"decode_tok_s": stat(decode), "prefill_tok_s": stat(prefill), "ttft_s": stat(64 / prefill),
                  "load_s": stat(1.0), "peak_rss_bytes": stat(rss_mib * 2**20), "program_rss_bytes": stat((rss_mib - 300) * 2**20)},
        "host": {"cpu": "Test CPU", "cpu_flags": ["avx2"], "cores": 2, "machine": "x86_64", "os": "Linux",
                 "python": "3.11", "versions": {"handheld": "0.1.0", "executorch": "1.5.1"}},
    }


FIXED = {
    "schema": SCHEMA, "memory_bandwidth_gbs": 33.0, "bandwidth_threads": 2,
    "rows": [
        _fixed_row("1b_fp32", "fp32", 4.0, 50.0, 7000, 5994.1, 5.0),
        _fixed_row("1b_bf16", "bf16", 5.0, 60.0, 3000, 2997.0, 2.5),
        _fixed_row("1b_8da4w", "8da4w", 16.0, 40.0, 1500, 1074.2, 0.811),
    ],
}


def test_report_renders_table_and_charts(tmp_path):
    results = copy.deepcopy(FIXED)
    evals = [{"scheme": "8da4w", "perplexity": 12.5}, {"name": "1b_bf16", "perplexity": 12.0}]
    report = write_report(results, tmp_path, evals=evals, notes=["random weights"])
    text = report.read_text()
    assert "Ratios are against **1b_bf16**, the fastest unquantized program." in text
    assert "- random weights" in text and "33.0 GB/s" in text and "Test CPU, 2 cores" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1b_8da4w "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "16.00 (14.40–17.60)"  # decode median (min–max)
    assert cells[11] == "12.500"  # perplexity attached by scheme
    assert cells[12] == "3.20x" and cells[14] == "0.50x"  # decode and RSS against bf16
    assert cells[16:] == ["0.811", "40.7", "39%"]  # GB/token, roofline tok/s, share of it
    assert "| 1b_bf16 (base) |" in text and "12.000" in text
    for chart in ("decode_tok_s", "prefill_tok_s", "ttft_s", "peak_rss_bytes", "file_bytes", "perplexity"):
        assert (tmp_path / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({chart}.png)" in text
    assert json.loads((tmp_path / "results.json").read_text())["rows"][2]["perplexity"] == 12.5


def test_report_baseline_choice_and_inputs(tmp_path):
    assert baseline_row(FIXED["rows"])["name"] == "1b_bf16"
    assert baseline_row(FIXED["rows"], "1b_fp32")["name"] == "1b_fp32"
    assert baseline_row(FIXED["rows"][2:]) is None
    fp16 = copy.deepcopy(FIXED["rows"][0]) | {"name": "1b_fp16", "scheme": "fp16"}
    fp16["stats"]["decode_tok_s"]["median"] = 1e6  # the fastest unquantized program is the baseline, fp16 too
    assert baseline_row(FIXED["rows"] + [fp16])["name"] == "1b_fp16"
    with pytest.raises(HandheldError, match="no program named 'x'"):
        baseline_row(FIXED["rows"], "x")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else", "rows": []}))
    with pytest.raises(HandheldError, match="is not a handheld bench result"):
        load_results([bad])
    good = tmp_path / "good.json"
    good.write_text(json.dumps(FIXED))
    assert len(load_results([good, good])["rows"]) == 6


def test_synthetic_prompt_is_deterministic_and_in_range():
    prompt = synthetic_prompt(50)
    assert prompt == synthetic_prompt(50) and len(prompt) == 50
    assert all(3 <= t < 250 for t in prompt)
    assert len(set(prompt)) > 10


def test_bench_json_never_overwrites_its_baseline(tmp_path, capsys):
    baseline = tmp_path / "old.json"
    baseline.write_text('{"rows": []}')
    code = main(["bench", str(tmp_path / "x.pte"), "--json", str(baseline), "--baseline", str(baseline),
                 "--max-regression", "5"])
    assert code == 1 and baseline.read_text() == '{"rows": []}'
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("handheld: error:")]
    assert len(lines) == 1 and "would overwrite or land inside the input" in lines[0]
