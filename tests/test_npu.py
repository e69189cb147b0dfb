"""NPU backends (qnn, mediatek): schemes simulated on the CPU against their float oracle, the artefact that
carries a calibrated program to the machine with the SDK, and the refusals when the SDK is not here.

Tiny odd shapes (head_dim 24, 2 KV heads for 4 query heads); tolerances are shares of the float logits'
spread, and orderings between schemes (more bits, less error)."""

from __future__ import annotations

import socket

import pytest
import torch

from conftest import BYTE_ARGS, ODD_ARGS, odd_state
from handheld.cli import main
from handheld.core.checkpoints import read_checkpoint
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer
from handheld.export.backends import get_backend
from handheld.export.npu import NpuOptions, load_quantized, npu_backend, quantize_checkpoint, quantize_model, save_quantized

SEQ = 24
SCHEMES = [("qnn", "16a4w"), ("qnn", "16a8w"), ("qnn", "8a8w"), ("mediatek", "a16w4"), ("mediatek", "a16w8"),
           ("mediatek", "a8w8")]
POS0 = torch.zeros(1, dtype=torch.long)


def odd_model(npu: bool = True) -> Transformer:
    model = Transformer(ODD_ARGS, max_seq_len=SEQ, npu=npu)
    model.load_state_dict(odd_state(), strict=False)
    return model.eval()


@pytest.fixture(scope="module")
def simulated():
    """Each scheme's converted graph on the odd model, calibrated on random ids: (program, relative error)."""
    gen = torch.Generator().manual_seed(0)
    calibration, test = torch.randint(0, ODD_ARGS.vocab_size, (4, SEQ), generator=gen), torch.randint(0, 300, (1, SEQ), generator=gen)
    with torch.no_grad():
        oracle = odd_model(npu=False)(test, POS0)  # the float model as handheld runs it on the CPU
    found = {}
    for backend, scheme in SCHEMES:
        npu = get_backend(backend).npu
        program = quantize_model(odd_model(), npu.schemes[scheme].quantizer(npu.default_chip), calibration)
        with torch.no_grad():
            out = program.module()(test, POS0)
        found[scheme] = program, float((out - oracle).abs().mean() / oracle.std())
    return found


