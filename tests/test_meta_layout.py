"""handheld's reader and writer against Meta's published pre-quantized layouts (tests/golden/): the 1B
listing of SpinQuant_INT4_EO8 and QLORA_INT4_EO8 (params.json, tensor names, dtypes, shapes, order), and
ExecuTorch's own `export_llm` reading what handheld writes and agreeing with handheld's `.pte`."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handheld.core.checkpoints import random_state, read_checkpoint
from handheld.core.checkpoints.meta import write_meta
from handheld.core.checkpoints.prequantized import executorch_loader_notes, expected_layout
from handheld.core.llama.config import META_SCHEME, LoraArgs, ModelArgs, QuantizationArgs
from handheld.core.errors import HandheldError
from handheld.quant.prequantized import quantized_model, write_prequantized

GOLDEN = json.loads((Path(__file__).parent / "golden" / "meta_prequantized_llama3_2_1b.json").read_text())
RELEASES = ("SpinQuant_INT4_EO8", "QLORA_INT4_EO8")
DTYPES = {"int8": torch.int8, "float32": torch.float32, "bfloat16": torch.bfloat16}
# What handheld writes for each kind of `expected_layout`: the published dtypes (norms: float32).
WRITTEN = {"int8": torch.int8, "scales": torch.float32, "adaptor": torch.bfloat16, "float": torch.float32}
# A 2-layer model ExecuTorch's pre-quantized path takes: FFN width 256 (a power of two, for the Hadamard),
# group 32 divides every input width, only Meta's params keys (its ModelArgs rejects handheld's extensions).
TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=128, use_scaled_rope=True)
LAYOUTS = {"spinquant": dataclasses.replace(TINY, quantization_args=QuantizationArgs(32, spinquant=True)),
           "qlora": dataclasses.replace(TINY, quantization_args=QuantizationArgs(32), lora_args=LoraArgs(4, 2.0))}
PROMPT = [44, 7, 123, 299, 5, 60, 61, 62]
MAX_SEQ_LEN = 32


def published_params(release: str) -> dict:
    return {**GOLDEN["params"]["common"], **GOLDEN["params"][release]}


def published_listing(release: str, n_layers: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The golden listing expanded to every layer, in the published order (QLoRA: each linear's adapters
    right after its scales)."""
    adapters = {}
    for name, dtype, shape in GOLDEN["lora_tensors"] if release.startswith("QLORA") else []:
        adapters.setdefault(name.rsplit(".adaptor.", 1)[0], []).append((name, dtype, shape))
    rows = []
    for row in GOLDEN["tensors"]:
        rows += [row] + adapters.get(row[0].removesuffix(".scales"), []) if row[0].endswith(".scales") else [row]
    listing = {name: (dtype, tuple(shape)) for name, dtype, shape in rows if not name.startswith("layers.")}
    for i in range(n_layers):
        for name, dtype, shape in rows:
            if name.startswith("layers.0."):
                listing[name.replace("layers.0.", f"layers.{i}.")] = (dtype, tuple(shape))
    return listing


def _kind_matches(kind: str, dtype: str) -> bool:
    return {"int8": "int8", "scales": "float32", "adaptor": "bfloat16", "float": "float"}[kind] == dtype


@pytest.mark.parametrize("release", RELEASES)
def test_layout_is_the_published_1b_listing(release):
    args = ModelArgs.from_dict(published_params(release), source=release)
    layout = expected_layout(args)
    listing = published_listing(release, args.n_layers)
    assert list(layout) == list(listing)  # same names, in the published order (a float tensor first)
    for name, (shape, kind) in layout.items():
        dtype, published_shape = listing[name]
        assert shape == published_shape and _kind_matches(kind, dtype), (name, shape, kind, listing[name])


@pytest.mark.parametrize("release, kind", [("SpinQuant_INT4_EO8", "spinquant"), ("QLORA_INT4_EO8", "qat-lora")])
def test_published_params_are_read_as_their_release_and_written_back_unchanged(release, kind, tmp_path):
    raw = published_params(release)
    args = ModelArgs.from_dict(raw, source=release)
    assert args.quantization_args.spinquant == (kind == "spinquant")
    assert args.lora_args == (LoraArgs(16, 2.0) if kind == "qat-lora" else None)
    written = args.to_dict()
    stated = {"spinquant": True} if kind == "spinquant" else {}  # handheld states the rotation Meta's file implies
    assert written["quantization_args"] == {**raw["quantization_args"], **stated}
    assert written.get("lora_args") == raw.get("lora_args")
    assert ModelArgs.from_dict(written) == args


def test_handheld_own_8da4w_output_is_not_read_as_spinquant():
    args = dataclasses.replace(TINY, quantization_args=QuantizationArgs(32))
    assert args.to_dict()["quantization_args"] == {"group_size": 32, "spinquant": False}
    assert not ModelArgs.from_dict(args.to_dict()).quantization_args.spinquant


