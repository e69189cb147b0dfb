"""Meta's pre-quantized layouts (SpinQuant_INT4_EO8, QLORA_INT4_EO8): fabricated here from a tiny
float model with Meta's keys and dtypes, exported, and checked against their eager references."""

import dataclasses
import json

import pytest
import torch

from conftest import PARITY_MAX_SEQ_LEN, PARITY_SHARE_OF_SPREAD, delegated_linears
from handheld.quant.schemes import checkpoint_model
from handheld.core.checkpoints import random_state, read_checkpoint
from handheld.core.checkpoints.meta import write_meta
from handheld.quant.prequantized import write_prequantized
from handheld.core.llama.config import LoraArgs, ModelArgs, QuantizationArgs
from handheld.core.errors import HandheldError
from handheld.export.options import ExportOptions
from handheld.export.program import export_program
from handheld.core.llama.model import Transformer
from handheld.quant.spinquant_r4 import fold_r4
from handheld.decoding.generation import EagerRunner
from handheld.runtime_bindings.python.program import PteProgram

# FFN width 128 (a power of two, for the Hadamard); head_dim 24; vocab 300.
FLOAT_ARGS = ModelArgs(dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=128, use_scaled_rope=True)
SPIN = dataclasses.replace(FLOAT_ARGS, quantization_args=QuantizationArgs(group_size=32, spinquant=True))
QLORA = dataclasses.replace(FLOAT_ARGS, quantization_args=QuantizationArgs(group_size=32), lora_args=LoraArgs(rank=4, scale=2.0))
BLOCK = ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
PROMPT = [44, 7, 123, 299, 5, 60, 61, 62]


def hadamard(n):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def float_state():
    state = random_state(FLOAT_ARGS, seed=7, dtype=torch.float32)
    state["output.weight"] = state["tok_embeddings.weight"].clone()
    return state


def quantize_groupwise(w, group, bits):
    """SpinQuant reference's symmetric grid: scale = amax / (2^(bits-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    groups = w.reshape(w.shape[0], -1, group)
    scales = groups.abs().amax(-1).clamp(min=1e-6) / qmax
    q = torch.clamp(torch.round(groups / scales[..., None]), -qmax - 1, qmax).to(torch.int8)
    return q.reshape(w.shape), scales


def meta_layout(args, state, spinquant=False, lora_rank=None):
    """Tensors exactly as in Meta's releases: int8 values, fp32 scales, bf16 norms and adapters."""
    out = {}
    gen = torch.Generator().manual_seed(11)
    for name, w in state.items():
        if name.endswith("norm.weight"):
            out[name] = w.to(torch.bfloat16)
            continue
        base = name.removesuffix(".weight")
        if base in ("tok_embeddings", "output"):
            q, s = quantize_groupwise(w, w.shape[1], bits=8)
            out[name], out[base + ".scales"] = q, s.reshape(-1, 1)  # per-row scales: [rows, 1] as Meta's files
            continue
        if spinquant and base.endswith("feed_forward.w2"):
            w = w @ hadamard(w.shape[1])  # R4 folded in
        q, s = quantize_groupwise(w, 32, bits=4)
        out[name], out[base + ".scales"] = q, s
        if lora_rank:
            out[base + ".adaptor.A.weight"] = (torch.randn(lora_rank, w.shape[1], generator=gen) * 0.05).to(torch.bfloat16)
            out[base + ".adaptor.B.weight"] = (torch.randn(w.shape[0], lora_rank, generator=gen) * 0.05).to(torch.bfloat16)
    return out


@pytest.fixture(scope="module")
def spinquant_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("spinquant")
    write_meta(d, SPIN, meta_layout(SPIN, float_state(), spinquant=True))
    return d


@pytest.fixture(scope="module")
def qlora_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qlora")
    write_meta(d, QLORA, meta_layout(QLORA, float_state(), lora_rank=4))
    return d


def dequantized_reference(directory):
    """An independent float oracle: weights = int values x scales, adapters merged, Hadamard online."""
    ckpt = read_checkpoint(directory)
    s = ckpt.state
    state = {}
    for name in s:
        if name.endswith("norm.weight"):
            state[name] = s[name].float()
        elif name.endswith(".scales") or ".adaptor." in name:
            continue
        else:
            base = name.removesuffix(".weight")
            scales = s[base + ".scales"].float()
            q = s[name].float()
            w = (q.reshape(q.shape[0], scales.shape[-1] if scales.dim() == 2 else 1, -1) * scales.reshape(q.shape[0], -1, 1)).reshape(q.shape)
            if ckpt.args.lora_args and base + ".adaptor.A.weight" in s:
                w = w + ckpt.args.lora_args.scale * s[base + ".adaptor.B.weight"].float() @ s[base + ".adaptor.A.weight"].float()
            state[name] = w
    model = Transformer(FLOAT_ARGS, max_seq_len=PARITY_MAX_SEQ_LEN, full_logits=False, tied=False)
    model.load_state_dict(state)
    if ckpt.args.quantization_args.spinquant:
        for layer in model.layers:
            layer.feed_forward.enable_online_hadamard()
    return model.eval()


