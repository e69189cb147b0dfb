"""The exported `.pte` against the eager model it came from: prefill plus 8 decode steps."""

import pytest
import torch

from conftest import PARITY_MAX_SEQ_LEN, delegated_linears
from handheld.core.checkpoints import build_model, read_checkpoint
from handheld.cli.inspect import describe_pte
from handheld.export.provenance import export_provenance
from handheld.quant.schemes import apply_scheme
from handheld.decoding.generation import EagerRunner
from handheld.runtime_bindings.python.program import PteProgram

PROMPT = [44, 7, 123, 299, 5, 60, 61, 62, 18, 250, 3]  # ids below 44 are the odd model's specials
DECODE_STEPS = 8

# Largest |pte - eager| as a share of the eager logits' standard deviation (about 0.2 for this random model).
# fp32: the same math in another kernel library, so only rounding differs (measured ~2e-6).
# bf16: eager and XNNPACK round activations to bf16 (8 bits of mantissa) at different points (measured
# ~0.02, about what bf16 itself moves the logits from float).
# fp16: 11 bits of mantissa, so closer than bf16, but where the CPU has fp16 arithmetic (AVX512-FP16, Arm's
# FP16) XNNPACK also accumulates its dot products in fp16, which eager PyTorch does in fp32: measured ~0.003
# without it, up to 0.014 with it (a Sapphire Rapids VM), against 0.002-0.004 between eager fp16 and fp32.
SHARE_OF_SPREAD = {"fp32": 1e-4, "bf16": 0.06, "fp16": 0.03}


def _run_both(checkpoint, pte_path, scheme, kv_cache=None):
    model = apply_scheme(build_model(read_checkpoint(checkpoint), PARITY_MAX_SEQ_LEN, full_logits=False), scheme)
    if kv_cache is not None:
        model.use_llm_kv_ops(kv_cache)
    eager = EagerRunner(model)
    program = PteProgram(pte_path)
    pairs = [(program.forward(PROMPT, 0)[-1], eager.forward(PROMPT, 0)[-1])]
    position = len(PROMPT)
    for _ in range(DECODE_STEPS):
        token = int(pairs[-1][1].argmax())  # both follow the eager model's greedy path
        pairs.append((program.forward([token], position)[-1], eager.forward([token], position)[-1]))
        position += 1
    return pairs


@pytest.mark.parametrize("scheme", ["fp32", "bf16", "fp16"])
def test_pte_matches_eager_prefill_and_decode(scheme, odd_checkpoint, request):
    pte = request.getfixturevalue(f"odd_{scheme}_pte")
    pairs = _run_both(odd_checkpoint, pte, scheme)
    assert len(pairs) == 1 + DECODE_STEPS
    for step, (ours, reference) in enumerate(pairs):
        assert ours.shape == reference.shape == (300,)
        off = float((ours.float() - reference.float()).abs().max() / reference.float().std())
        assert off < SHARE_OF_SPREAD[scheme], f"step {step}: off by {off:.2e} of the logits' spread"
    top1 = sum(int(o.argmax()) == int(r.argmax()) for o, r in pairs)
    assert top1 >= len(pairs) - (0 if scheme == "fp32" else 1)


def test_int8_kv_cache_program_says_so_and_matches_its_eager_model(odd_checkpoint, tmp_path):
    """`--kv-cache int8`: ExecuTorch's quantized cache in the program and in its eager model (the same ops on both
    sides), so they agree to float32 rounding, as fp32 programs do; the metadata names the cache."""
    from handheld import api
    from handheld.export.program import register_llm_ops

    program = api.export(odd_checkpoint, tmp_path / "int8_cache.pte", scheme="fp32", max_seq_len=PARITY_MAX_SEQ_LEN,
                         kv_cache="int8")
    assert program.metadata.kv_cache == "int8" and program.metadata.llm_kv_ops
    assert describe_pte(program.path)["metadata"]["handheld_kv_cache"] == "int8"
    register_llm_ops()
    import executorch.kernels.quantized  # noqa: F401  the eager model's per-token rounding ops

    for step, (ours, reference) in enumerate(_run_both(odd_checkpoint, program.path, "fp32", kv_cache="int8")):
        off = float((ours - reference).abs().max() / reference.std())
        assert off < SHARE_OF_SPREAD["fp32"], f"step {step}: off by {off:.2e} of the logits' spread"


def test_pte_carries_runner_and_handheld_metadata(odd_fp32_pte):
    program = PteProgram(odd_fp32_pte)
    meta = program.constant_methods  # as ExecuTorch's runners see them
    assert meta["get_max_seq_len"] == PARITY_MAX_SEQ_LEN
    assert meta["get_vocab_size"] == 300 and meta["get_n_layers"] == 2
    assert meta["get_bos_id"] == 44 and program.eos_ids == [45, 52, 53]
    assert meta["use_kv_cache"] is True and meta["enable_dynamic_shape"] is True
    # The cache goes through ExecuTorch's LLM ops (update_cache, custom_sdpa), as its runners expect of this flag.
    assert meta["use_sdpa_with_kv_cache"] is True and program.metadata.llm_kv_ops
    ops = program.metadata.op_counts["portable"]
    assert ops.get("llama.custom_sdpa") == 2 and ops.get("llama.update_cache") == 4, ops
    typed = program.metadata  # handheld's typed view of the same contract
    assert typed.scheme == "fp32" and typed.backend == "xnnpack" and typed.max_seq_len == PARITY_MAX_SEQ_LEN
    assert typed.model.startswith("llama(dim=96") and typed.version
    # Which code made it: this checkout's commit and export-code digest, and the library versions.
    assert typed.provenance == export_provenance()
    assert len(typed.provenance["commit"]) == 40 and typed.provenance["torch"] == torch.__version__


def test_every_linear_is_delegated_to_xnnpack(odd_fp32_pte):
    info = describe_pte(odd_fp32_pte)
    # 2 layers x 7 linears + the classifier.
    assert info["ops_delegated"].get("linear") == delegated_linears(2)
    assert "linear" not in info["ops_not_delegated"] and "addmm" not in info["ops_not_delegated"]
    assert 0.3 < info["delegated_share"] <= 1.0


def test_bf16_program_is_smaller_and_delegates_in_bf16(odd_fp32_pte, odd_bf16_pte):
    assert odd_bf16_pte.stat().st_size < 0.6 * odd_fp32_pte.stat().st_size
    assert describe_pte(odd_bf16_pte)["ops_delegated"].get("linear") == delegated_linears(2)
