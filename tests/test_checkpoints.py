"""Meta and Hugging Face formats: both load to identical logits; bad files give clear errors."""

import json

import pytest
import torch

from conftest import ODD_ARGS, odd_state
from handheld.core.checkpoints import build_model, hf, read_checkpoint, write_checkpoint
from handheld.core.errors import HandheldError


def _logits(directory, tokens=(1, 7, 42, 99, 250, 3)):
    model = build_model(read_checkpoint(directory))
    with torch.no_grad():
        return model(torch.tensor([list(tokens)]), torch.tensor([0]))


def test_meta_and_hf_give_identical_logits(tmp_path):
    state = odd_state()
    (tmp_path / "meta").mkdir()
    write_checkpoint(tmp_path / "meta", ODD_ARGS, state, "meta")
    (tmp_path / "hf").mkdir()
    write_checkpoint(tmp_path / "hf", ODD_ARGS, state, "hf")
    assert read_checkpoint(tmp_path / "hf").format == "hf"
    assert torch.equal(_logits(tmp_path / "meta"), _logits(tmp_path / "hf"))


def test_sharded_hf_checkpoint_loads(tmp_path):
    state = odd_state()
    (tmp_path / "one").mkdir()
    (tmp_path / "sharded").mkdir()
    write_checkpoint(tmp_path / "one", ODD_ARGS, state, "hf")
    hf.write_hf(tmp_path / "sharded", ODD_ARGS, state, max_shard_bytes=40_000)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 2
    assert (tmp_path / "sharded" / hf.INDEX).is_file()
    assert torch.equal(_logits(tmp_path / "one"), _logits(tmp_path / "sharded"))


def test_hf_rope_permutation_is_undone():
    w = torch.arange(ODD_ARGS.dim * ODD_ARGS.dim, dtype=torch.float32).view(ODD_ARGS.dim, ODD_ARGS.dim)
    permuted = hf.permute_for_hf(w, ODD_ARGS.n_heads)
    assert not torch.equal(permuted, w)
    assert torch.equal(hf.unpermute_from_hf(permuted, ODD_ARGS.n_heads), w)
    # HF's rotate-half pairs dimension i with i + head_dim/2: row 1 of head 0 (Meta's odd half of pair 0)
    # lands at row head_dim/2.
    half = ODD_ARGS.attn_head_dim // 2
    assert torch.equal(permuted[half], w[1])


def test_hf_config_maps_llama3_rope_scaling(tmp_path):
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "hf")
    config = json.loads((tmp_path / hf.CONFIG).read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["rope_scaling"]["factor"] == 8.0
    assert config["tie_word_embeddings"] is True
    assert read_checkpoint(tmp_path).args == ODD_ARGS


def test_params_that_disagree_with_weights_name_the_tensor_and_both_shapes(tmp_path):
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "meta")
    params = json.loads((tmp_path / "params.json").read_text())
    params["dim"] = 128
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(HandheldError, match=r"tensor \S+ has shape \(\d+, 96\) but the params imply \(\d+, 128\)"):
        read_checkpoint(tmp_path)


def test_truncated_meta_checkpoint_is_a_clear_error(tmp_path):
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "meta")
    weights = tmp_path / "consolidated.00.pth"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(HandheldError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(tmp_path)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "hf")
    weights = tmp_path / hf.SINGLE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(HandheldError, match="truncated or not a safetensors file"):
        read_checkpoint(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    state = odd_state()
    del state["layers.1.feed_forward.w2.weight"]
    write_checkpoint(tmp_path, ODD_ARGS, state, "meta")
    with pytest.raises(HandheldError, match="missing tensor layers.1.feed_forward.w2.weight"):
        read_checkpoint(tmp_path)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "meta")
    torch.save({"tok_embeddings.weight": Evil()}, tmp_path / "consolidated.00.pth")
    with pytest.raises(HandheldError, match="cannot read"):
        read_checkpoint(tmp_path)


def test_directory_that_is_no_checkpoint(tmp_path):
    with pytest.raises(HandheldError, match="is not a checkpoint"):
        read_checkpoint(tmp_path)
    with pytest.raises(HandheldError, match="not found"):
        read_checkpoint(tmp_path / "nope")


def _rewrite_config(directory, **changes):
    config = json.loads((directory / hf.CONFIG).read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / hf.CONFIG).write_text(json.dumps(config))
    return config


def test_transformers_5_rope_parameters_are_read(tmp_path):
    """transformers 5 writes RoPE as rope_parameters only; the model must be the same one."""
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "hf")
    old = json.loads((tmp_path / hf.CONFIG).read_text())
    parameters = {**old["rope_scaling"], "rope_theta": old["rope_theta"]}
    _rewrite_config(tmp_path, rope_theta=None, rope_scaling=None, rope_parameters=parameters)
    assert read_checkpoint(tmp_path).args == ODD_ARGS


def test_rope_settings_that_cannot_be_honoured_are_refused(tmp_path):
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "hf")
    _rewrite_config(tmp_path, rope_theta=None, rope_scaling=None, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(HandheldError, match="RoPE scaling type 'yarn' is not supported"):
        read_checkpoint(tmp_path)
    _rewrite_config(tmp_path, rope_theta=500000.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    with pytest.raises(HandheldError, match="disagree"):
        read_checkpoint(tmp_path)


def test_tie_word_embeddings_is_honoured(tmp_path):
    write_checkpoint(tmp_path, ODD_ARGS, odd_state(), "hf")
    _rewrite_config(tmp_path, tie_word_embeddings=False)
    with pytest.raises(HandheldError, match="tie_word_embeddings is false but the checkpoint has no lm_head.weight"):
        read_checkpoint(tmp_path)
    _rewrite_config(tmp_path, tie_word_embeddings=None)
    with pytest.raises(HandheldError, match="tie_word_embeddings is not set"):
        read_checkpoint(tmp_path)


def test_shard_index_cannot_point_outside_the_checkpoint(tmp_path):
    state = odd_state()
    hf.write_hf(tmp_path, ODD_ARGS, state, max_shard_bytes=40_000)
    index = json.loads((tmp_path / hf.INDEX).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    (tmp_path / hf.INDEX).write_text(json.dumps(index))
    with pytest.raises(HandheldError, match="outside the checkpoint folder"):
        read_checkpoint(tmp_path)
    (tmp_path / hf.INDEX).write_text('{"weight_map": [1, 2]}')
    with pytest.raises(HandheldError, match="has no weight_map"):
        read_checkpoint(tmp_path)
    (tmp_path / hf.INDEX).write_text('{"weight_map": ')
    with pytest.raises(HandheldError, match="is not valid JSON"):
        read_checkpoint(tmp_path)
