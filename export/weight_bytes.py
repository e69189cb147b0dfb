"""What a quantized model's weights cost once XNNPACK packs them: bytes by kind, for `inspect` and the roofline."""

from __future__ import annotations

from torch import nn

from handheld.quant.linears import CLASSIFIER
# XNNPACK stores 4-bit group scales as bf16 (torchao keeps them fp32 in eager): one constant, with the byte plan.
from handheld.quant.mixed_precision import FOUR_BIT_SCALE_BYTES as GROUP_SCALE_BYTES
from handheld.quant.torchao_adapter import int_bits, int_weight, is_int_weight


def weight_bytes_by_kind(model: nn.Module) -> dict[str, int]:
    """Bytes of stored weights by kind, as XNNPACK packs them: 4-bit values two to a byte, bf16 group scales.
    "embedding" is a float table not shared with the classifier (decode reads one row of it per token)."""
    split = {"4-bit linears": 0, "scales": 0, "8-bit embedding": 0, "embedding": 0, "other": 0}
    # A tied table is listed once (as the embedding) but read whole by the classifier every token.
    tied = model.tok_embeddings.weight is getattr(model, CLASSIFIER).weight
    for name, param in model.named_parameters():
        if not is_int_weight(param):
            untied_embedding = name.startswith("tok_embeddings") and not tied
            split["embedding" if untied_embedding else "other"] += param.numel() * param.element_size()
            continue
        bits, (ints, scales) = int_bits(param), int_weight(param)
        values = ints.numel() * bits // 8
        if name.startswith("tok_embeddings"):
            split["8-bit embedding"] += values
        elif name.startswith(CLASSIFIER + "."):
            kind = f"{bits}-bit classifier"
            split[kind] = split.get(kind, 0) + values
        else:
            kind = f"{bits}-bit linears"  # 8-bit ones: block linears kept at 8 bits (mixed precision)
            split[kind] = split.get(kind, 0) + values
        scale_bytes = GROUP_SCALE_BYTES if bits == 4 else scales.element_size()
        split["scales"] += scales.numel() * scale_bytes
    return split