def _handheld_model(args: ModelArgs):
    """What `handheld spinquant` / `handheld qat` hand to the writer: torchao's 8da4w model, online R4 or
    adapters (random, so they matter), from random float weights."""
    state = random_state(TINY, seed=3, dtype=torch.float32)
    state["output.weight"] = torch.randn(state["tok_embeddings.weight"].shape, generator=torch.Generator().manual_seed(4)) * 0.02
    model = quantized_model(args, state, MAX_SEQ_LEN, full_logits=False)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adaptor." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


@pytest.fixture(scope="module")
def handheld_outputs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, args in LAYOUTS.items():
        out[name] = tmp_path_factory.mktemp(name)
        write_prequantized(out[name], args, _handheld_model(args))
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_writer_writes_the_published_names_dtypes_shapes_and_order(layout, handheld_outputs):
    args = LAYOUTS[layout]
    state = torch.load(handheld_outputs[layout] / "consolidated.00.pth", weights_only=True)
    layout_spec = expected_layout(args)
    assert list(state) == list(layout_spec)
    assert next(iter(state.values())).is_floating_point()  # ExecuTorch takes the checkpoint dtype from it
    for name, (shape, kind) in layout_spec.items():
        assert (tuple(state[name].shape), state[name].dtype) == (shape, WRITTEN[kind]), name
    params = json.loads((handheld_outputs[layout] / "params.json").read_text())
    published = GOLDEN["params"]["QLORA_INT4_EO8" if layout == "qlora" else "SpinQuant_INT4_EO8"]
    if layout == "qlora":
        assert params["quantization_args"] == published["quantization_args"]
        assert params["lora_args"] == {"rank": 4, "scale": 2.0}
    else:  # handheld states the rotation; Meta's file leaves it implied
        assert params["quantization_args"] == {**published["quantization_args"], "spinquant": True}


def _published_form_state(args: ModelArgs, per_row_scales_2d: bool = True) -> dict[str, torch.Tensor]:
    """A state dict following the published rules exactly: int8 values, fp32 scales, bf16 norms/adapters."""
    gen = torch.Generator().manual_seed(9)
    state = {}
    for name, (shape, kind) in expected_layout(args).items():
        if kind == "int8":
            state[name] = torch.randint(-8, 8, shape, generator=gen, dtype=torch.int8)
        elif kind == "scales":
            per_row = name.split(".")[0] in ("tok_embeddings", "output")
            state[name] = torch.rand(shape if per_row_scales_2d or not per_row else shape[:1], generator=gen) * 0.01 + 0.001
        else:
            state[name] = (torch.randn(shape, generator=gen) * 0.05 + (1 if kind == "float" else 0)).to(torch.bfloat16)
    return state


@pytest.mark.parametrize("release, kind", [("SpinQuant_INT4_EO8", "spinquant"), ("QLORA_INT4_EO8", "qat-lora")])
def test_reader_accepts_the_published_layout(release, kind, tmp_path):
    """The published params.json (its quantization_args and lora_args exactly) on the tiny shape."""
    raw = {**TINY.to_dict(), **GOLDEN["params"][release]}
    if "lora_args" in raw:
        raw["lora_args"] = {"rank": 4, "scale": 2.0}
    args = ModelArgs.from_dict(raw)
    write_meta(tmp_path, args, _published_form_state(args))
    (tmp_path / "params.json").write_text(json.dumps(raw))
    assert read_checkpoint(tmp_path).kind == kind


def test_reader_accepts_per_row_scales_without_the_trailing_one(tmp_path):
    args = LAYOUTS["qlora"]
    write_meta(tmp_path, args, _published_form_state(args, per_row_scales_2d=False))
    assert read_checkpoint(tmp_path).state["output.scales"].shape == (TINY.vocab_size,)


@pytest.mark.parametrize("extra", [{"scheme": META_SCHEME}, {"quantize_embedding": True},
                                   {"scheme": META_SCHEME, "quantize_embedding": True, "spinquant": True}])
def test_meta_quantization_args_are_accepted(extra):
    args = ModelArgs.from_dict({**TINY.to_dict(), "quantization_args": {"group_size": 32, **extra}})
    assert args.quantization_args.group_size == 32


@pytest.mark.parametrize("extra, pattern", [
    ({"scheme": "int8_weight_only"}, r"quantization_args.scheme 'int8_weight_only' is not supported; handheld reads only "
                                     r"'int4_weight_int8_dynamic_activation'"),
    ({"quantize_embedding": False}, r"quantization_args.quantize_embedding false is not supported; .* 8-bit embedding"),
])
def test_other_quantization_args_are_refused_in_one_line(extra, pattern):
    with pytest.raises(HandheldError, match=pattern) as error:
        ModelArgs.from_dict({**TINY.to_dict(), "quantization_args": {"group_size": 32, **extra}})
    assert "\n" not in str(error.value)


