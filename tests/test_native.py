"""The native C++ runner: built against the executorch wheel for x86-64 and (cross) aarch64, it computes
what ExecuTorch's Python runtime computes, for every scheme, and says clearly what it cannot run.

The aarch64 build runs under Debian's qemu user-mode emulation (`.ci/run` installs it with the cross compiler).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import PARITY_SHARE_OF_SPREAD
from handheld.measure.bench import BenchConfig, run_bench
from handheld.core.errors import HandheldError
from handheld.measure.gate import regressions
from handheld.runtime_bindings.native import build, run, targets
from handheld.decoding.generation import synthetic_prompt
from handheld.runtime_bindings.python.program import PteProgram
from handheld.cli.demo_job import DEMO_SCHEMES

PROMPT = synthetic_prompt(12)
GEN_LEN = 6
# Same kernels on the same machine; thread counts may differ (the Python runtime uses every core).
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def host_runner():
    return build.build_runner("host", log=lambda _: None)


@pytest.fixture(scope="module")
def aarch64_runner():
    return build.build_runner("qemu-aarch64", log=lambda _: None)


def python_runtime_steps(pte, prompt, gen_len):
    """Greedy tokens and the logits each was chosen from, through ExecuTorch's Python runtime."""
    program = PteProgram(pte)
    rows = [program.forward(prompt, 0)[-1]]
    tokens = [int(rows[-1].argmax())]
    for position in range(len(prompt), len(prompt) + gen_len - 1):
        rows.append(program.forward([tokens[-1]], position)[-1])
        tokens.append(int(rows[-1].argmax()))
    return tokens, torch.stack(rows).float().numpy()


@pytest.mark.parametrize("scheme", DEMO_SCHEMES)
def test_native_runner_matches_the_python_runtime(scheme, demo_report, host_runner, tmp_path):
    out, _ = demo_report
    pte = out / f"{scheme}.pte"
    logits_file = tmp_path / "logits.f32"
    result = run.run_native(host_runner, "host", pte, PROMPT, GEN_LEN, threads=1, logits_path=logits_file)
    tokens, logits = python_runtime_steps(pte, PROMPT, GEN_LEN)
    assert result["tokens"] == tokens
    native_logits = np.fromfile(logits_file, dtype=np.float32).reshape(GEN_LEN, -1)
    np.testing.assert_allclose(native_logits, logits, atol=LOGITS_ATOL, rtol=0)
    # The runner read the program's own metadata.
    assert result["metadata"]["handheld_scheme"] == PteProgram(pte).metadata.scheme
    assert result["metadata"]["get_max_seq_len"] == PteProgram(pte).max_seq_len
    assert result["peak_rss_bytes"] > result["rss_before_load_bytes"] > 0 and result["decode_tok_s"] > 0


def test_native_runner_reads_fp16_logits(odd_fp16_pte, host_runner, tmp_path):
    """fp16 programs return fp16 logits; the runner widens them exactly as torch does."""
    prompt = [3, 17, 42, 250, 9]
    logits_file = tmp_path / "logits.f32"
    result = run.run_native(host_runner, "host", odd_fp16_pte, prompt, GEN_LEN, threads=1, logits_path=logits_file)
    tokens, logits = python_runtime_steps(odd_fp16_pte, prompt, GEN_LEN)
    assert result["tokens"] == tokens
    native_logits = np.fromfile(logits_file, dtype=np.float32).reshape(GEN_LEN, -1)
    np.testing.assert_array_equal(native_logits, logits)


@pytest.mark.parametrize("scheme", DEMO_SCHEMES)
def test_aarch64_runner_under_qemu_produces_the_x86_tokens(scheme, demo_report, host_runner, aarch64_runner):
    out, _ = demo_report
    pte = out / f"{scheme}.pte"
    on_x86 = run.run_native(host_runner, "host", pte, PROMPT, 16, threads=1)
    on_arm = run.run_native(aarch64_runner, "qemu-aarch64", pte, PROMPT, 16, threads=1)
    assert on_arm["tokens"] == on_x86["tokens"]
    assert "aarch64" in targets.runner_command(aarch64_runner, "qemu-aarch64")[0]


