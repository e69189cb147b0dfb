"""The Llama 3.2 model, written once and shaped for `torch.export`.

- Meta's parameter names (`tok_embeddings`, `layers.N.attention.wq`, `feed_forward.w1`, `output`),
  so Meta checkpoints load with `load_state_dict` as they are.
- A preallocated KV cache per layer (buffers, not state), written in place at the positions passed in.
- `forward(tokens[1, T], input_pos[1])`: `input_pos` holds the position of `tokens[:, 0]`; T is
  dynamic, so one graph serves prefill and decode (ExecuTorch's LLM runner calls it this way).
- Real-valued RoPE over interleaved pairs (Meta's layout) with Llama 3.1 frequency scaling, written as
  x*cos + swap(x)*sin so the rotation lowers into XNNPACK's partitions.
- No Python branches on tensor values: positions index the tables, the mask and the cache.
- Cache slots past the current position are masked out; like ExecuTorch's own non-custom-op cache,
  this relies on the runtime handing out zeroed planned memory (so 0 * slot is never NaN).
- LLM-ops variant (`use_llm_kv_ops()`, what CPU programs export): the cache is written by ExecuTorch's
  `llama::update_cache` and read by `llama::custom_sdpa`, which attends over the filled part of the cache only,
  so a step costs what the context holds, not what the cache could hold. `use_llm_kv_ops("int8")`: ExecuTorch's
  quantized cache (int8 rows with a scale and zero point each, read by `llama::custom_quantized_sdpa`).
- NPU variant (`npu=True`, an option, not a copy; traced with a fixed token count by handheld.export.npu):
  a finite mask (-255, as Qualcomm's static Llama: integer activations cannot hold -inf) and each RMSNorm as
  one `rms_norm` op, which NPU quantizers keep whole (quantized alone, the square of a residual stream with
  massive activations, ~2e4 in SmolLM2, would not fit 16 bits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from handheld.core.llama.config import ModelArgs
from handheld.core.defaults import MAX_SEQ_LEN
from handheld.core.llama.hadamard import apply_hadamard, hadamard_factors

NPU_MASK_VALUE = -255.0  # exp(-255) is 0 in float32, and 16-bit activations hold it


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """Per-pair rotation frequencies, with Llama 3.1's long-context scaling when enabled."""
    head_dim = args.attn_head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if not args.use_scaled_rope:
        return freqs
    low_freq_wavelen = args.rope_original_context / args.rope_low_freq_factor
    high_freq_wavelen = args.rope_original_context / args.rope_high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (args.rope_original_context / wavelen - args.rope_low_freq_factor) / (
        args.rope_high_freq_factor - args.rope_low_freq_factor
    )
    blended = (1 - smooth) * freqs / args.rope_scale_factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / args.rope_scale_factor, blended)
    return torch.where(wavelen < high_freq_wavelen, freqs, scaled)


