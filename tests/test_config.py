import pytest
import torch

from handheld.core.llama.config import ModelArgs, known_model_names, named_model_args
from handheld.core.errors import HandheldError
from handheld.core.llama.model import Transformer, parameter_count


@pytest.mark.parametrize(
    "name, expected",
    [("llama3.2-1b", 1_235_814_400), ("llama3.2-3b", 3_212_749_824)],
)
def test_named_shapes_have_llama32_parameter_counts(name, expected):
    with torch.device("meta"):
        model = Transformer(named_model_args(name))
    assert parameter_count(model) == expected


def test_llama32_1b_shape_matches_meta():
    args = named_model_args("llama3.2-1b")
    assert (args.dim, args.n_layers, args.n_heads, args.kv_heads, args.attn_head_dim, args.ffn_hidden_dim) == (
        2048, 16, 32, 8, 64, 8192,
    )


def test_unknown_key_is_rejected_and_known_keys_listed():
    with pytest.raises(HandheldError, match=r"unknown key\(s\) n_kv_head;.*n_kv_heads"):
        ModelArgs.from_dict({"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 10, "n_kv_head": 2})


def test_wrong_type_is_rejected():
    with pytest.raises(HandheldError, match="n_layers must be"):
        ModelArgs.from_dict({"dim": 64, "n_layers": "2", "n_heads": 4, "vocab_size": 10})


def test_missing_key_is_reported():
    with pytest.raises(HandheldError, match="missing required key.*vocab_size"):
        ModelArgs.from_dict({"dim": 64, "n_layers": 1, "n_heads": 4})


def test_heads_must_divide():
    with pytest.raises(HandheldError, match="not divisible by n_kv_heads"):
        ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, vocab_size=10)


def test_unknown_model_lists_known_ones():
    with pytest.raises(HandheldError) as err:
        named_model_args("llama3.2-2b")
    for name in known_model_names():
        assert name in str(err.value)


def test_params_round_trip_keeps_meta_keys():
    args = named_model_args("llama3.2-1b")
    raw = args.to_dict()
    assert set(raw) == {
        "dim", "ffn_dim_multiplier", "multiple_of", "n_heads", "n_kv_heads", "n_layers", "norm_eps",
        "rope_theta", "use_scaled_rope", "vocab_size",
    }
    assert ModelArgs.from_dict(raw) == args