def test_android_bundle_under_qemu_without_a_sysroot_gives_the_x86_tokens_and_logits(demo_report, host_runner,
                                                                                     aarch64_runner, tmp_path):
    """The wheel ships shared libraries only, so the Android runner is a bundle, not a static binary: the runner,
    every library it loads and glibc's loader. Under qemu with no sysroot (-L), nothing but the bundle can serve it."""
    bundle = build.build_runner("android-arm64", log=lambda _: None)
    assert build.missing_libraries(bundle.parent) == []
    command = targets.runner_command(bundle, "android-arm64")
    assert "-L" not in command and command[3] == str(bundle.parent / "lib" / "ld-linux-aarch64.so.1")
    out, _ = demo_report
    pte = out / "8da4w.pte"
    on_x86 = run.run_native(host_runner, "host", pte, PROMPT, 16, threads=1, logits_path=tmp_path / "x86.f32")
    on_android = run.run_native(bundle, "android-arm64", pte, PROMPT, 16, threads=2, logits_path=tmp_path / "arm.f32")
    assert on_android["tokens"] == on_x86["tokens"]
    # Other kernels (NEON dot products, 2 threads): the same arithmetic up to rounding, but a 1-ulp difference can
    # send one 8-bit dynamic activation to the neighbouring level, which moves later logits by a few hundredths
    # (seen: 3e-6 apart with torchao's scales; 0.056 at 2 of 16 steps with the weighted rule's). So: within the
    # house's parity share of the logits' spread, the bound every .pte-vs-oracle check uses.
    arm, x86 = (np.fromfile(tmp_path / name, dtype=np.float32) for name in ("arm.f32", "x86.f32"))
    np.testing.assert_allclose(arm, x86, atol=PARITY_SHARE_OF_SPREAD * float(x86.std()), rtol=0)


