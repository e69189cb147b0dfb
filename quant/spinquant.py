"""SpinQuant's rotations (Liu et al. 2024) as transforms on a float Llama.

With row-vector activations and weights W[out, in]:
- `fold_norms`: every RMSNorm gain moves into the linears that read the norm's output (W <- W diag(g)),
  so the norms become weightless and commute with a rotation of the residual stream;
- massive channels (`massive_channels`: the few residual channels that hold most of the normalized stream's
  energy, up to ~all of a token's in SmolLM2, where a later norm's gain nearly zeroes them) can be left out: their
  gains stay in the norms and R1 is the identity on them. Folded and rotated with the rest, their energy (which the
  gain discarded) multiplies every rotated weight's rounding error: on SmolLM2 that made RTN after a random R1
  worse than RTN without one; GPTQ, which sees that energy in its Hessians, does better with them rotated
  (benchmarks/results/rotations_smollm2.json);
- R1 (dim x dim) rotates the residual stream h -> h R1: the embedding E <- E R1, every reader of the
  stream (wq, wk, wv, w1, w3, output) W <- W R1, every writer (wo, w2) W <- R1^T W;
- R2 (head_dim x head_dim, one per layer) rotates each head's values: wv's head rows Wv_h <- R2^T Wv_h,
  wo's head columns Wo_h <- Wo_h R2 (attention mixes positions, not features, so it commutes);
- R4 (`spinquant_r4.fold_r4`) is a fixed Hadamard before each w2, folded in and applied online.
Without quantization every step leaves the network's function unchanged; with it, rotated weights and
activations have fewer outliers, so 4-bit groups and 8-bit tokens lose less.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from handheld.core.llama.config import ModelArgs
from handheld.core.llama.hadamard import check_hadamard_size, random_hadamard
from handheld.quant.linears import untie_embedding

READERS = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
WRITERS = ("attention.wo", "feed_forward.w2")


MASSIVE_SHARE = 5.0  # a massive channel holds this many times a channel's even share of the normalized stream's energy


@dataclass
class Rotations:
    r1: torch.Tensor  # [dim, dim]; the identity on `kept`
    r2: torch.Tensor  # [n_layers, head_dim, head_dim]
    kept: tuple[int, ...] = ()  # residual channels R1 leaves alone (their norm gains are not folded)


def check_rotatable(args: ModelArgs) -> None:
    check_hadamard_size(args.dim, "the model width (SpinQuant's R1)")
    check_hadamard_size(args.attn_head_dim, "the head dimension (SpinQuant's R2)")
    check_hadamard_size(args.ffn_hidden_dim, "the FFN width (SpinQuant's online R4)")


def initial_rotations(args: ModelArgs, seed: int, kept: tuple[int, ...] = ()) -> Rotations:
    """Random Hadamard matrices, the paper's starting point (better than random orthogonal ones). With `kept`
    channels, R1 is the identity on them and a random orthogonal matrix on the others (no Hadamard has their size)."""
    gen = torch.Generator().manual_seed(seed)
    r1 = random_hadamard(args.dim, gen) if not kept else _orthogonal_except(args.dim, kept, gen)
    r2 = torch.stack([random_hadamard(args.attn_head_dim, gen) for _ in range(args.n_layers)])
    return Rotations(r1, r2, tuple(kept))


def _orthogonal_except(n: int, kept: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    rest = torch.tensor([c for c in range(n) if c not in set(kept)])
    q, r = torch.linalg.qr(torch.randn(len(rest), len(rest), generator=gen, dtype=torch.float64))
    r1 = torch.eye(n, dtype=torch.float64)
    r1[rest[:, None], rest[None, :]] = q * torch.sign(torch.diagonal(r))[None, :]  # Haar-distributed
    return r1


@torch.no_grad()
def channel_energy(model: nn.Module, sequences: torch.Tensor) -> torch.Tensor:
    """[dim] energy of each residual channel in the normalized stream (each token's squares over their mean), summed
    at every RMSNorm's input over the rows `sequences` [N, T] of the float model, before any folding."""
    energy = torch.zeros(model.args.dim, dtype=torch.float64)

    def add(_module, inputs):
        x = inputs[0].double().reshape(-1, model.args.dim)
        energy.add_((x * x / (x * x).mean(-1, keepdim=True).clamp_min(1e-30)).sum(0))

    hooks = [norm.register_forward_pre_hook(add) for norm in _norms(model)]
    try:
        for row in sequences:
            model.forward_batch(row[None])
    finally:
        for hook in hooks:
            hook.remove()
    return energy


def massive_channels(model: nn.Module, sequences: torch.Tensor, share: float = MASSIVE_SHARE) -> tuple[int, ...]:
    """Residual channels holding over `share` times their even share of the normalized stream's energy."""
    return channels_over(channel_energy(model, sequences), share)


def channels_over(energy: torch.Tensor, share: float = MASSIVE_SHARE) -> tuple[int, ...]:
    """The channels of `channel_energy`'s result holding over `share` times their even share."""
    return tuple(sorted(int(c) for c in torch.nonzero(energy / energy.mean() > share).flatten()))


def _norms(model: nn.Module) -> list[nn.Module]:
    return [n for layer in model.layers for n in (layer.attention_norm, layer.ffn_norm)] + [model.norm]


def fold_norms(model: nn.Module, kept: tuple[int, ...] = ()) -> nn.Module:
    """Untie the classifier, then move every RMSNorm gain into the linears that read the norm, except the gains
    of the `kept` channels (R1 leaves those channels alone, so the norms still commute with it)."""
    model = untie_embedding(model)
    folded = torch.ones(model.args.dim, dtype=torch.bool)
    folded[list(kept)] = False
    with torch.no_grad():
        for layer in model.layers:
            for norm, readers in ((layer.attention_norm, READERS[:3]), (layer.ffn_norm, READERS[3:])):
                _fold_norm(norm, [layer.get_submodule(name) for name in readers], folded)
        _fold_norm(model.norm, [model.output], folded)
    return model


def _fold_norm(norm: nn.Module, readers: list[nn.Module], folded: torch.Tensor) -> None:
    gain = torch.where(folded, norm.weight, torch.ones_like(norm.weight))
    for linear in readers:
        linear.weight.mul_(gain[None, :])
    norm.weight.copy_(torch.where(folded, torch.ones_like(norm.weight), norm.weight))


def rotated_state(state: dict[str, torch.Tensor], rotations: Rotations, args: ModelArgs) -> dict[str, torch.Tensor]:
    """The rotated weights of a norm-folded model, as a differentiable function of the rotations."""
    r1 = rotations.r1.to(state["output.weight"].dtype)
    out = {"tok_embeddings.weight": state["tok_embeddings.weight"] @ r1, "output.weight": state["output.weight"] @ r1}
    head_dim = args.attn_head_dim
    for i in range(args.n_layers):
        prefix = f"layers.{i}."
        r2 = rotations.r2[i].to(r1.dtype)
        for name in READERS:
            out[f"{prefix}{name}.weight"] = state[f"{prefix}{name}.weight"] @ r1
        wv = out[f"{prefix}attention.wv.weight"]
        out[f"{prefix}attention.wv.weight"] = (r2.T @ wv.reshape(-1, head_dim, args.dim)).reshape(wv.shape)
        wo = state[f"{prefix}attention.wo.weight"]
        wo = (wo.reshape(args.dim, -1, head_dim) @ r2).reshape(wo.shape)
        out[f"{prefix}attention.wo.weight"] = r1.T @ wo
        out[f"{prefix}feed_forward.w2.weight"] = r1.T @ state[f"{prefix}feed_forward.w2.weight"]
    return out


def rotatable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights `rotated_state` reads (every linear and the embedding), detached."""
    return {name: p.detach() for name, p in model.named_parameters() if not name.endswith("norm.weight")}


def apply_rotations(model: nn.Module, rotations: Rotations) -> nn.Module:
    """Merge R1 and R2 into a norm-folded model's weights (computed in float64, stored in their dtype)."""
    state = {k: v.double() for k, v in rotatable_state(model).items()}
    merged = rotated_state(state, Rotations(rotations.r1.double(), rotations.r2.double(), rotations.kept), model.args)
    with torch.no_grad():
        for name, value in merged.items():
            param = model.get_parameter(name)
            param.copy_(value.to(param.dtype))
    return model
