"""Hadamard matrices for SpinQuant's rotations, of every size n = 2^k * m where m is 1 or p + 1 for a
prime p = 3 (mod 4) (Sylvester's doubling times Paley's construction): 1B's 2048 and 8192, 3B's 3072
(12 * 256), head dims 64 and 128, and odd test shapes such as 96, 160 or 192.

The online transform applies H = A (x) B as two small matrix products, A X B^T, instead of one n x n
product or log2(n) elementwise butterflies: both factors are tiny constants and the products run in
the backend's matmul kernels. For powers of two the result equals the Sylvester (Walsh-Hadamard)
matrix that Meta's SpinQuant releases fold into their down projections.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from handheld.core.errors import HandheldError


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _paley(m: int) -> torch.Tensor:
    """Paley's type-I Hadamard matrix of order m = p + 1, p prime and p = 3 (mod 4); entries +-1."""
    p = m - 1
    residues = {(i * i) % p for i in range(1, p)}
    chi = torch.tensor([0] + [1 if d in residues else -1 for d in range(1, p)], dtype=torch.float64)
    jacobsthal = torch.stack([chi[(torch.arange(p) - i) % p] for i in range(p)])  # Q[i, j] = chi(j - i)
    skew = torch.zeros(m, m, dtype=torch.float64)
    skew[0, 1:] = 1
    skew[1:, 0] = -1
    skew[1:, 1:] = jacobsthal
    return skew + torch.eye(m, dtype=torch.float64)


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _odd_part_order(n: int) -> int | None:
    """The smallest factor m (1 or p + 1) that, times a power of two, makes n; None when there is none."""
    power = n & -n  # the largest power of two dividing n
    while power >= 1:
        m = n // power
        if m == 1 or (m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3):
            return m
        power //= 2
    return None


def check_hadamard_size(n: int, what: str) -> None:
    if n < 1 or _odd_part_order(n) is None:
        raise HandheldError(
            f"{what} is {n}: no Hadamard matrix of that size is available (handheld builds sizes "
            "2^k * m with m = 1 or m = p + 1 for a prime p = 3 mod 4, e.g. 2048, 3072 = 12 * 256, 192 = 12 * 16)"
        )


@functools.lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal (A, B), float64, with H_n = A (x) B and both factors as small as the size allows."""
    check_hadamard_size(n, "the Hadamard size")
    m = _odd_part_order(n)
    power = n // m
    if m == 1:  # split the power of two evenly between the factors
        left = 2 ** ((power.bit_length() - 1) // 2)
        a, b = _sylvester(left), _sylvester(power // left)
    else:
        a, b = _sylvester(power), _paley(m)
    return a / a.shape[0] ** 0.5, b / b.shape[0] ** 0.5


def hadamard_matrix(n: int) -> torch.Tensor:
    """The orthonormal n x n Hadamard matrix H (float64), H @ H.T = I."""
    a, b = hadamard_factors(n)
    return torch.kron(a, b)


def random_hadamard(n: int, generator: torch.Generator) -> torch.Tensor:
    """H times a random diagonal of signs: an orthogonal matrix that spreads every axis evenly (QuaRot's
    and SpinQuant's starting point)."""
    signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    return hadamard_matrix(n) * signs


def apply_hadamard(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """H x for every vector on x's last axis, with H = A (x) B: reshape to [.., a, b], then A X B^T.

    Written as two `linear`s with constant weights, which backends delegate (XNNPACK leaves `matmul`
    with a constant operand to the portable kernels)."""
    grid = x.reshape(*x.shape[:-1], a.shape[0], b.shape[0])
    right = F.linear(grid, b)  # X B^T
    both = F.linear(right.transpose(-1, -2), a)  # (A X B^T)^T
    return both.transpose(-1, -2).reshape(x.shape)