def _compare(directory, pte):
    eager = EagerRunner(checkpoint_model(read_checkpoint(directory), PARITY_MAX_SEQ_LEN, full_logits=False))
    reference = EagerRunner(dequantized_reference(directory))
    program = PteProgram(pte)
    position, tokens = 0, PROMPT
    for step in range(1 + 8):
        ours, oracle, ref = (m.forward(tokens, position)[-1] for m in (program, eager, reference))
        torch.testing.assert_close(ours, oracle, atol=0.02, rtol=0.02, msg=lambda m: f"step {step}: {m}")
        # The eager quantized model differs from the dequantized float one only by 8-bit activations.
        torch.testing.assert_close(oracle, ref, atol=0.1, rtol=0.1)
        position += len(tokens)
        tokens = [int(oracle.argmax())]


@pytest.mark.parametrize("layout", ["spinquant", "qlora"])
def test_meta_layout_exports_and_matches_eager(layout, request, tmp_path):
    directory = request.getfixturevalue(f"{layout}_dir")
    pte = tmp_path / f"{layout}.pte"
    export_program(directory, pte, ExportOptions(scheme=None, max_seq_len=PARITY_MAX_SEQ_LEN), log=lambda _: None)
    _compare(directory, pte)
    program = PteProgram(pte)
    assert program.metadata.scheme == {"spinquant": "spinquant", "qlora": "qat-lora"}[layout]
    assert program.metadata.group_size == 32
    counts = program.metadata.op_counts
    assert "linear" not in counts["portable"]
    # Every program's linears (weights and constants); SpinQuant adds the online Hadamard's two float
    # factor linears per layer, QLoRA two float adapter linears per block linear.
    assert counts["delegated"]["linear"] == delegated_linears(2) + (2 * 2 if layout == "spinquant" else 2 * 14)


def test_r4_hadamard_is_function_preserving_without_quantization():
    model = Transformer(FLOAT_ARGS, max_seq_len=32)
    model.load_state_dict(float_state(), strict=False)
    tokens = torch.tensor([PROMPT])
    with torch.no_grad():
        before = model(tokens, torch.tensor([0]))
        model.reset_cache()
        rotated = fold_r4(model)
        assert all(layer.feed_forward.online_hadamard for layer in rotated.layers)
        after = rotated(tokens, torch.tensor([0]))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_lora_adapters_change_the_output(qlora_dir):
    with_lora = EagerRunner(checkpoint_model(read_checkpoint(qlora_dir), PARITY_MAX_SEQ_LEN, False))
    model = checkpoint_model(read_checkpoint(qlora_dir), PARITY_MAX_SEQ_LEN, False)
    for name, module in model.named_modules():
        if name.endswith("adaptor"):
            torch.nn.init.zeros_(module.B.weight)
    without = EagerRunner(model)
    reference = with_lora.forward(PROMPT, 0)
    effect = float((reference - without.forward(PROMPT, 0)).abs().max() / reference.std())
    # Well above what the .pte parity check tolerates: an export that dropped the adapters would fail it.
    assert effect > 3 * PARITY_SHARE_OF_SPREAD, effect


def test_round_trip_through_handheld_writer(qlora_dir, tmp_path):
    model = checkpoint_model(read_checkpoint(qlora_dir), PARITY_MAX_SEQ_LEN, False)
    write_prequantized(tmp_path, QLORA, model)
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["quantization_args"] == {"group_size": 32}  # Meta's QLoRA form: lora_args imply no rotation
    assert params["lora_args"] == {"rank": 4, "scale": 2.0}
    again = read_checkpoint(tmp_path)
    original = read_checkpoint(qlora_dir)
    assert again.state.keys() == original.state.keys()
    for key in original.state:
        assert again.state[key].dtype == (torch.float32 if key.endswith("norm.weight") else original.state[key].dtype), key
        torch.testing.assert_close(again.state[key].float(), original.state[key].float())


def _broken(tmp_path, args, mutate):
    state = meta_layout(args, float_state(), lora_rank=args.lora_args.rank if args.lora_args else None)
    mutate(state)
    write_meta(tmp_path, args, state)
    return tmp_path


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda s: s.__setitem__("layers.0.attention.wq.weight", s["layers.0.attention.wq.weight"].float()),
         r"tensor layers.0.attention.wq.weight has dtype torch.float32; Meta's pre-quantized layout stores int8"),
        (lambda s: s.pop("layers.1.feed_forward.w3.scales"), r"missing tensor layers.1.feed_forward.w3.scales"),
        (lambda s: s.__setitem__("layers.0.attention.wo.scales", s["layers.0.attention.wo.scales"][:, :1]),
         r"layers.0.attention.wo.scales has shape \(96, 1\): it does not match quantization_args.group_size 32"),
    ],
)
def test_bad_spinquant_layout_is_a_clear_error(tmp_path, mutate, pattern):
    with pytest.raises(HandheldError, match=pattern):
        read_checkpoint(_broken(tmp_path, SPIN, mutate))


def test_lora_rank_disagreeing_with_lora_args(tmp_path):
    wrong = dataclasses.replace(QLORA, lora_args=LoraArgs(rank=8, scale=2.0))
    state = meta_layout(QLORA, float_state(), lora_rank=4)
    write_meta(tmp_path, wrong, state)
    with pytest.raises(HandheldError, match=r"adaptor.A.weight has shape \(4, 96\) but lora_args.rank 8 implies \(8, 96\)"):
        read_checkpoint(tmp_path)


def test_prequantized_checkpoint_refuses_another_scheme(spinquant_dir, tmp_path):
    with pytest.raises(HandheldError, match="is pre-quantized .* cannot be exported as --scheme bf16"):
        options = ExportOptions(scheme="bf16", max_seq_len=16)
        export_program(spinquant_dir, tmp_path / "x.pte", options, log=lambda _: None)
    assert not list(tmp_path.iterdir())
