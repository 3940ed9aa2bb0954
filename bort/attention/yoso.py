"""YOSO attention: Bernoulli sampling through SimHash collisions (Zeng et al., 2021), in linear time on CPU.

With Q and K rows L2-normalised, two vectors at angle θ share a τ-bit SimHash code with probability
(1 − θ/π)^τ. YOSO-E (`yoso_e`) uses that expectation as the attention weight, Y = E·V with
E_ij = (1 − arccos(q_i·k_j)/π)^τ, in O(n²). The sampled YOSO (`yoso`) draws m hashes; per hash every key adds
its value to the bucket of its code and every query reads its own bucket, so the average over hashes is an
unbiased estimate of E·V in O(n·m·d) time and O(2^τ·d) table memory, never forming an n×n tensor. Both then
L2-normalise the output rows, which replaces softmax's denominator (as in the reference model, where Q and K
are normalised before the cumulation and the output right after it; the optional YOSO-C convolution over V is
added after that normalisation).

Backward of the sampled path: by default the LSH backward of the paper, which replaces the derivative of
(1 − arccos(x)/π)^τ by (τ/2)·(1 − arccos(x)/π)^τ so that the Q and K gradients are estimated from the same
collisions as the forward pass (∇V is an exact cumulation); those collisions are enumerated as (query, key)
pairs from codes sorted per hash and bucket offsets, O(pairs·d), rather than through 2^τ × d² bucket tables
(at n = 4096, τ = 12 the pairs made the backward ~40× faster). `exact_backward=True` computes the exact gradient
of YOSO-E instead, in O(n²) time and O(n²) memory per batch×head chunk.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_attention

__all__ = ["yoso_e", "yoso", "hash_codes", "YosoAttention", "YosoEAttention"]

# The exact backward's n×n temporaries are chunked over batch×head to about 4 × 2^18 floats (4 MB): far below
# glibc's mmap threshold, so they are reused rather than page-faulted in on every chunk.
_TABLE_BUDGET = 1 << 18
# The derivative of arccos is infinite at ±1 (a query parallel to a key); clamping 1 − x² keeps it finite.
_SQRT_EPS = 1e-12
_MAX_HASH_CODE_LEN = 24


# --- the collision probability ------------------------------------------------------------------------------
def _collision_prob_grad(x: torch.Tensor, tau: int) -> torch.Tensor:
    """d/dx (1 − arccos(x)/π)^τ = τ·(1 − arccos(x)/π)^(τ−1) / (π·√(1 − x²)), finite at x = ±1."""
    base = 1.0 - torch.acos(x) / math.pi
    return tau * base.pow(tau - 1) / (math.pi * (1.0 - x * x).clamp_min(_SQRT_EPS).sqrt())


class _CollisionProb(torch.autograd.Function):
    """(1 − arccos(x)/π)^τ elementwise, with a derivative that stays finite where autograd's is infinite."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: int) -> torch.Tensor:
        x = x.clamp(-1.0, 1.0)  # rounding can push a dot product of unit vectors just past ±1
        ctx.save_for_backward(x)
        ctx.tau = tau
        return (1.0 - torch.acos(x) / math.pi).pow(tau)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * _collision_prob_grad(x, ctx.tau), None


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
           hash_code_len: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(f"q, k, v must be (batch, heads, n, head_dim) with matching shapes; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"key_padding_mask must be (batch, n) = {(q.shape[0], q.shape[2])}, "
                         f"got {tuple(key_padding_mask.shape)}")
    if not isinstance(hash_code_len, int) or isinstance(hash_code_len, bool) \
            or not 1 <= hash_code_len <= _MAX_HASH_CODE_LEN:
        raise ValueError(f"hash_code_len must be an integer in 1..{_MAX_HASH_CODE_LEN} (2^τ buckets), "
                         f"got {hash_code_len!r}")


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None):
    """Normalised Q and K; padded positions zeroed with `masked_fill` (not a product) so that garbage,
    even NaN, in padded slots cannot reach real tokens. A zero value makes a padded key contribute nothing."""
    if key_padding_mask is not None:
        pad = ~key_padding_mask.bool()[:, None, :, None]
        q, k, v = q.masked_fill(pad, 0.0), k.masked_fill(pad, 0.0), v.masked_fill(pad, 0.0)
    return F.normalize(q, p=2.0, dim=-1), F.normalize(k, p=2.0, dim=-1), v