def test_aarch64_binary_is_an_arm_executable(aarch64_runner):
    header = aarch64_runner.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_bench_native_on_qemu_labels_emulation_and_counts_work(demo_report, tmp_path):
    out, _ = demo_report
    config = BenchConfig(prompt_len=8, gen_len=8, runs=1, warmup=0, threads=1, runner="native",
                         target="qemu-aarch64", count_work=True)
    results = run_bench([out / "8da4w.pte"], config, progress=lambda _: None)
    (row,) = results["rows"]
    assert row["emulated"] and row["runner"] == "native" and row["target"] == "qemu-aarch64"
    assert row["scheme"] == "8da4w" and row["samples"][0]["generated_tokens"] == 8
    assert row["work"]["metric"] == "translated blocks executed (qemu)" and row["work"]["value"] > 10**6
    # The work count is what the gate can trust: a doctored baseline with less work fails it.
    baseline = {"rows": [dict(row, work=dict(row["work"], value=row["work"]["value"] // 2))]}
    (failure,) = regressions(results, baseline, 50)
    assert failure.startswith("8da4w: translated blocks executed (qemu)") and "+100.0%" in failure


def test_host_work_count_repeats(demo_report, host_runner):
    out, _ = demo_report
    counts = [run.count_work(host_runner, "host", out / "8da4w.pte", PROMPT, 4)["value"] for _ in range(2)]
    assert counts[0] > 10**6
    # Seen: 3e-6 and 1.5e-4 between two runs (allocation addresses move a few code paths); the gate allows 2%.
    assert abs(counts[0] - counts[1]) / counts[0] < 1e-3


@pytest.fixture(scope="module")
def custom_op_pte(tmp_path_factory):
    """A program needing `llama::fast_hadamard_transform`, a kernel the wheel's C++ runtime does not have."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers the op for export)
    from executorch.exir import EdgeCompileConfig, to_edge

    class NeedsCustomOp(torch.nn.Module):
        def forward(self, tokens, input_pos):
            x = tokens.float().unsqueeze(-1).expand(1, 4, 8).contiguous()
            return torch.ops.llama.fast_hadamard_transform(x)

    example = (torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    exported = torch.export.export(NeedsCustomOp(), example)
    edge = to_edge(exported, constant_methods={"get_max_seq_len": 8, "get_vocab_size": 8},
                   compile_config=EdgeCompileConfig(_check_ir_validity=False))
    path = tmp_path_factory.mktemp("custom") / "custom_op.pte"
    path.write_bytes(edge.to_executorch().buffer)
    return path


def test_missing_operator_is_named(custom_op_pte, host_runner):
    with pytest.raises(HandheldError, match=r"needs operators the native runner does not have: llama::fast_hadamard_transform"):
        run.run_native(host_runner, "host", custom_op_pte, [1, 2, 3, 4], 1, threads=1)


def test_not_a_program_fails_cleanly(tmp_path, host_runner):
    bogus = tmp_path / "bogus.pte"
    bogus.write_bytes(b"not a program at all")
    with pytest.raises(HandheldError, match="the native runner failed on .*bogus.pte"):
        run.run_native(host_runner, "host", bogus, [1, 2], 1, threads=1)


def test_missing_tools_name_their_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDHELD_CACHE", str(tmp_path))
    fake = targets.Target("qemu-aarch64", "no-such-g++", "g++-aarch64-linux-gnu", emulator="no-such-qemu",
                         emulator_package="qemu-user-static")
    monkeypatch.setitem(targets.TARGETS, "qemu-aarch64", fake)
    with pytest.raises(HandheldError, match=r"no-such-g\+\+ not found: install Debian's g\+\+-aarch64-linux-gnu"):
        build.build_runner("qemu-aarch64")
    with pytest.raises(HandheldError, match="no-such-qemu not found: install Debian's qemu-user-static"):
        targets.runner_command(tmp_path / "x", "qemu-aarch64")
    with pytest.raises(HandheldError, match="unknown target 'riscv'; known targets: host, qemu-aarch64"):
        targets.get_target("riscv")


def test_build_runner_command_prints_the_binary(host_runner, capsys):
    from handheld.cli import main

    assert main(["build-runner", "--target", "host"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(host_runner) and "--prompt" in captured.err


# SmolLM2's and Llama 3.2 1B's query groups; the int8 cache on one of them.
@pytest.mark.parametrize("heads, kv_heads, kv_cache", [(9, 3, "fp32"), (8, 2, "fp32"), (9, 3, "int8")])
@torch.no_grad()
def test_llm_op_kernels_follow_eager_past_one_chunk_of_slots(heads, kv_heads, kv_cache, host_runner, tmp_path):
    """handheld's own update_cache / custom_sdpa / custom_quantized_sdpa kernels, on the paths the demo's short
    prompts do not reach: head size 64 with the group's heads side by side, and decode over several chunks of slots
    merged by their peaks (prompt 300, chunks of 128), against eager, to float32 rounding of the logits. fp32:
    against the indexed cache. int8: against eager through ExecuTorch's own ops (which multiply the integers where
    handheld's kernel reads the rows back to float: the same numbers summed in another order, 1e-4)."""
    from handheld.core.llama.config import ModelArgs
    from handheld.core.llama.model import Transformer
    from handheld.export.backends import get_backend
    from handheld.export.metadata import program_metadata
    from handheld.export.program import lower, register_llm_ops, write_program
    from handheld.quant.schemes import get_scheme

    torch.manual_seed(0)
    args = ModelArgs(dim=64 * heads, n_layers=1, n_heads=heads, n_kv_heads=kv_heads, vocab_size=300)
    slots, prompt = 320, [(i * 37) % 290 + 5 for i in range(300)]
    eager = Transformer(args, max_seq_len=slots).eval()
    register_llm_ops()
    if kv_cache == "int8":
        import executorch.kernels.quantized  # noqa: F401  the per-token rounding ops' out variants

        eager.use_llm_kv_ops(kv_cache)
    exported = Transformer(args, max_seq_len=slots, full_logits=False).eval()
    exported.load_state_dict(eager.state_dict())
    lowered = lower(exported.use_llm_kv_ops(kv_cache), get_scheme("fp32"), get_backend("xnnpack"), slots,
                    log=lambda _: None)
    meta = program_metadata(args, max_seq_len=slots, bos_id=1, eos_ids=[2], scheme="fp32", backend="xnnpack",
                            full_logits=False, group_size=None, weight_bytes={}, llm_kv_ops=True, kv_cache=kv_cache)
    pte = tmp_path / "grouped.pte"
    write_program(lowered.program, meta, pte, log=lambda _: None)
    result = run.run_native(host_runner, "host", pte, prompt, 4, threads=2, logits_path=tmp_path / "logits.f32")
    native = np.fromfile(tmp_path / "logits.f32", dtype=np.float32).reshape(4, -1)
    rows = [eager(torch.tensor([prompt]), torch.tensor([0]))[0, -1]]
    for position, token in zip(range(len(prompt), len(prompt) + 3), result["tokens"]):
        rows.append(eager(torch.tensor([[token]]), torch.tensor([position]))[0, -1])
    expected = torch.stack(rows).numpy()
    tolerance = 1e-5 if kv_cache == "fp32" else 1e-4
    np.testing.assert_allclose(native, expected, atol=tolerance * float(np.abs(expected).max()), rtol=0)


def test_eval_on_the_aarch64_target_agrees_with_the_host(demo_report, capsys):
    """`handheld eval X.pte --target qemu-aarch64`: perplexity through the aarch64 runner and its Arm kernels, reported
    beside the host's number for the same windows. Arm's and x86's XNNPACK kernels round differently (per-token
    8-bit activations, accumulation order): measured 0.16% apart here on the proxy's 8da4w program, where 8da4w
    itself costs nothing measurable over fp32. A kernel that computes something else (a wrong scale, a skipped
    group) moves perplexity by whole factors; the check allows 1%."""
    import json

    from handheld.cli import main
    from handheld.core.fetch.catalog import proxy_dir

    out, _ = demo_report
    window = ["--text", str(proxy_dir() / "test.txt"), "--tokenizer", str(proxy_dir() / "tokenizer.model"),
              "--max-tokens", "160", "--context", "64", "--stride", "32", "--json"]
    assert main(["eval", str(out / "8da4w.pte"), *window, "--target", "qemu-aarch64"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["target"] == "qemu-aarch64" and record["mode"] == ".pte on qemu-aarch64"
    assert record["tokens_scored"] == 159 and 1 < record["perplexity"] < 300  # the proxy's scale, not noise
    assert abs(record["difference_from_host_pct"]) < 1.0, record
    assert record["difference_from_host_pct"] == pytest.approx(100 * (record["perplexity"] / record["host_perplexity"] - 1))


@pytest.fixture(scope="module")
def smollm2_8da4w_pte(tmp_path_factory):
    """SmolLM2-135M-Instruct's default 8da4w program with every position's logits, cache of 64 (what eval scores)."""
    from handheld import api

    out = tmp_path_factory.mktemp("smollm2") / "8da4w.pte"
    return api.export(api.fetch(), out, scheme="8da4w", max_seq_len=64, full_logits=True).path


# Part of CI: 3:03 on an Intel Xeon VM (the export 2:23, scoring under qemu 39 s), ~4.5 min on the AMD VM; the
# whole suite with it stays inside CI's 25 minutes (README, "Tests and CI"). HANDHELD_SKIP_ARM_SMOLLM2=1 leaves it
# out on a slower machine.
@pytest.mark.skipif(bool(os.environ.get("HANDHELD_SKIP_ARM_SMOLLM2")), reason="HANDHELD_SKIP_ARM_SMOLLM2 is set")
def test_smollm2_eval_on_the_aarch64_target_agrees_with_the_host(smollm2_8da4w_pte, capsys):
    """The real model's 8da4w program scored through the aarch64 runner under qemu, beside ExecuTorch's Python
    runtime here on the same windows. Kernel builds round SmolLM2's outlier-heavy 8-bit activations differently:
    measured on these 95 positions Arm -5.4% from the Python runtime (the same on qemu's cortex-a57, -a76,
    neoverse-n1 and max CPUs: NEON, dot-product and i8mm kernels alike); on 511 positions Arm +1.3% and the x86
    native runner +1.9%. 8da4w itself costs +24.5% over float on these 95 (47.9 against 38.5, eager); a kernel
    computing something else (a wrong scale, a skipped group) moves perplexity by whole factors. The check: the
    target within half of what the scheme itself costs here, that cost measured in the same test."""
    import json

    from handheld import api
    from handheld.cli import main
    from handheld.core.fetch.catalog import fetch, proxy_dir

    smol, text = fetch("smollm2-135m-instruct"), proxy_dir() / "test.txt"
    window = dict(context=64, stride=32, max_tokens=96)
    scheme_cost_pct = 100 * (api.evaluate(smol, text, tokenizer=smol, scheme="8da4w", **window).perplexity
                             / api.evaluate(smol, text, tokenizer=smol, **window).perplexity - 1)
    flags = ["--text", str(text), "--tokenizer", str(smol), "--max-tokens", "96", "--context", "64", "--stride", "32"]
    assert main(["eval", str(smollm2_8da4w_pte), *flags, "--json", "--target", "qemu-aarch64"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tokens_scored"] == 95 and 2 < record["perplexity"] < 200  # a language model's scale, not noise
    assert scheme_cost_pct > 10, scheme_cost_pct  # the yardstick itself is what was measured
    assert abs(record["difference_from_host_pct"]) < scheme_cost_pct / 2, (record, scheme_cost_pct)