def pair_swap_matrix(head_dim: int) -> torch.Tensor:
    """R with x @ R.T = (-x1, x0, -x3, x2, ...): the "rotate by 90 degrees" of every interleaved pair."""
    r = torch.zeros(head_dim, head_dim)
    r[0::2, 1::2] = -torch.eye(head_dim // 2)
    r[1::2, 0::2] = torch.eye(head_dim // 2)
    return r


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x[B, T, heads, head_dim] by angles given as full-width cos/sin
    [T, 1, head_dim] (each angle twice): x*cos + swap(x)*sin, exactly e*cos - o*sin and e*sin + o*cos.
    Written without strided slices or stacks so the whole rotation stays inside one XNNPACK partition
    (the swap is a constant +-1 linear)."""
    x_float = x.float()
    return (x_float * cos + F.linear(x_float, swap) * sin).type_as(x)


def int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x rounded to int8 per row of its last axis, asymmetric: (ints, float32 scales, int8 zero points), each row
    read back as (ints - zero point) * scale (the ops ExecuTorch's quantized cache uses)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the quantized_decomposed ops

    scales, zero_points = torch.ops.quantized_decomposed.choose_qparams_per_token_asymmetric.default(x, torch.int8)
    ints = torch.ops.quantized_decomposed.quantize_per_token(x, scales, zero_points, -128, 127, torch.int8)
    return ints, scales.float(), zero_points.to(torch.int8)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, single_op: bool = False):
        super().__init__()
        self.eps = eps
        self.single_op = single_op  # NPUs: one op (see the module docstring)
        self.weight = nn.Parameter(torch.ones(dim))
        # The mean of squares as a constant linear: XNNPACK takes a linear (not a last-axis mean), so the
        # norm stays inside its neighbours' partition.
        self.register_buffer("mean_weight", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_op:
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)
        x_float = x.float()
        normed = x_float * torch.rsqrt(F.linear(x_float * x_float, self.mean_weight.float()) + self.eps)
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, max_seq_len: int, weights_device: torch.device | str | None = None):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.head_dim = args.attn_head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False, device=weights_device)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False, device=weights_device)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False, device=weights_device)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False, device=weights_device)
        # No batch axis: ExecuTorch's in-place index_put needs values with the cache's rank.
        cache_shape = (self.n_kv_heads, max_seq_len, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache_shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape), persistent=False)
        self.llm_kv_ops = False
        self.kv_cache = "fp32"  # "int8" with the LLM ops: a quantized cache

    def use_llm_kv_ops(self, kv_cache: str = "fp32") -> None:
        """Switch to ExecuTorch's LLM ops: caches [1, max_seq_len, kv_heads, head_dim], their layout; `kv_cache`
        "int8" stores int8 values with a float32 scale and an int8 zero point per token and head (ExecuTorch's
        quantized cache: a quarter of the bytes a step reads, plus 5 per row)."""
        slots = self.k_cache.shape[1]
        cache_shape, row_shape = (1, slots, self.n_kv_heads, self.head_dim), (1, slots, self.n_kv_heads, 1)
        int8 = kv_cache == "int8"
        for name in ("k", "v"):
            self.register_buffer(f"{name}_cache", torch.zeros(cache_shape, dtype=torch.int8 if int8 else torch.float32),
                                 persistent=False)
            if int8:
                self.register_buffer(f"{name}_cache_scales", torch.ones(row_shape), persistent=False)
                self.register_buffer(f"{name}_cache_zero_points", torch.zeros(row_shape, dtype=torch.int8),
                                     persistent=False)
        self.llm_kv_ops, self.kv_cache = True, kv_cache

    def forward(self, x, positions, cos, sin, mask, swap, start_pos=None):
        # The token count is dynamic: shapes say -1 for it, never a symbolic size, which keeps the reshapes
        # delegable (XNNPACK refuses views with symbolic sizes) and the export fast.
        q = apply_rope(self.wq(x).view(1, -1, self.n_heads, self.head_dim), cos, sin, swap)
        k = apply_rope(self.wk(x).view(-1, self.n_kv_heads, self.head_dim), cos, sin, swap)
        v = self.wv(x).view(-1, self.n_kv_heads, self.head_dim)
        if self.llm_kv_ops:
            return self.wo(self.attend_with_llm_ops(q, k, v, start_pos).reshape(1, -1, self.n_heads * self.head_dim))
        self.k_cache[:, positions] = k.transpose(0, 1)
        self.v_cache[:, positions] = v.transpose(0, 1)

        # GQA without copying the cache: fold each KV head's query group into the row axis.
        # Attention math runs in float32 (XNNPACK has no bf16 batched matmul; it is also more accurate).
        group = self.n_heads // self.n_kv_heads
        cache_len = self.k_cache.shape[1]
        q = q.transpose(1, 2).reshape(self.n_kv_heads, -1, self.head_dim).float()
        scores = torch.bmm(q, self.k_cache.float().transpose(1, 2)) * (1.0 / math.sqrt(self.head_dim))
        scores = scores.view(self.n_kv_heads, group, -1, cache_len) + mask
        probs = scores.softmax(dim=-1).view(self.n_kv_heads, -1, cache_len)
        out = torch.bmm(probs, self.v_cache.float()).type_as(x).view(self.n_heads, -1, self.head_dim)
        return self.wo(out.transpose(0, 1).reshape(1, -1, self.n_heads * self.head_dim))

    def attend_with_llm_ops(self, q, k, v, start_pos):
        """Write k, v at start_pos, then causal attention of q over cache slots [0, start_pos + T) (GQA inside)."""
        if self.kv_cache == "int8":
            return self.attend_with_int8_cache(q, k, v, start_pos)
        torch.ops.llama.update_cache(k.unsqueeze(0).float(), self.k_cache, start_pos)
        torch.ops.llama.update_cache(v.unsqueeze(0).float(), self.v_cache, start_pos)
        out = torch.ops.llama.custom_sdpa(q.float(), self.k_cache, self.v_cache, start_pos, None, 0.0, True)
        return out.type_as(q)

    def attend_with_int8_cache(self, q, k, v, start_pos):
        """ExecuTorch's quantized cache: k and v rounded to int8 per token and head (asymmetric) and written at
        start_pos with their scales and zero points; q rounded the same way; `custom_quantized_sdpa` attends over
        slots [0, start_pos + T) from the integers."""
        for name, value in (("k", k), ("v", v)):
            ints, scales, zero_points = int8_per_token(value.unsqueeze(0).float())
            torch.ops.llama.update_cache(ints, getattr(self, f"{name}_cache"), start_pos)
            torch.ops.llama.update_cache(scales, getattr(self, f"{name}_cache_scales"), start_pos)
            torch.ops.llama.update_cache(zero_points, getattr(self, f"{name}_cache_zero_points"), start_pos)
        q_ints, q_scales, q_zero_points = int8_per_token(q.float())
        out = torch.ops.llama.custom_quantized_sdpa(
            q_ints, self.k_cache, self.v_cache, start_pos, None, 0.0, True, None, q_zero_points, q_scales,
            self.k_cache_zero_points, self.k_cache_scales, self.v_cache_zero_points, self.v_cache_scales, False)
        return out.type_as(q)

    def forward_batch(self, x, cos, sin, swap):
        """Training and evaluation: a batch of whole sequences from position 0, no cache."""
        batch, seq_len, _ = x.shape
        q = apply_rope(self.wq(x).view(batch, seq_len, self.n_heads, self.head_dim), cos, sin, swap)
        k = apply_rope(self.wk(x).view(batch, seq_len, self.n_kv_heads, self.head_dim), cos, sin, swap)
        v = self.wv(x).view(batch, seq_len, self.n_kv_heads, self.head_dim)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq_len, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, weights_device: torch.device | str | None = None):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False, device=weights_device)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False, device=weights_device)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False, device=weights_device)
        # SpinQuant's R4: an online Hadamard on the down projection's input (its inverse is in w2).
        self.online_hadamard = False

    def enable_online_hadamard(self) -> None:
        """Apply H (as its two small Kronecker factors, constants of the program) before w2."""
        a, b = hadamard_factors(self.w2.in_features)
        self.register_buffer("hadamard_a", a.float(), persistent=False)
        self.register_buffer("hadamard_b", b.float(), persistent=False)
        self.online_hadamard = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.w1(x)) * self.w3(x)
        if self.online_hadamard:
            hidden = apply_hadamard(hidden, self.hadamard_a.to(hidden.dtype), self.hadamard_b.to(hidden.dtype))
        return self.w2(hidden)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, max_seq_len: int, npu: bool = False,
                 weights_device: torch.device | str | None = None):
        super().__init__()
        self.attention = Attention(args, max_seq_len, weights_device)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim, weights_device)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps, single_op=npu)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, single_op=npu)

    def forward(self, x, positions, cos, sin, mask, swap, start_pos=None):
        h = x + self.attention(self.attention_norm(x), positions, cos, sin, mask, swap, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))

    def forward_batch(self, x, cos, sin, swap):
        h = x + self.attention.forward_batch(self.attention_norm(x), cos, sin, swap)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Llama 3.2. `output` shares `tok_embeddings`' weight unless the checkpoint has its own."""

    def __init__(self, args: ModelArgs, max_seq_len: int = MAX_SEQ_LEN, full_logits: bool = True, tied: bool = True,
                 npu: bool = False, weights_device: torch.device | str | None = None):
        """`weights_device="meta"`: the linears and the embedding get no storage (a checkpoint's tensors are
        then assigned with `load_state_dict(..., assign=True)`: no random init, no second copy)."""
        super().__init__()
        self.args = args
        self.max_seq_len = max_seq_len
        self.mask_value = NPU_MASK_VALUE if npu else float("-inf")  # added to masked attention scores
        # Decoding only needs the last position's logits; evaluation needs all of them.
        self.full_logits = full_logits
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim, device=weights_device)
        self.layers = nn.ModuleList(TransformerBlock(args, max_seq_len, npu, weights_device) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps, single_op=npu)
        # A pruned unembedding (Llama Guard 3 1B-INT4) has rows for its kept tokens only, so it cannot be tied.
        kept = args.output_token_ids
        self.output = nn.Linear(args.dim, len(kept) if kept else args.vocab_size, bias=False, device=weights_device)
        if tied and not kept:
            self.output.weight = self.tok_embeddings.weight
        if kept:
            self.register_buffer("output_token_ids", torch.tensor(kept), persistent=False)

        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), rope_frequencies(args))
        angles = angles.repeat_interleave(2, dim=1)  # full head width: each pair's angle twice
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.register_buffer("rope_swap", pair_swap_matrix(args.attn_head_dim), persistent=False)
        self.register_buffer("cache_positions", torch.arange(max_seq_len), persistent=False)

    @property
    def tied(self) -> bool:
        return self.output.weight is self.tok_embeddings.weight

    @property
    def llm_kv_ops(self) -> bool:
        return self.layers[0].attention.llm_kv_ops

    @property
    def kv_cache(self) -> str:
        return self.layers[0].attention.kv_cache

    def use_llm_kv_ops(self, kv_cache: str = "fp32") -> "Transformer":
        """Caches and attention through ExecuTorch's LLM ops (registered by importing
        `executorch.extension.llm.custom_ops.custom_ops`): the CPU programs' cost follows the filled context.
        `kv_cache` "int8": the quantized cache (`Attention.use_llm_kv_ops`)."""
        for layer in self.layers:
            layer.attention.use_llm_kv_ops(kv_cache)
        return self

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        seq_len = tokens.shape[1]
        positions = input_pos + torch.arange(seq_len, device=tokens.device)
        # [T, 1, head_dim]: broadcast over heads; built once here, not in every layer.
        cos, sin = self.rope_cos[positions].float()[:, None, :], self.rope_sin[positions].float()[:, None, :]
        mask, start_pos = None, None
        if self.llm_kv_ops:
            start_pos = input_pos[0].item()  # the ops take the start as an integer, bounded for the exporter
            torch._check(start_pos >= 0)
            torch._check(start_pos < self.max_seq_len)
        else:
            # Causal mask over the whole cache, computed rather than stored (max_seq_len² floats).
            future = self.cache_positions[None, :] > positions[:, None]
            mask = torch.where(future, self.mask_value, 0.0)
        h = self.tok_embeddings(tokens)
        swap = self.rope_swap.float()
        for layer in self.layers:
            h = layer(h, positions, cos, sin, mask, swap, start_pos)
        if not self.full_logits:
            h = h[:, -1:, :]
        logits = self.output(self.norm(h))
        if self.args.output_token_ids:
            logits = self.expand_pruned(logits)
        return logits

    def expand_pruned(self, logits: torch.Tensor) -> torch.Tensor:
        """Kept-token logits [B, T, kept] -> [B, T, vocab], -inf elsewhere (as ExecuTorch's output_prune_map
        does), so every reader sees the vocabulary's ids."""
        full = torch.full((logits.shape[0], logits.shape[1], self.args.vocab_size), float("-inf"), dtype=logits.dtype)
        return full.index_copy(2, self.output_token_ids, logits)

    def forward_batch(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for whole sequences [B, T] from position 0, without the KV cache:
        the training and evaluation path (same weights and math as `forward`, batched)."""
        h = self.tok_embeddings(tokens)
        rope = self.batch_rope(tokens.shape[1])
        for layer in self.layers:
            h = layer.forward_batch(h, *rope)
        logits = self.output(self.norm(h))
        return self.expand_pruned(logits) if self.args.output_token_ids else logits

    def batch_rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cos, sin, swap) for `TransformerBlock.forward_batch` over positions 0..seq_len-1."""
        cos, sin = self.rope_cos[:seq_len].float()[:, None, :], self.rope_sin[:seq_len].float()[:, None, :]
        return cos, sin, self.rope_swap.float()

    def reset_cache(self) -> None:
        for layer in self.layers:
            for name, buffer in layer.attention.named_buffers():
                if name.startswith(("k_cache", "v_cache")):
                    buffer.zero_()


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())
