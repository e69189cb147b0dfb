"""Hugging Face's Llama format: `config.json` + `model.safetensors` (or shards with an index).

HF stores wq/wk rows permuted for its rotate-half RoPE; reading undoes that so the weights match
Meta's interleaved-pair layout, and writing applies it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from handheld.core.llama.config import ModelArgs, read_json_object
from handheld.core.errors import HandheldError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

# Meta name pattern -> HF name pattern ({} is the layer index).
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def is_hf_checkpoint(directory: Path) -> bool:
    return (directory / CONFIG).is_file()


def meta_to_hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if not match or match.group(2) not in _LAYER_NAMES:
        raise HandheldError(f"no Hugging Face name for tensor {name}")
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"


def _hf_to_meta_names() -> dict[str, str]:
    return {v: k for k, v in _GLOBAL_NAMES.items()} | {v: k for k, v in _LAYER_NAMES.items()}


def hf_to_meta_name(name: str) -> str:
    table = _hf_to_meta_names()
    if name in table:
        return table[name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if not match or match.group(2) not in table:
        raise HandheldError(f"unexpected tensor {name} in Hugging Face checkpoint")
    return f"layers.{match.group(1)}.{table[match.group(2)]}"


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved RoPE pairs -> HF's rotate-half halves, per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def config_to_args(config: dict[str, Any], source: str) -> ModelArgs:
    if config.get("model_type", "llama") != "llama":
        raise HandheldError(f"{source}: model_type {config['model_type']!r} is not a Llama model")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise HandheldError(f"{source}: {flag}=true is not a Llama 3 architecture")
    if config.get("hidden_act", "silu") != "silu":
        raise HandheldError(f"{source}: hidden_act {config['hidden_act']!r} is not supported (Llama uses silu)")
    try:
        raw: dict[str, Any] = {
            "dim": config["hidden_size"],
            "n_layers": config["num_hidden_layers"],
            "n_heads": config["num_attention_heads"],
            "n_kv_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
            "vocab_size": config["vocab_size"],
            "hidden_dim": config["intermediate_size"],
            "norm_eps": config.get("rms_norm_eps", 1e-5),
        }
    except KeyError as e:
        raise HandheldError(f"{source}: missing key {e.args[0]}") from None
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim"):
        if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 1:
            raise HandheldError(f"{source}: {key} (HF's name for it) must be a positive integer, got {raw[key]!r}")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != raw["dim"] // raw["n_heads"]:
        raw["head_dim"] = head_dim
    raw["rope_theta"], scaling = _rope_settings(config, source)
    if scaling is not None:
        raw |= _llama3_scaling(scaling, source)
    return ModelArgs.from_dict(raw, source=source)


def _rope_settings(config: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """RoPE theta and scaling from either layout: transformers < 5 writes top-level `rope_theta` and
    `rope_scaling`; transformers 5 writes `rope_parameters` with `rope_type` and `rope_theta` inside. A key
    present in one place is never replaced by a default because the other place lacks it."""
    parameters = config.get("rope_parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise HandheldError(f"{source}: rope_parameters must be an object, got {parameters!r}")
    thetas = {v for v in (config.get("rope_theta"), (parameters or {}).get("rope_theta")) if v is not None}
    if len(thetas) > 1:
        raise HandheldError(f"{source}: rope_theta {config.get('rope_theta')} and rope_parameters.rope_theta "
                            f"{parameters['rope_theta']} disagree")
    theta = thetas.pop() if thetas else 10000.0  # transformers' LlamaConfig default
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise HandheldError(f"{source}: rope_theta must be a positive number, got {theta!r}")
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise HandheldError(f"{source}: rope_scaling must be an object, got {scaling!r}")
    if parameters is not None and parameters.get("rope_type", "default") != "default":
        if scaling is not None and scaling != parameters:
            kinds = (scaling.get("rope_type", scaling.get("type")), parameters.get("rope_type"))
            if kinds[0] != kinds[1]:
                raise HandheldError(f"{source}: rope_scaling ({kinds[0]}) and rope_parameters ({kinds[1]}) disagree")
        scaling = parameters
    return float(theta), scaling or None


def _llama3_scaling(scaling: dict[str, Any], source: str) -> dict[str, Any]:
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return {}
    if kind != "llama3":
        raise HandheldError(f"{source}: RoPE scaling type {kind!r} is not supported (known: llama3)")
    try:
        return {
            "use_scaled_rope": True,
            "rope_scale_factor": float(scaling["factor"]),
            "rope_low_freq_factor": float(scaling["low_freq_factor"]),
            "rope_high_freq_factor": float(scaling["high_freq_factor"]),
            "rope_original_context": int(scaling["original_max_position_embeddings"]),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise HandheldError(f"{source}: llama3 RoPE scaling is missing or has a bad {e}") from None


def args_to_config(args: ModelArgs, tied: bool, dtype: torch.dtype) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.attn_head_dim,
        "intermediate_size": args.ffn_hidden_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if args.use_scaled_rope:
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": args.rope_scale_factor,
            "low_freq_factor": args.rope_low_freq_factor,
            "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_context,
        }
    return config


def read_hf(directory: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    source = str(directory / CONFIG)
    config = read_json_object(directory / CONFIG)
    args = config_to_args(config, source)
    state: dict[str, torch.Tensor] = {}
    for shard in _shard_files(directory):
        try:
            tensors = load_file(shard)
        except Exception as e:  # a parse boundary (SafetensorError, OSError, and whatever a damaged header raises)
            raise HandheldError(f"cannot read {shard}: truncated or not a safetensors file ({e})") from None
        for name, tensor in tensors.items():
            state[hf_to_meta_name(name)] = tensor
    _check_tying(config, state, source)
    for i in range(args.n_layers):
        for proj, heads in (("wq", args.n_heads), ("wk", args.kv_heads)):
            key = f"layers.{i}.attention.{proj}.weight"
            if key in state:
                state[key] = unpermute_from_hf(state[key], heads)
    return args, state


def _check_tying(config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> None:
    """`tie_word_embeddings` must agree with whether lm_head is stored. Absent, LlamaConfig means untied; a
    file without lm_head.weight then is refused rather than guessed tied."""
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise HandheldError(f"{source}: tie_word_embeddings must be true or false, got {tied!r}")
    if not tied and "output.weight" not in state:
        said = "is false" if "tie_word_embeddings" in config else "is not set (Llama's default: untied)"
        raise HandheldError(f"{source}: tie_word_embeddings {said} but the checkpoint has no lm_head.weight")
    if tied and "output.weight" in state:
        if not torch.equal(state["output.weight"], state["tok_embeddings.weight"]):
            raise HandheldError(f"{source}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
        del state["output.weight"]  # one table, as the config says


def _shard_files(directory: Path) -> list[Path]:
    if (directory / INDEX).is_file():
        weight_map = read_json_object(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(f, str) for f in weight_map.values()):
            raise HandheldError(f"{directory / INDEX} has no weight_map of tensor names to shard files")
        files = sorted(set(weight_map.values()))
        for name in files:
            # Shards live in the checkpoint folder: an index pointing elsewhere is refused, not followed.
            if Path(name).name != name or name in (".", ".."):
                raise HandheldError(f"{directory / INDEX} names shard {name!r} outside the checkpoint folder")
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise HandheldError(f"{directory}: shard(s) named in {INDEX} are missing: {', '.join(missing)}")
        return [directory / f for f in files]
    if (directory / SINGLE).is_file():
        return [directory / SINGLE]
    raise HandheldError(f"{directory}: config.json found but no {SINGLE} or {INDEX}")


def write_hf(directory: Path, args: ModelArgs, state: dict[str, torch.Tensor], max_shard_bytes: int | None = None) -> None:
    tied = "output.weight" not in state
    some = next(iter(state.values()))
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(("attention.wq.weight", "attention.wk.weight")):
            heads = args.n_heads if ".wq." in name else args.kv_heads
            tensor = permute_for_hf(tensor, heads)
        out[meta_to_hf_name(name)] = tensor.contiguous()
    (directory / CONFIG).write_text(json.dumps(args_to_config(args, tied, some.dtype), indent=2) + "\n")
    if max_shard_bytes is None:
        save_file(out, directory / SINGLE, metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in out.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / file, metadata={"format": "pt"})
        weight_map |= {name: file for name in shard}
    (directory / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")
