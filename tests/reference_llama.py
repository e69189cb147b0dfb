"""An independent, deliberately naive Llama 3 forward pass used as a test oracle.

Written the way Meta's reference code reads (complex RoPE, repeated KV heads, full causal attention,
no cache), sharing nothing with `handheld.core.llama.model` but the checkpoint's tensor names.
"""

import math

import torch
import torch.nn.functional as F


def scaled_frequencies(args) -> torch.Tensor:
    head_dim = args.attn_head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if not args.use_scaled_rope:
        return freqs
    low_wavelen = args.rope_original_context / args.rope_low_freq_factor
    high_wavelen = args.rope_original_context / args.rope_high_freq_factor
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / args.rope_scale_factor)
        else:
            smooth = (args.rope_original_context / wavelen - args.rope_low_freq_factor) / (
                args.rope_high_freq_factor - args.rope_low_freq_factor
            )
            out.append((1 - smooth) * freq / args.rope_scale_factor + smooth * freq)
    return torch.tensor(out)


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x, freqs_cis):
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_complex * freqs_cis[:, None, :]).flatten(-2)


@torch.no_grad()
def reference_logits(args, state: dict, tokens: list[int]) -> torch.Tensor:
    """Logits [T, vocab] for `tokens` starting at position 0, in float32."""
    s = {k: v.float() for k, v in state.items()}
    seq = len(tokens)
    n_heads, n_kv, hd = args.n_heads, args.kv_heads, args.attn_head_dim
    angles = torch.outer(torch.arange(seq).float(), scaled_frequencies(args))
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
    h = s["tok_embeddings.weight"][torch.tensor(tokens)]
    for i in range(args.n_layers):
        p = f"layers.{i}."
        x = rms_norm(h, s[p + "attention_norm.weight"], args.norm_eps)
        q = rotate((x @ s[p + "attention.wq.weight"].T).view(seq, n_heads, hd), freqs_cis)
        k = rotate((x @ s[p + "attention.wk.weight"].T).view(seq, n_kv, hd), freqs_cis)
        v = (x @ s[p + "attention.wv.weight"].T).view(seq, n_kv, hd)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        attn = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)
        h = h + attn.transpose(0, 1).reshape(seq, n_heads * hd) @ s[p + "attention.wo.weight"].T
        x = rms_norm(h, s[p + "ffn_norm.weight"], args.norm_eps)
        gate = F.silu(x @ s[p + "feed_forward.w1.weight"].T) * (x @ s[p + "feed_forward.w3.weight"].T)
        h = h + gate @ s[p + "feed_forward.w2.weight"].T
    out = s.get("output.weight", s["tok_embeddings.weight"])
    return rms_norm(h, s["norm.weight"], args.norm_eps) @ out.T