def test_the_npu_variant_computes_what_the_cpu_model_does():
    tokens = torch.randint(0, ODD_ARGS.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        npu, cpu = odd_model()(tokens, POS0), odd_model(npu=False)(tokens, POS0)
    torch.testing.assert_close(npu, cpu, rtol=0, atol=1e-5 * float(cpu.abs().max()))


def test_each_scheme_stays_near_its_float_oracle(simulated):
    for scheme, (_, error) in simulated.items():
        assert 1e-4 < error < 0.25, f"{scheme}: mean error {error:.4f} of the logits' spread"
    for eight_bit in ("16a8w", "a16w8"):  # 8-bit weights with 16-bit activations: near float
        assert simulated[eight_bit][1] < 0.05


def test_more_bits_mean_less_error(simulated):
    err = {scheme: e for scheme, (_, e) in simulated.items()}
    assert err["16a8w"] < err["16a4w"] / 4 and err["a16w8"] < err["a16w4"] / 4  # weights: 8 bits against 4
    assert err["16a8w"] < err["8a8w"] and err["a16w8"] < err["a8w8"]  # activations: 16 bits against 8


def _dequantizers(program, name: str) -> list[torch.fx.Node]:
    return [n for n in program.graph.nodes if n.op == "call_function" and str(n.target).endswith(name)]


def test_16a4w_is_llama_recipe_block_32_with_its_8bit_exceptions(simulated):
    program = simulated["16a4w"][0]
    blocks = _dequantizers(program, "dequantize_affine.default")
    # 7 block linears per layer at 4 bits in blocks of 32, but the first layers' down projections (both here)
    assert len(blocks) == 7 * ODD_ARGS.n_layers - ODD_ARGS.n_layers
    assert all(list(n.args[1]) == [1, 32] and (n.args[5], n.args[6]) == (-7, 7) for n in blocks)
    per_channel = _dequantizers(program, "dequantize_per_channel.default")
    assert len(per_channel) == 1 + ODD_ARGS.n_layers  # classifier + those down projections, 8-bit per channel
    # The KV cache operand of every attention matmul is 8-bit.
    cache_reads = [n.args[1] for n in program.graph.nodes if n.target == torch.ops.aten.bmm.default]
    assert len(cache_reads) == 2 * ODD_ARGS.n_layers
    assert all(d.args[-1] == torch.uint8 for d in cache_reads), [d.args for d in cache_reads]


def test_mediatek_weight_grids_follow_neuropilot(simulated):
    for scheme, (low, high) in {"a16w4": (-8, 7), "a16w8": (-128, 127), "a8w8": (-128, 127)}.items():
        per_channel = _dequantizers(simulated[scheme][0], "dequantize_per_channel.default")
        assert per_channel and all((n.args[4], n.args[5]) == (low, high) for n in per_channel), scheme


def test_the_artefact_round_trips_with_its_metadata(byte_checkpoint, calib_text, tmp_path):
    calibration = torch.randint(0, BYTE_ARGS.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    quantized = quantize_checkpoint(byte_checkpoint, NpuOptions("qnn", "16a8w", seq_len=16), calibration, 1, [2],
                                    log=lambda _: None)
    save_quantized(quantized, tmp_path / "m.pt2")
    loaded = load_quantized(tmp_path / "m.pt2")
    assert loaded.options == NpuOptions("qnn", "16a8w", "SM8650", 16)
    assert (loaded.metadata.backend, loaded.metadata.scheme, loaded.metadata.max_seq_len) == ("qnn", "16a8w", 16)
    window = list(range(3, 14))  # shorter than the program: padded on the right, causal so nothing leaks back
    torch.testing.assert_close(loaded.logits(window), quantized.logits(window), rtol=0, atol=0)
    assert loaded.logits(window).shape == (len(window), BYTE_ARGS.vocab_size)


def test_the_npu_path_writes_its_program_by_the_one_writer(byte_checkpoint, calib_text, tmp_path, monkeypatch):
    """Everything but the vendor's compiler runs here: with a stand-in lowering that delegates nothing,
    `handheld export --backend qnn` from a `.pt2` writes a static .pte by the one writer, with the artefact's
    metadata and the operators it holds. (Not run: ExecuTorch's portable kernels do not take the undelegated
    per-channel weight quantization the vendor's compiler consumes.)"""
    import dataclasses

    import handheld.export.backends as backends
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from handheld.core.pte_metadata import ProgramMetadata
    from handheld.runtime_bindings.pte_file import read_pte_structure

    def no_delegate(module, inputs, chip, methods):
        return to_edge_transform_and_lower(torch.export.export(module, inputs), constant_methods=methods,
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))

    qnn = backends.BACKENDS["qnn"]
    stand_in = dataclasses.replace(qnn.npu, missing_sdk=lambda: None, lower=no_delegate)
    monkeypatch.setitem(backends.BACKENDS, "qnn", dataclasses.replace(qnn, npu=stand_in))
    artefact, pte = tmp_path / "m.pt2", tmp_path / "m.pte"
    assert main(["quantize", "--checkpoint", str(byte_checkpoint), "--backend", "qnn", "--scheme", "8a8w", "--calib",
                 str(calib_text), "--seq-len", "16", "--calib-sequences", "2", "-o", str(artefact)]) == 0
    assert main(["export", "--checkpoint", str(artefact), "--backend", "qnn", "-o", str(pte)]) == 0
    structure = read_pte_structure(pte)
    written = ProgramMetadata.from_constant_methods(structure.constant_methods, str(pte))
    quantized = load_quantized(artefact).metadata
    assert "forward" in structure.methods and structure.constant_methods["enable_dynamic_shape"] is False
    assert dataclasses.replace(written, op_counts={}) == dataclasses.replace(quantized, op_counts={})
    assert written.op_counts["portable"].get("quantized_decomposed.quantize_per_tensor", 0) > 0  # the 8-bit activations


def test_quantize_then_eval_from_the_command_line(byte_checkpoint, calib_text, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert main(["quantize", "--checkpoint", str(byte_checkpoint), "--backend", "mediatek", "--scheme", "a16w8",
                 "--calib", str(calib_text), "--calib-sequences", "2", "--seq-len", "32", "-o", str(out)]) == 0
    tokenizer = str(byte_checkpoint / "tokenizer.model")
    assert main(["eval", str(out), "--text", str(calib_text), "--tokenizer", tokenizer, "--max-tokens", "80",
                 "--context", "32", "--stride", "16", "--reference", str(byte_checkpoint)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "simulated, scheme mediatek a16w8" in line and "top-1 agreement" in line


@pytest.mark.parametrize("args, message", [
    (["--backend", "npu"], "unknown backend 'npu'; known backends: xnnpack, qnn, mediatek"),
    (["--backend", "qnn", "--scheme", "4w"], "unknown scheme '4w' for backend qnn; known: 16a4w, 16a8w, 8a8w"),
    (["--backend", "mediatek", "--scheme", "16a4w"], "known: a16w4, a16w8, a8w8"),
    (["--backend", "qnn", "--scheme", "16a4w", "--soc", "SM1"], "unknown --soc 'SM1' for backend qnn; known: SM8550"),
    (["--backend", "qnn"], "backend qnn needs --scheme, one of: 16a4w, 16a8w, 8a8w"),
    (["--backend", "qnn", "--scheme", "16a4w", "--group-size", "64"], "--group-size applies to xnnpack"),
    (["--backend", "qnn", "--scheme", "16a4w", "--kv-cache", "int8"], "--kv-cache int8 is for CPU programs"),
    (["--kv-cache", "int4"], "unknown --kv-cache 'int4'; known: fp32, int8"),
])
def test_bad_names_fail_listing_the_known_ones(byte_checkpoint, tmp_path, capsys, args, message):
    assert main(["export", "--checkpoint", str(byte_checkpoint), *args, "-o", str(tmp_path / "x.pte")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pte").exists()


def test_options_are_validated_once():
    with pytest.raises(HandheldError, match="at least 2"):
        NpuOptions("qnn", "16a8w", seq_len=1).resolve()
    with pytest.raises(HandheldError, match="takes eager schemes"):
        npu_backend("xnnpack")
    with pytest.raises(HandheldError, match="calibration must be sequences of 16 tokens"):
        quantize_checkpoint(None, NpuOptions("qnn", "16a8w", seq_len=16), torch.zeros(2, 8, dtype=torch.long), 1, [2])


def test_quantize_refuses_other_suffixes(byte_checkpoint, calib_text, tmp_path, capsys):
    base = ["quantize", "--checkpoint", str(byte_checkpoint), "--backend", "qnn", "--scheme", "8a8w", "--calib", str(calib_text)]
    assert main([*base, "-o", str(tmp_path / "m.pte")]) == 1
    assert "-o must end in .pt2" in capsys.readouterr().err


@pytest.fixture
def no_downloads(monkeypatch):
    """Any network connection or ExecuTorch SDK install fails the test; QNN_SDK_ROOT unset, as on a bare machine."""
    from executorch.backends.qualcomm.scripts import download_qnn_sdk
    from executorch.backends.qualcomm.utils import qnn_sdk_setup

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("a download was attempted")

    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    monkeypatch.setattr(qnn_sdk_setup, "_sdk_ready", False)  # as in a fresh process
    monkeypatch.setattr(download_qnn_sdk, "install_qnn_sdk", refuse)
    monkeypatch.setattr(download_qnn_sdk, "_download_archive", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_building_the_qnn_quantizer_never_downloads_the_sdk(no_downloads):
    import os

    quantizer = get_backend("qnn").npu.schemes["16a4w"].quantizer("SM8750")
    assert quantizer is not None and not no_downloads
    assert "QNN_SDK_ROOT" not in os.environ  # left as it was found


@pytest.mark.parametrize("backend, scheme, names", [
    ("qnn", "16a4w", ("QAIRT (QNN) SDK 2.37.0.250724", "$QNN_SDK_ROOT is not set")),
    ("mediatek", "a16w4", ("mtk_converter and mtk_neuron", "Python 3.10")),
])
def test_export_without_the_sdk_fails_first_with_one_line(byte_checkpoint, calib_text, tmp_path, capsys, monkeypatch,
                                                          no_downloads, backend, scheme, names):
    import handheld.export.npu as npu

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the SDK check")

    monkeypatch.setattr(npu, "quantize_checkpoint", no_work)
    monkeypatch.setattr(npu, "read_checkpoint", no_work)
    out = tmp_path / "m.pte"
    code = main(["export", "--checkpoint", str(byte_checkpoint), "--backend", backend, "--scheme", scheme,
                 "--calib", str(calib_text), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert all(name in err for name in names) and f"handheld eval --backend {backend}" in err
    assert not out.exists() and not list(tmp_path.iterdir()) and not no_downloads


def test_a_wrong_sdk_path_is_named(monkeypatch, tmp_path):
    from handheld.export.npu import require_sdk

    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path))
    with pytest.raises(HandheldError, match=f"QNN_SDK_ROOT={tmp_path} has no lib/x86_64-linux-clang/libQnnHtp.so"):
        require_sdk(get_backend("qnn"))


def test_spinquant_can_write_rotated_float_weights(byte_checkpoint, calib_text, tmp_path):
    from handheld.core.checkpoints import load_model
    from handheld.training.distributed import Group
    from handheld.training.spinquant import SpinQuantOptions, run_spinquant

    out = tmp_path / "float"
    run_spinquant(SpinQuantOptions(checkpoint=byte_checkpoint, calib=calib_text, output=out, steps=1, seq_len=32,
                                   samples=4, batch_size=2, weight_quant="float"), Group(), progress=False)
    rotated = read_checkpoint(out)
    assert rotated.kind == "float" and not rotated.tied and (out / "tokenizer.model").is_file()
    tokens = torch.randint(0, BYTE_ARGS.vocab_size, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before, after = load_model(byte_checkpoint).forward_batch(tokens), load_model(out).forward_batch(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4 * float(before.std()))  # same function
    original = read_checkpoint(byte_checkpoint).state["layers.0.attention.wq.weight"]
    assert not torch.allclose(rotated.state["layers.0.attention.wq.weight"], original)  # but rotated weights


def test_inspect_says_which_delegate_runs_what(odd_fp32_pte, capsys):
    from conftest import delegated_linears
    from handheld.cli.inspect import describe_pte

    info = describe_pte(odd_fp32_pte)
    assert info["delegates"] == {"XnnpackBackend": info["partitions"]["XnnpackBackend"]}  # read from the file itself
    assert info["ops_by_delegate"]["XnnpackBackend"]["linear"] == delegated_linears(ODD_ARGS.n_layers)
    assert main(["inspect", str(odd_fp32_pte)]) == 0
    text = capsys.readouterr().out
    assert "delegates   XnnpackBackend x" in text and "run by XnnpackBackend:" in text


@pytest.mark.parametrize("flags", [["--scheme", "16a8w"], ["--soc", "SM8750"], ["--max-seq-len", "64"]])
def test_export_of_a_quantized_pt2_refuses_flags_it_would_ignore(tmp_path, capsys, flags):
    """A .pt2 carries its scheme, chip and length: a flag that would be silently ignored is refused instead."""
    source = tmp_path / "m.pt2"
    source.write_bytes(b"not read: the flags are checked first")
    code = main(["export", "--checkpoint", str(source), "--backend", "qnn", *flags, "-o", str(tmp_path / "m.pte")])
    err = capsys.readouterr().err
    assert code == 1 and f"{flags[0]} cannot change them" in err and not (tmp_path / "m.pte").exists()
