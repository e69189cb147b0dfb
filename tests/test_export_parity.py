"""The exported `.pte` against the eager model it came from: prefill plus 8 decode steps."""

import pytest
import torch

from conftest import PARITY_MAX_SEQ_LEN
from handheld.checkpoints import build_model, read_checkpoint
from handheld.export.summary import describe_pte
from handheld.quant.schemes import apply_scheme
from handheld.runtime_bindings.generation import EagerRunner
from handheld.runtime_bindings.pte import PteProgram

PROMPT = [44, 7, 123, 299, 5, 60, 61, 62, 18, 250, 3]  # ids below 44 are the odd model's specials
DECODE_STEPS = 8

# Logits here are O(1). fp32: the same math in another kernel library, so only rounding differs.
# bf16: eager and XNNPACK both round activations to bf16 (8 bits of mantissa) at different points.
TOLERANCES = {"fp32": dict(atol=1e-4, rtol=1e-4), "bf16": dict(atol=0.12, rtol=0.05)}


def _run_both(checkpoint, pte_path, scheme):
    eager = EagerRunner(
        apply_scheme(build_model(read_checkpoint(checkpoint), PARITY_MAX_SEQ_LEN, full_logits=False), scheme)
    )
    program = PteProgram(pte_path)
    pairs = [(program.forward(PROMPT, 0)[-1], eager.forward(PROMPT, 0)[-1])]
    position = len(PROMPT)
    for _ in range(DECODE_STEPS):
        token = int(pairs[-1][1].argmax())  # both follow the eager model's greedy path
        pairs.append((program.forward([token], position)[-1], eager.forward([token], position)[-1]))
        position += 1
    return pairs


@pytest.mark.parametrize("scheme", ["fp32", "bf16"])
def test_pte_matches_eager_prefill_and_decode(scheme, odd_checkpoint, request):
    pte = request.getfixturevalue(f"odd_{scheme}_pte")
    pairs = _run_both(odd_checkpoint, pte, scheme)
    assert len(pairs) == 1 + DECODE_STEPS
    for step, (ours, reference) in enumerate(pairs):
        assert ours.shape == reference.shape == (300,)
        torch.testing.assert_close(ours.float(), reference.float(), **TOLERANCES[scheme], msg=lambda m: f"step {step}: {m}")
    top1 = sum(int(o.argmax()) == int(r.argmax()) for o, r in pairs)
    assert top1 >= len(pairs) - (0 if scheme == "fp32" else 1)


def test_pte_carries_runner_and_handheld_metadata(odd_fp32_pte):
    program = PteProgram(odd_fp32_pte)
    meta = program.metadata
    assert meta["get_max_seq_len"] == PARITY_MAX_SEQ_LEN
    assert meta["get_vocab_size"] == 300 and meta["get_n_layers"] == 2
    assert meta["get_bos_id"] == 44 and program.eos_ids == [45, 52, 53]
    assert meta["use_kv_cache"] is True and meta["enable_dynamic_shape"] is True
    assert meta["handheld_scheme"] == "fp32" and meta["handheld_backend"] == "xnnpack"
    assert meta["handheld_model"].startswith("llama(dim=96")
    assert meta["handheld_version"]


def test_every_linear_is_delegated_to_xnnpack(odd_fp32_pte):
    info = describe_pte(odd_fp32_pte)
    # 2 layers x 7 linears + the classifier.
    assert info["ops_delegated"].get("linear") == 15
    assert "linear" not in info["ops_not_delegated"] and "addmm" not in info["ops_not_delegated"]
    assert 0.3 < info["delegated_share"] <= 1.0


def test_bf16_program_is_smaller_and_delegates_in_bf16(odd_fp32_pte, odd_bf16_pte):
    assert odd_bf16_pte.stat().st_size < 0.6 * odd_fp32_pte.stat().st_size
    assert describe_pte(odd_bf16_pte)["ops_delegated"].get("linear") == 15
