"""YOSO attention: Bernoulli sampling through SimHash collisions (Zeng et al., 2021), in linear time on CPU.

With Q and K rows L2-normalised, two vectors at angle θ share a τ-bit SimHash code with probability
(1 − θ/π)^τ. YOSO-E (`yoso_e`) uses that expectation as the attention weight, Y = E·V with
E_ij = (1 − arccos(q_i·k_j)/π)^τ, in O(n²). The sampled YOSO (`yoso`) draws m hashes (Gaussian hyperplanes,
or fast Hadamard rotations: `hashing`); every query sums the values of the keys that share its bucket in each
hash, so the average over hashes is an unbiased estimate of E·V, never forming an n×n tensor. Both then
L2-normalise the output rows, which replaces softmax's denominator (as in the reference model, where Q and K
are normalised before the cumulation and the output right after it; the optional YOSO-C convolution over V is
added after that normalisation).

Backward (`backward`): by default the paper's rule, which replaces the derivative of (1 − arccos(x)/π)^τ by
(τ/2)·(1 − arccos(x)/π)^τ, "lsh" — for `yoso` estimated from the same collisions as the forward pass (∇V is
the transposed cumulation), for `yoso_e` applied to E itself (as the paper's YOSO-E, the reference code and
Hugging Face's YOSO do). `yoso` also offers "lsh_expectation", the same rule on E in O(n²) (the reference
code's `n2_backward`), and both offer "exact", the exact gradient of YOSO-E, in O(n²) time and linear memory
(`exact_backward=True` is the older spelling of backward="exact").

Where the work happens: `yoso_lsh` (the autograd function, a batch×head at a time on every core),
`lsh_buckets` (bucket sorting and the sums over colliding pairs), `hashing` (the codes), `group_pool`
(the worker threads). Costs: hashing O(n·d·m·τ); the forward sums O(pairs·d) with pairs ≈ m·n²/2^τ for
spread-out inputs, switching to bucket tables, O(n·m·d) whatever the input, when pairs are many; the LSH
backward O(pairs·d) with dense blocks for crowded rows. At n = 4096, τ = 12 that is about 1.5 pairs per
query and hash (see bench/yoso.py for measured times against dense attention).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .collision_prob import CollisionProb, collision_prob
from .hashing import HASHING_METHODS, pack_bits
from .registry import AttentionParams, attention_params, is_integer, param, register_attention
from .yoso_lsh import BACKWARDS, EXPECTATION_BACKWARDS, LSHAttention

__all__ = ["yoso_e", "yoso_e_autograd", "yoso", "hash_codes", "YosoAttention", "YosoEAttention"]

_MAX_HASH_CODE_LEN = 24


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
           hash_code_len: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(f"q, k, v must be (batch, heads, n, head_dim) with matching shapes; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"key_padding_mask must be (batch, n) = {(q.shape[0], q.shape[2])}, "
                         f"got {tuple(key_padding_mask.shape)}")
    if not is_integer(hash_code_len) or not 1 <= hash_code_len <= _MAX_HASH_CODE_LEN:
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


def _resolve_backward(backward: str | None, exact_backward: bool, valid: tuple[str, ...]) -> str:
    """The backward rule from `backward` (None: the paper's "lsh") and the older `exact_backward` flag."""
    if backward is None:
        return "exact" if exact_backward else "lsh"
    if not isinstance(backward, str) or backward not in valid:
        raise ValueError(f"backward must be one of {', '.join(valid)}; got {backward!r}")
    if exact_backward and backward != "exact":
        raise ValueError(f"exact_backward=True asks for backward 'exact' but backward is {backward!r}: set one "
                         "of them")
    return backward


class _HalfTauCollisionProb(torch.autograd.Function):
    """(1 − arccos(x)/π)^τ elementwise with the paper's surrogate derivative (τ/2)·(1 − arccos(x)/π)^τ: the
    rule of YOSO-E's backward (and what the sampled LSH backward estimates)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tau: int) -> torch.Tensor:
        prob = collision_prob(x.clamp(-1.0, 1.0), tau)  # clamped as `CollisionProb`: no NaN at q ∥ k
        ctx.save_for_backward(prob)
        ctx.tau = tau
        return prob

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (prob,) = ctx.saved_tensors
        return grad * prob * (ctx.tau / 2.0), None


# --- YOSO-E ----------------------------------------------------------------------------------------------------
def expectation_weights(q: torch.Tensor, k: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                        hash_code_len: int = 8) -> torch.Tensor:
    """E = (1 − arccos(q̂·k̂)/π)^τ, (batch, heads, n, n), zero at padded keys; for inspection (O(n²))."""
    _check(q, k, q, key_padding_mask, hash_code_len)
    qn, kn, _ = _prepare(q, k, q, key_padding_mask)
    e = CollisionProb.apply(qn @ kn.transpose(-1, -2), hash_code_len)
    if key_padding_mask is not None:
        e = e.masked_fill(~key_padding_mask.bool()[:, None, None, :], 0.0)
    return e


def yoso_e(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
           hash_code_len: int = 8, backward: str = "lsh") -> torch.Tensor:
    """YOSO-E: normalise(E·V) with E the SimHash collision probability.

    q, k, v: (batch, heads, n, head_dim); key_padding_mask: (batch, n), True/1 = real token; `backward`:
    "lsh" (default: the paper's rule, dE/dx taken as (τ/2)·E, as the reference code and Hugging Face's YOSO)
    or "exact" (the exact derivative of E·V). Returns (batch, heads, n, head_dim). O(n²) time. On the CPU the
    work runs per batch×head on the worker threads (`yoso_lsh.LSHAttention` in expectation mode) in blocks of
    query rows, and the backward recomputes E instead of keeping it: memory linear in n. Elsewhere it is plain
    autograd (`yoso_e_autograd`).
    """
    _check(q, k, v, key_padding_mask, hash_code_len)
    backward = _resolve_backward(backward, False, EXPECTATION_BACKWARDS)
    if q.device.type != "cpu":
        return yoso_e_autograd(q, k, v, key_padding_mask, hash_code_len, backward)
    real = None if key_padding_mask is None else key_padding_mask.bool()
    # apply() takes no keywords: num_hash 1 and generator None (no hashing happens), backward, "simhash"
    # (unused), real, normalize, backward_hashes None, expectation.
    return LSHAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), hash_code_len, 1, None, backward,
                              "simhash", real, True, None, True)


def yoso_e_autograd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_padding_mask: torch.Tensor | None = None, hash_code_len: int = 8,
                    backward: str = "lsh") -> torch.Tensor:
    """YOSO-E as autograd ops over whole (batch, heads, n, n) tensors: any device, O(n²) memory (the path
    for GPUs; on the CPU the tests' reference for `yoso_e`). `backward` as in `yoso_e`."""
    _check(q, k, v, key_padding_mask, hash_code_len)
    backward = _resolve_backward(backward, False, EXPECTATION_BACKWARDS)
    qn, kn, v = _prepare(q, k, v, key_padding_mask)
    weight = _HalfTauCollisionProb if backward == "lsh" else CollisionProb
    e = weight.apply(qn @ kn.transpose(-1, -2), hash_code_len)
    return _finish(e @ v, key_padding_mask)


# --- hashing and bucket cumulation -------------------------------------------------------------------------------
def hash_codes(x: torch.Tensor, planes: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """SimHash codes: x (G, n, d), planes (G, d, m·τ) → int32 (G, m, n) codes in [0, 2^τ).

    Bit t of hash h says whether x lies on the positive side of hyperplane h·τ + t (see `hashing`)."""
    return pack_bits((x @ planes).transpose(-1, -2), hash_code_len)


def yoso(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
         hash_code_len: int = 8, num_hash: int = 32, generator: torch.Generator | None = None,
         exact_backward: bool = False, hashing: str = "simhash", backward_hashes: int | None = None,
         backward: str | None = None) -> torch.Tensor:
    """Sampled YOSO: normalise(LSH estimate of E·V) with `num_hash` τ-bit SimHashes, linear in n.

    q, k, v: (batch, heads, n, head_dim); key_padding_mask: (batch, n), True/1 = real token; `generator`
    seeds the hash functions; `hashing`: "simhash" (Gaussian hyperplanes), "hadamard" (structured rotations
    from the fast Walsh–Hadamard transform) or "fast_hadamard" (the paper's fast hash; see
    `bort.attention.hashing`). `backward`: "lsh" (None, the
    default: the paper's τ/2 rule estimated from the forward's collisions), "lsh_expectation" (the same rule on
    the expectation E, O(n²): the reference code's `n2_backward`), "exact" (the exact gradient of YOSO-E,
    O(n²); `exact_backward=True` says the same) or "exact_colliding" (YOSO v2's backward: the exact derivative
    on the pairs that collide in at least one hash, see `yoso_lsh.colliding_grads`; O(m·n²) here); `backward_hashes` b ≤ num_hash makes the LSH backward read only
    b of the hashes (an unbiased estimate of the same gradient, ~num_hash/b times the variance, ~b/num_hash of
    the backward's cost; None: all). Computed on the CPU (tensors on another device are copied
    there and back). Returns (batch, heads, n, head_dim).
    """
    _check(q, k, v, key_padding_mask, hash_code_len)
    if not is_integer(num_hash) or num_hash < 1:
        raise ValueError(f"num_hash must be a positive integer, got {num_hash!r}")
    _check_hashing(hashing)
    backward = _resolve_backward(backward, bool(exact_backward), BACKWARDS)
    _check_backward_hashes(backward_hashes, num_hash, backward)
    if q.device.type != "cpu":
        # The LSH sums are a CPU implementation (numpy bookkeeping): other devices round-trip through it.
        cpu = (None if key_padding_mask is None else key_padding_mask.cpu())
        return yoso(q.cpu(), k.cpu(), v.cpu(), cpu, hash_code_len, num_hash, generator, False,
                    hashing, backward_hashes, backward).to(q.device)
    real = None if key_padding_mask is None else key_padding_mask.bool()
    return LSHAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), hash_code_len, num_hash, generator,
                              backward, hashing, real, True, backward_hashes)


def _check_hashing(hashing: str) -> None:
    if hashing not in HASHING_METHODS:
        raise ValueError(f"hashing must be one of {', '.join(HASHING_METHODS)}; got {hashing!r}")


def _check_backward_hashes(backward_hashes: int | None, num_hash: int, backward: str) -> None:
    if backward_hashes is None:
        return
    if not is_integer(backward_hashes) or not 1 <= backward_hashes <= num_hash:
        raise ValueError(f"backward_hashes must be None or an integer in 1 … num_hash ({num_hash}), "
                         f"got {backward_hashes!r}")
    if backward != "lsh":
        raise ValueError(f"backward_hashes applies to the LSH backward (backward 'lsh'); backward {backward!r} "
                         "computes its gradient from no hashes: set one of them")


# --- mechanisms ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class YosoParams(AttentionParams):
    """The `attention_params` of "yoso" (see `YosoAttention`)."""

    hash_code_len: int = param(8, "τ, bits per hash: 2^τ buckets (default 8; the LRA configs use 11-12 at n ≥ 1000)",
                               minimum=1, maximum=_MAX_HASH_CODE_LEN)
    num_hash: int = param(32, "m, hashes averaged (default 32)", minimum=1)
    conv_window: int | None = param(None, "YOSO-C's depthwise convolution over V, kernel length (default null: "
                                          "none)", minimum=1)
    exact_backward: bool = param(False, "true is backward exact (the older spelling; default false)")
    hashing: str = param("simhash", "the hash family (default simhash; see `hashing`)")
    backward_hashes: int | None = param(None, "b: the LSH backward reads b of the m hashes (default null: all)",
                                        minimum=1)
    backward: str | None = param(None, "the backward rule (default null: lsh, the paper's)")

    expectation: ClassVar[bool] = False

    def resolve(self, config: Any) -> "YosoParams":
        """The backward rule resolved (from `backward` and `exact_backward`) and checked with the hashing
        family and backward_hashes: the checks of the functional API, so that both say the same."""
        backward = _resolve_backward(self.backward, self.exact_backward,
                                     EXPECTATION_BACKWARDS if self.expectation else BACKWARDS)
        _check_hashing(self.hashing)
        if not self.expectation:
            _check_backward_hashes(self.backward_hashes, self.num_hash, backward)
        return replace(self, backward=backward)


@dataclass(frozen=True)
class YosoEParams(YosoParams):
    """The `attention_params` of "yoso_e": those of "yoso"; num_hash and backward_hashes are ignored."""

    expectation: ClassVar[bool] = True


@register_attention("yoso", params=YosoParams)
class YosoAttention(nn.Module):
    """Sampled YOSO behind the registry interface.

    `config.attention_params` (`YosoParams`): hash_code_len τ (default 8, suited to BERT-length inputs; the
    LRA configs use 11-12 at n ≥ 1000), num_hash m (32), conv_window w (None; an integer adds YOSO-C's
    depthwise convolution over V along the sequence, one kernel per head, after the output normalisation),
    backward (None: "lsh", the paper's τ/2 rule; also "lsh_expectation", the reference code's `n2_backward`,
    "exact" and "exact_colliding", YOSO v2's — see `yoso`; `yoso_e` takes "lsh" or "exact"), exact_backward
    (False; True is backward "exact"), hashing ("simhash", Gaussian hyperplanes, "hadamard", fast Hadamard
    rotations, or "fast_hadamard", the paper's fast hash; see `hashing`), backward_hashes (None: all; b: the
    LSH backward reads b of the m hashes — see `yoso`).
    `need_weights=True` returns the expected weights E (not probabilities: rows are not normalised).
    """

    expectation = False

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        p: YosoParams = attention_params("yoso_e" if self.expectation else "yoso", config)
        self.hash_code_len = p.hash_code_len
        self.num_hash = p.num_hash
        self.backward = p.backward
        self.hashing = p.hashing
        self.backward_hashes = p.backward_hashes
        self.conv: nn.Conv2d | None = None
        if p.conv_window is not None:
            heads = config.num_attention_heads
            # (w, 1) kernel on (batch, heads, n, d): a 1-D convolution along the sequence per head, shared
            # across the head's dimensions, as YOSO-C defines it.
            self.conv = nn.Conv2d(heads, heads, kernel_size=(p.conv_window, 1), padding=(p.conv_window // 2, 0),
                                  groups=heads, bias=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.expectation:
            out = yoso_e(q, k, v, key_padding_mask, hash_code_len=self.hash_code_len, backward=self.backward)
        else:
            out = yoso(q, k, v, key_padding_mask, hash_code_len=self.hash_code_len, num_hash=self.num_hash,
                       hashing=self.hashing, backward_hashes=self.backward_hashes, backward=self.backward)
        if self.conv is not None:
            vm = v if key_padding_mask is None else v.masked_fill(~key_padding_mask.bool()[:, None, :, None], 0.0)
            out = out + self.conv(vm)[:, :, : v.shape[2]]  # an even window yields one extra row
        weights = expectation_weights(q, k, key_padding_mask, self.hash_code_len) if need_weights else None
        return out, weights


@register_attention("yoso_e", params=YosoEParams)
class YosoEAttention(YosoAttention):
    """YOSO-E (the exact expectation, O(n²)) with the same parameters; num_hash is ignored, and `backward` is
    "lsh" (default: the paper's τ/2 rule on E, as the reference code and Hugging Face's YOSO) or "exact"."""

    expectation = True
