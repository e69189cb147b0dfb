"""The shipped proxy model is a real yardstick, and `handheld demo` (the README's main job) runs end to end."""

import json

import pytest

from handheld.core.checkpoints import TOKENIZER, load_model, read_checkpoint
from handheld.cli import main
from handheld.cli.demo_job import CONTEXT, DEMO_MODELS, DEMO_SCHEMES, STRIDE, build_programs
from handheld.core.fetch.catalog import proxy_dir
from handheld.measure.quality import eager_logits_fn, evaluate
from handheld.quant.schemes import apply_scheme
from handheld.core.tokenizers.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def card():
    return json.loads((proxy_dir() / "card.json").read_text())


@pytest.fixture(scope="module")
def test_ids():
    return load_tokenizer(proxy_dir() / TOKENIZER).encode((proxy_dir() / "test.txt").read_text(encoding="utf-8"))


def test_shipped_model_has_the_llama32_architecture(card):
    checkpoint = read_checkpoint(proxy_dir())
    args = checkpoint.args
    assert checkpoint.format == "meta" and checkpoint.tied
    assert args.kv_heads < args.n_heads  # GQA
    assert all(n % 32 == 0 for n in (args.dim, args.ffn_hidden_dim, args.n_heads * args.attn_head_dim))
    assert sum(t.numel() for t in checkpoint.state.values()) == card["parameters"]
    assert (proxy_dir() / "consolidated.00.pth").stat().st_size < 25 * 2**20
    assert load_tokenizer(proxy_dir() / TOKENIZER).vocab_size == args.vocab_size


def test_shipped_model_reaches_its_recorded_perplexity(card, test_ids):
    result = evaluate(eager_logits_fn(load_model(proxy_dir(), max_seq_len=CONTEXT)), test_ids, CONTEXT, STRIDE, progress=False)
    assert result.tokens_scored == card["test"]["tokens_scored"]
    assert result.perplexity == pytest.approx(card["test"]["perplexity"], rel=1e-3)
    # It has learned something: far below the 4,352-way uniform guess.
    assert result.perplexity < 200


def test_rtn_8da4w_is_measurably_worse_than_float(test_ids):
    ids = test_ids[:6000]
    float_model = load_model(proxy_dir(), max_seq_len=CONTEXT)
    flt = evaluate(eager_logits_fn(float_model), ids, CONTEXT, STRIDE, progress=False)
    quant = apply_scheme(load_model(proxy_dir(), max_seq_len=CONTEXT), "8da4w")
    q = evaluate(eager_logits_fn(quant), ids, CONTEXT, STRIDE, reference_fn=eager_logits_fn(float_model), progress=False)
    # A yardstick must see 4-bit RTN's damage: worse perplexity, measurable disagreement.
    assert q.perplexity > flt.perplexity * 1.001
    assert 0.5 < q.top1_agreement < 0.99 and q.mean_kl > 1e-3


def test_demo_report_compares_every_scheme(demo_report, card):
    out, report = demo_report
    rows = {row["scheme"]: row for row in report["schemes"]}
    assert list(rows) == list(DEMO_SCHEMES)
    for row in rows.values():
        for key in ("scheme", "perplexity", "file_bytes", "decode_tok_s", "ttft_s", "peak_rss_bytes", "top1_agreement", "mean_kl"):
            assert row[key] is not None, key
    # The fp32 program scores like the eager float model (through ExecuTorch, on the same text).
    assert rows["fp32"]["perplexity"] == pytest.approx(card["test"]["perplexity"], rel=0.005)
    assert rows["8da4w"]["perplexity"] > rows["fp32"]["perplexity"]
    assert rows["8da4w"]["file_bytes"] < rows["bf16"]["file_bytes"] < rows["fp32"]["file_bytes"]
    # The recipes ran briefly: their programs are 8da4w-sized and their models still work. SpinQuant
    # keeps the float function; QAT+LoRA fine-tunes, so its predictions may move further from the float's.
    for recipe, min_agreement in (("spinquant", 0.9), ("qat-lora", 0.7)):
        assert rows[recipe]["file_bytes"] < 1.5 * rows["8da4w"]["file_bytes"]
        assert rows[recipe]["perplexity"] < 1.1 * rows["fp32"]["perplexity"]
        assert rows[recipe]["top1_agreement"] > min_agreement
    text = (out / "report.md").read_text()
    assert "| 8da4w |" in text and "| qat-lora |" in text
    assert "![Decode rate](decode_tok_s.png)" in text and (out / "decode_tok_s.png").is_file()
    # What a reader sees first: the short table and the quality-against-size chart, before the full table.
    assert text.index("## At a glance") < text.index("## All figures")
    assert "exported with --full-logits" in text and "prefill tok/s and TTFT are lower" in text  # said, not hidden
    assert (out / "quality_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert report["model"] == "proxy" and all(isinstance(row["answers"], dict) for row in rows.values())


def test_demo_rerun_reuses_the_built_programs(demo_report):
    out, _ = demo_report
    stamps = {p.name: p.stat().st_mtime_ns for p in [*out.glob("*.pte"), *out.glob("*-checkpoint/*")]}
    # The building half of run_demo (the measuring half is what demo_report already checked).
    build_programs(DEMO_MODELS["proxy"], proxy_dir(), out, log=lambda _: None)
    assert {p.name: p.stat().st_mtime_ns for p in [*out.glob("*.pte"), *out.glob("*-checkpoint/*")]} == stamps


def test_eval_cli_checkpoint_and_pte_agree(demo_report, capsys):
    out, _ = demo_report
    common = ["--text", str(proxy_dir() / "test.txt"), "--tokenizer", str(proxy_dir() / TOKENIZER), "--max-tokens", "3000", "--json"]
    assert main(["eval", str(proxy_dir()), *common]) == 0
    eager = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out / "fp32.pte"), *common, "--reference", str(proxy_dir())]) == 0
    on_pte = json.loads(capsys.readouterr().out)
    assert on_pte["tokens_scored"] == eager["tokens_scored"]
    assert abs(on_pte["perplexity"] / eager["perplexity"] - 1) < 0.005
    assert on_pte["top1_agreement"] > 0.99
