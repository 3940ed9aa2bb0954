"""The SimHash collision probability (1 − arccos(x)/π)^τ of two unit vectors with dot product x, and its
derivative: YOSO-E's attention weight and the exact gradient that the sampled YOSO's backward can use."""
from __future__ import annotations

import math

import torch

__all__ = ["collision_prob", "collision_prob_and_grad", "collision_prob_grad", "CollisionProb"]

# The derivative of arccos is infinite at ±1 (a query parallel to a key); clamping 1 − x² keeps it finite.
_SQRT_EPS = 1e-12


def _base(x: torch.Tensor) -> torch.Tensor:
    """1 − arccos(x)/π (a new tensor)."""
    return torch.acos(x).mul_(-1.0 / math.pi).add_(1.0)


def _power(base: torch.Tensor, n: int) -> torch.Tensor:
    """base^n for an integer n ≥ 0, a new tensor, by repeated squaring in place (five products for n = 11):
    measured 1.5× faster than `Tensor.pow(n)` on a CPU (n = 11, 2^20 floats: 2.95 vs 4.50 ms)."""
    if n < 0:
        raise ValueError(f"the exponent must be an integer >= 0, got {n}")
    if n == 0:
        return torch.ones_like(base)
    out = base.clone()
    for bit in bin(n)[3:]:  # the bits after the leading one, high to low
        out.mul_(out)
        if bit == "1":
            out.mul_(base)
    return out


def collision_prob(x: torch.Tensor, tau: int) -> torch.Tensor:
    """(1 − arccos(x)/π)^τ for x already in [−1, 1]."""
    return _power(_base(x), tau)


def collision_prob_and_grad(x: torch.Tensor, tau: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(collision_prob(x, τ), collision_prob_grad(x, τ)) sharing one arccos and one power."""
    base = _base(x)
    grad = _power(base, tau - 1)
    prob = base.mul_(grad)
    scale = torch.mul(x, x).neg_().add_(1.0).clamp_min_(_SQRT_EPS).rsqrt_().mul_(tau / math.pi)
    return prob, grad.mul_(scale)


def collision_prob_grad(x: torch.Tensor, tau: int) -> torch.Tensor:
    """d/dx (1 − arccos(x)/π)^τ = τ·(1 − arccos(x)/π)^(τ−1) / (π·√(1 − x²)), finite at x = ±1."""
    return collision_prob_and_grad(x, tau)[1]


class CollisionProb(torch.autograd.Function):
    """(1 − arccos(x)/π)^τ elementwise, with a derivative that stays finite where autograd's is infinite."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: int) -> torch.Tensor:
        x = x.clamp(-1.0, 1.0)  # rounding can push a dot product of unit vectors just past ±1
        ctx.save_for_backward(x)
        ctx.tau = tau
        return collision_prob(x, tau)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * collision_prob_grad(x, ctx.tau), None