def _finish(y: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Row L2 normalisation; padded query rows are zero (as in the reference model)."""
    y = F.normalize(y, p=2.0, dim=-1)
    if key_padding_mask is not None:
        y = y.masked_fill(~key_padding_mask.bool()[:, None, :, None], 0.0)
    return y


# --- YOSO-E ----------------------------------------------------------------------------------------------------
def expectation_weights(q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                        hash_code_len: int = 8) -> torch.Tensor:
    """E = (1 − arccos(q̂·k̂)/π)^τ, (batch, heads, n, n), zero at padded keys; for inspection (O(n²))."""
    _check(q, k, q, key_padding_mask, hash_code_len)
    qn, kn, _ = _prepare(q, k, q, key_padding_mask)
    e = _CollisionProb.apply(qn @ kn.transpose(-1, -2), hash_code_len)
    if key_padding_mask is not None:
        e = e.masked_fill(~key_padding_mask.bool()[:, None, None, :], 0.0)
    return e


def yoso_e(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
           hash_code_len: int = 8) -> torch.Tensor:
    """YOSO-E: normalise(E·V) with E the SimHash collision probability; exact gradients through autograd.

    q, k, v: (batch, heads, n, head_dim); key_padding_mask: (batch, n), True/1 = real token.
    Returns (batch, heads, n, head_dim). O(n²) time and memory.
    """
    _check(q, k, v, key_padding_mask, hash_code_len)
    qn, kn, v = _prepare(q, k, v, key_padding_mask)
    e = _CollisionProb.apply(qn @ kn.transpose(-1, -2), hash_code_len)
    return _finish(e @ v, key_padding_mask)


# --- hashing and bucket cumulation -------------------------------------------------------------------------------
def hash_codes(x: torch.Tensor, planes: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """SimHash codes: x (G, n, d), planes (G, d, m·τ) → int64 (G, m, n) codes in [0, 2^τ).

    Bit t of hash h says whether x lies on the positive side of hyperplane h·τ + t. The bits are packed by a
    matmul with powers of two in float32 (exact for τ ≤ 24): ~15× faster on CPU than integer shifts and sums."""
    g, n, _ = x.shape
    bits = (x @ planes > 0).to(torch.float32).view(g, n, -1, hash_code_len)
    powers = torch.exp2(torch.arange(hash_code_len, device=x.device, dtype=torch.float32))
    return (bits @ powers).long().transpose(1, 2).contiguous()


def _bucket_sums(src_codes: torch.Tensor, src_x: torch.Tensor, dst_codes: torch.Tensor,
                 hash_code_len: int) -> torch.Tensor:
    """out[g, i] = Σ_h Σ_j [dst_h(i) = src_h(j)]·src_x[g, j]: the unweighted cumulation (forward and ∇V).

    One group and one hash at a time with a table and a read buffer allocated once: the table (2^τ × d) stays
    in cache and nothing is allocated inside the loop, which measured 2× faster than batching hashes into
    one larger table."""
    groups, num_hash, _ = src_codes.shape
    out = src_x.new_zeros(groups, dst_codes.shape[-1], src_x.shape[-1])
    table = src_x.new_empty(1 << hash_code_len, src_x.shape[-1])
    read = src_x.new_empty(dst_codes.shape[-1], src_x.shape[-1])
    for g in range(groups):
        for h in range(num_hash):
            table.zero_()
            table.index_add_(0, src_codes[g, h], src_x[g])
            torch.index_select(table, 0, dst_codes[g, h], out=read)
            out[g] += read
    return out


# Colliding (query, key) pairs handled at once in the LSH backward: 2^16 pairs × d values stays a few MB.
_PAIR_BUDGET = 1 << 16


def _pair_grads(q_codes: torch.Tensor, k_codes: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over hashes and colliding pairs (i, j) of a_ij·k_j into ∇q_i and a_ij·q_i into ∇k_j, a_ij = g_i·v_j.

    A bucket table of v ⊗ k would cost 2^τ·d² per hash; instead keys are sorted by (hash, code) and each query
    finds its colliding keys from its bucket's offset in that order, so the work is O(pairs·d): with τ bits and random directions a
    query collides with about n/2^τ keys per hash. Pairs are processed in chunks of `_PAIR_BUDGET`.
    """
    groups, num_hash, n = q_codes.shape
    gq, gk = torch.zeros_like(q), torch.zeros_like(k)
    shift = int(max(int(q_codes.max()), int(k_codes.max())) + 1) if q_codes.numel() else 1
    hash_offsets = (torch.arange(num_hash, device=q.device) * shift).view(num_hash, 1)
    tokens = torch.arange(n, device=q.device).repeat(num_hash)
    for g in range(groups):
        keys = (k_codes[g] + hash_offsets).reshape(-1)
        queries = (q_codes[g] + hash_offsets).reshape(-1)
        order = keys.argsort(stable=True)
        # Keys per (hash, code) bucket and where each bucket begins in sorted order: a query's colliding keys
        # are the run order[start : start + count] of its own bucket.
        bucket_counts = torch.bincount(keys, minlength=num_hash * shift)
        bucket_start = bucket_counts.cumsum(0) - bucket_counts
        start, counts = bucket_start[queries], bucket_counts[queries]
        ends = counts.cumsum(0)
        total = int(ends[-1]) if ends.numel() else 0
        first = 0
        while first < queries.numel() and total:
            # the largest run of queries whose pairs fit the budget (at least one query)
            done = int(ends[first - 1]) if first else 0
            last = int(torch.searchsorted(ends, done + _PAIR_BUDGET, right=True))
            last = max(last, first + 1)
            chunk_counts = counts[first:last]
            qi = torch.repeat_interleave(torch.arange(first, last, device=q.device), chunk_counts)
            within = torch.arange(qi.numel(), device=q.device) - (ends[qi] - counts[qi] - done)
            kj = tokens[order[start[qi] + within]]
            qt = tokens[qi]
            # index_select rather than grad[g, qt]: advanced indexing takes a much slower path on CPU
            a = (grad[g].index_select(0, qt) * v[g].index_select(0, kj)).sum(-1, keepdim=True)
            gq[g].index_add_(0, qt, k[g].index_select(0, kj).mul_(a))
            gk[g].index_add_(0, kj, q[g].index_select(0, qt).mul_(a))
            first = last
    return gq, gk


def _exact_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, hash_code_len: int):
    """Exact gradients of E·V (E the collision probability of normalised q, k) on (G, n, d) tensors,
    O(n²) per group, with groups chunked so that the n×n temporaries stay within a few tables' budget."""
    groups, n, _ = q.shape
    step = max(1, (4 * _TABLE_BUDGET) // max(1, n * n))
    gq, gk, gv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for g0 in range(0, groups, step):
        sl = slice(g0, g0 + step)
        x = (q[sl] @ k[sl].transpose(-1, -2)).clamp(-1.0, 1.0)
        e = (1.0 - torch.acos(x) / math.pi).pow(hash_code_len)
        a = (grad[sl] @ v[sl].transpose(-1, -2)) * _collision_prob_grad(x, hash_code_len)
        gq[sl], gk[sl], gv[sl] = a @ k[sl], a.transpose(-1, -2) @ q[sl], e.transpose(-1, -2) @ grad[sl]
    return gq, gk, gv


class _LSHCumulation(torch.autograd.Function):
    """Sampled Σ_h Σ_j [h(q_i) = h(k_j)]·v_j / m on normalised q, k; (batch, heads, n, d) in and out."""

    @staticmethod
    def forward(ctx, q, k, v, hash_code_len: int, num_hash: int, generator, exact_backward: bool):
        b, h, n, d = q.shape
        qf, kf, vf = (t.reshape(b * h, n, t.shape[-1]) for t in (q, k, v))
        # Independent hyperplanes per batch×head, as in the reference; one draw serves all m hashes.
        planes = torch.randn(b * h, d, num_hash * hash_code_len, generator=generator, dtype=q.dtype,
                             device=q.device)
        q_codes, k_codes = hash_codes(qf, planes, hash_code_len), hash_codes(kf, planes, hash_code_len)
        y = _bucket_sums(k_codes, vf, q_codes, hash_code_len) / num_hash
        ctx.save_for_backward(qf, kf, vf, q_codes, k_codes)
        ctx.config = (b, h, hash_code_len, num_hash, exact_backward)
        return y.view(b, h, n, v.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        qf, kf, vf, q_codes, k_codes = ctx.saved_tensors
        b, h, tau, num_hash, exact = ctx.config
        gf = grad.reshape(qf.shape[0], qf.shape[1], -1)
        if exact:
            gq, gk, gv = _exact_grads(qf, kf, vf, gf, tau)
        else:
            # Same collisions as the forward pass; ∇V is the transposed cumulation, ∇Q and ∇K use the
            # (τ/2)·E approximation of dE/dx, which makes them weighted cumulations.
            scale = tau / (2.0 * num_hash)
            gv = _bucket_sums(q_codes, gf, k_codes, tau) / num_hash
            gq, gk = _pair_grads(q_codes, k_codes, qf, kf, vf, gf)
            gq, gk = gq * scale, gk * scale
        shape = lambda t: t.view(b, h, t.shape[1], t.shape[2])  # noqa: E731
        return shape(gq), shape(gk), shape(gv), None, None, None, None


def yoso(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
         hash_code_len: int = 8, num_hash: int = 32, generator: torch.Generator | None = None,
         exact_backward: bool = False) -> torch.Tensor:
    """Sampled YOSO: normalise(LSH estimate of E·V) with `num_hash` τ-bit SimHashes, linear in n.

    q, k, v: (batch, heads, n, head_dim); key_padding_mask: (batch, n), True/1 = real token; `generator`
    seeds the hyperplanes. Backward: LSH estimate by default, exact YOSO-E gradient with `exact_backward`.
    Returns (batch, heads, n, head_dim).
    """
    _check(q, k, v, key_padding_mask, hash_code_len)
    if not isinstance(num_hash, int) or isinstance(num_hash, bool) or num_hash < 1:
        raise ValueError(f"num_hash must be a positive integer, got {num_hash!r}")
    qn, kn, v = _prepare(q, k, v, key_padding_mask)
    y = _LSHCumulation.apply(qn.contiguous(), kn.contiguous(), v.contiguous(), hash_code_len, num_hash,
                             generator, bool(exact_backward))
    return _finish(y, key_padding_mask)


# --- mechanisms ---------------------------------------------------------------------------------------------------
_PARAMS: dict[str, Any] = {"hash_code_len": 8, "num_hash": 32, "conv_window": None, "exact_backward": False}


@register_attention("yoso")
class YosoAttention(nn.Module):
    """Sampled YOSO behind the registry interface.

    `config.attention_params`: hash_code_len τ (default 8, suited to BERT-length inputs; the LRA configs use
    11-12 at n ≥ 1000), num_hash m (32), conv_window w (None; an integer adds YOSO-C's depthwise convolution
    over V along the sequence, one kernel per head, after the output normalisation), exact_backward (False).
    `need_weights=True` returns the expected weights E (not probabilities: rows are not normalised).
    """

    expectation = False

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        params = dict(getattr(config, "attention_params", None) or {})
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ValueError(f"unknown YOSO attention parameter(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(_PARAMS))}")
        params = {**_PARAMS, **params}
        self.hash_code_len = params["hash_code_len"]
        self.num_hash = params["num_hash"]
        self.exact_backward = bool(params["exact_backward"])
        window = params["conv_window"]
        heads = config.num_attention_heads
        self.conv: nn.Conv2d | None = None
        if window is not None:
            if not isinstance(window, int) or isinstance(window, bool) or window < 1:
                raise ValueError(f"conv_window must be a positive integer or None, got {window!r}")
            # (w, 1) kernel on (batch, heads, n, d): a 1-D convolution along the sequence per head, shared
            # across the head's dimensions, as YOSO-C defines it.
            self.conv = nn.Conv2d(heads, heads, kernel_size=(window, 1), padding=(window // 2, 0),
                                  groups=heads, bias=False)
        # Fail at construction rather than at the first batch.
        _check(torch.empty(1, 1, 1, 1), torch.empty(1, 1, 1, 1), torch.empty(1, 1, 1, 1), None,
               self.hash_code_len)
        if not self.expectation and (not isinstance(self.num_hash, int) or self.num_hash < 1):
            raise ValueError(f"num_hash must be a positive integer, got {self.num_hash!r}")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.expectation:
            out = yoso_e(q, k, v, key_padding_mask, hash_code_len=self.hash_code_len)
        else:
            out = yoso(q, k, v, key_padding_mask, hash_code_len=self.hash_code_len, num_hash=self.num_hash,
                       exact_backward=self.exact_backward)
        if self.conv is not None:
            vm = v if key_padding_mask is None else v.masked_fill(~key_padding_mask.bool()[:, None, :, None], 0.0)
            out = out + self.conv(vm)[:, :, : v.shape[2]]  # an even window yields one extra row
        weights = expectation_weights(q, k, key_padding_mask, self.hash_code_len) if need_weights else None
        return out, weights


@register_attention("yoso_e")
class YosoEAttention(YosoAttention):
    """YOSO-E (the exact expectation, O(n²)) with the same parameters; num_hash is ignored."""

    expectation = True