def test_settings_executorch_would_lose_are_named():
    assert executorch_loader_notes(LAYOUTS["qlora"]) == []
    assert executorch_loader_notes(LAYOUTS["spinquant"]) == []
    notes = executorch_loader_notes(dataclasses.replace(LAYOUTS["qlora"], lora_args=LoraArgs(4, 1.5)))
    assert len(notes) == 1 and "lora_args.scale 1.5" in notes[0] and "at 2" in notes[0]
    odd_group = dataclasses.replace(TINY, quantization_args=QuantizationArgs(16))
    assert len(executorch_loader_notes(odd_group)) == 1 and "group size 16" in executorch_loader_notes(odd_group)[0]


# ExecuTorch 1.5.1's own export of Meta's pre-quantized checkpoints (its README's recipe, as hydra overrides).
ET_COMMON = ["base.model_class=llama3_2", "base.preq_mode=preq_8da4w_out_8da8w", "base.preq_group_size=32",
             "base.preq_embedding_quantize='8,0'", "model.use_kv_cache=True", "model.use_sdpa_with_kv_cache=True",
             "model.enable_dynamic_shape=True", "model.dtype_override=fp32", "backend.xnnpack.enabled=True",
             "backend.xnnpack.extended_ops=True", f"export.max_seq_length={MAX_SEQ_LEN}",
             f"export.max_context_length={MAX_SEQ_LEN}"]
ET_LAYOUT = {"spinquant": ["quantization.use_spin_quant=native"], "qlora": ["quantization.use_qat=True", "base.use_lora=4"]}


def _executorch_export(checkpoint: Path, layout: str, pte: Path) -> None:
    command = [sys.executable, "-m", "executorch.extension.llm.export.export_llm",
               f"base.checkpoint={checkpoint / 'consolidated.00.pth'}", f"base.params={checkpoint / 'params.json'}",
               *ET_COMMON, *ET_LAYOUT[layout], f"export.output_name={pte}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=pte.parent)
    assert done.returncode == 0, done.stderr[-3000:]


def _executorch_forward(pte: Path):
    from executorch.runtime import Runtime

    from handheld.runtime_bindings.python.program import load_runtime_kernels

    load_runtime_kernels()
    method = Runtime.get().load_program(pte).load_method("forward")

    def forward(tokens: list[int], position: int) -> torch.Tensor:
        (logits,) = method.execute([torch.tensor([tokens]), torch.tensor([position])])
        return logits.reshape(-1, logits.shape[-1])
    return forward


# The two programs run the same XNNPACK kernels on the same integers: they agree to float rounding.
SHARE_OF_SPREAD = 0.01


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_executorch_export_llm_reads_handheld_output_and_agrees(layout, handheld_outputs, tmp_path):
    from handheld.export.options import ExportOptions
    from handheld.export.program import export_program
    from handheld.runtime_bindings.python.program import PteProgram

    checkpoint = handheld_outputs[layout]
    _executorch_export(checkpoint, layout, tmp_path / "executorch.pte")
    options = ExportOptions(scheme=None, max_seq_len=MAX_SEQ_LEN)
    export_program(checkpoint, tmp_path / "handheld.pte", options, log=lambda _: None)
    ours, theirs = PteProgram(tmp_path / "handheld.pte"), _executorch_forward(tmp_path / "executorch.pte")
    position, tokens = 0, PROMPT
    for step in range(6):
        a, b = ours.forward(tokens, position)[-1], theirs(tokens, position)[-1]
        gap = float((a - b).abs().max() / a.std())
        assert gap < SHARE_OF_SPREAD, f"step {step}: ExecuTorch's program is off handheld's by {gap:.4f} of the spread"
        position += len(tokens)
        tokens = [int(a.argmax())]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_what_the_executorch_comparison_would_catch(layout):
    """Dropping the online Hadamard or the adapters (or mis-scaling them) moves the logits far more than the
    comparison above tolerates, so a loader that lost either would fail it."""
    from handheld.decoding.generation import EagerRunner

    model = _handheld_model(LAYOUTS[layout])
    reference = EagerRunner(model).forward(PROMPT, 0)[-1]
    for module in model.modules():
        if layout == "spinquant" and hasattr(module, "online_hadamard"):
            module.online_hadamard = False
        if layout == "qlora" and hasattr(module, "adaptor"):
            module.scale = 1.5  # any LoRA scale but the checkpoint's
    changed = EagerRunner(model).forward(PROMPT, 0)[-1]
    assert float((changed - reference).abs().max() / reference.std()) > 10 * SHARE_OF_SPREAD
