"""The sampled YOSO as one autograd function, computed a batch×head at a time on the CPU cores.

Forward per batch×head: zero the padding rows, L2-normalise q and k, hash both (`hashing.HashFamily`), sum
over the colliding pairs (`lsh_buckets.collision_sums`), divide by m, L2-normalise the output rows. Doing
the normalisations here, per batch×head, rather than as separate autograd ops over whole tensors keeps every
temporary cache-sized and lets the workers of `group_pool.map_groups` do all of it in parallel; at
n = 4096 the separate ops cost as much as the LSH sums themselves. Sequences of at most `_DENSE_MAX_TOKENS`
tokens skip the buckets: their (n, n) collision counts are compared out from the codes and used in batched
matrix products, forward and backward (same numbers; cheaper than the bookkeeping's fixed costs there).

Backward per batch×head: through the output normalisation, then ∇V (the transposed cumulation) and, by
default, the LSH estimate of ∇q̂ and ∇k̂ of the paper: the derivative of (1 − arccos(x)/π)^τ replaced by
(τ/2)·(1 − arccos(x)/π)^τ, so that ∇q̂_i = (τ/2m)·Σ_h Σ_{j ∈ bucket_h(i)} (g_i·v_j)·k̂_j and likewise for k̂,
estimated from the same collisions as the forward pass; then through the input normalisations. With
`backward_hashes` b < m that estimate uses only the collisions of the first b hashes, scaled by 1/b instead of
1/m: the hashes are independent and identically distributed, so this is an unbiased estimate of the same
gradient (of the m-hash LSH rule, ∇V included) with about m/b times its variance, at about b/m of its cost.
The other backward rules (`BACKWARDS`) are O(n²) in time, in query blocks of linear memory, and read no
hashes: "lsh_expectation" applies the same τ/2 rule to the expectation E itself (∇V = Eᵀ·g,
∇q̂_i = (τ/2)·Σ_j E_ij·(g_i·v_j)·k̂_j: the reference implementation's `n2_backward`, and YOSO-E's gradient in
the paper), "exact" the exact gradient of E·V. "exact_colliding" is YOSO v2's rule: the exact derivative on the
pairs that collide in at least one hash, each once (`colliding_grads`; O(m·n²) here). `normalize=False` skips the three normalisations (q and k are
then taken as unit vectors): the bare estimate of E·V, which the tests compare with its closed form.
"""
from __future__ import annotations

import numpy as np
import torch

from .collision_prob import collision_prob, collision_prob_and_grad
from .group_pool import map_groups
from .hashing import HashFamily
from .lsh_buckets import Collisions, build_buckets, collision_sums, gradient_sums

__all__ = ["BACKWARDS", "EXPECTATION_BACKWARDS", "LSHAttention", "colliding_grads", "exact_forward", "expectation_grads",
           "normalize_backward", "packs_of"]

# Backward rules of the sampled YOSO: the τ/2 rule estimated from the forward's collisions, the τ/2 rule on the
# expectation E (O(n²)), the exact derivative of E·V (O(n²)), and YOSO v2's rule ("exact_colliding", see
# `colliding_grads`). YOSO-E (`expectation`) knows "lsh", meaning the τ/2
# rule on its own E (what "lsh_expectation" computes), and "exact".
BACKWARDS = ("lsh", "lsh_expectation", "exact", "exact_colliding")
EXPECTATION_BACKWARDS = ("lsh", "exact")
# F.normalize's epsilon: rows with a smaller norm are divided by it instead.
_NORM_EPS = 1e-12
# Query rows × keys of the O(n²) backwards' temporaries per block (2^20 floats, 4 MB).
_EXACT_BLOCK = 1 << 20
# Tokens of one work item (several batch×heads when sequences are short): a batch×head of 4096 tokens at
# head_dim 64 is about the most whose q, k, v and bookkeeping stay in a core's L2 cache.
_PACK_TOKENS = 4096
# Sequences up to this long skip the bucket bookkeeping: their collision counts are compared out densely
# (m·n² code comparisons per batch×head) and used in batched matrix products (see `_dense_counts`).
# Measured fwd+bwd, batch 32, m 32, dense / buckets: 2 heads of dim 32, τ 11: 0.68 at n = 16, 0.83 at 32, 1.03
# at 64, 2.4 at 128; 12 heads of dim 64, τ 8: 0.87 at 16, 0.94 at 32, 1.7 at 64.
_DENSE_MAX_TOKENS = 32


def normalize_backward(unit: torch.Tensor, norm: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient through x̂ = x / max(‖x‖, ε) (rows), given x̂, ‖x‖ (…, 1) and ∇x̂: (∇x̂ − x̂·(x̂·∇x̂)) / ‖x‖,
    or ∇x̂ / ε where ‖x‖ ≤ ε — what autograd gives for `F.normalize`."""
    dot = (unit * grad).sum(-1, keepdim=True).mul_(norm > _NORM_EPS)
    return (grad - unit * dot).div_(norm.clamp_min(_NORM_EPS))


def exact_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """E·V for one batch×head's (n, d) tensors, E the collision probability of unit q, k (YOSO-E): O(n²) time,
    in blocks of query rows so that memory stays linear in n."""
    n = q.shape[0]
    rows = max(1, _EXACT_BLOCK // max(1, k.shape[0]))
    out = v.new_empty(n, v.shape[1])
    for i0 in range(0, n, rows):
        sl = slice(i0, i0 + rows)
        torch.mm(collision_prob((q[sl] @ k.t()).clamp_(-1.0, 1.0), hash_code_len), v, out=out[sl])
    return out


def expectation_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, hash_code_len: int,
                      rule: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of E·V for one batch×head's (n, d) tensors, E the collision probability of unit q, k, with
    dE/dx (x = q̂·k̂) taken as `rule` says: "exact", its derivative; "lsh", the paper's (τ/2)·E, which is what
    the LSH estimate from collisions estimates. ∇V = Eᵀ·g either way. O(n²) time, processed in blocks of query
    rows so that memory stays linear in n."""
    if rule not in EXPECTATION_BACKWARDS:
        raise ValueError(f"rule must be one of {', '.join(EXPECTATION_BACKWARDS)}; got {rule!r}")
    n = q.shape[0]
    rows = max(1, _EXACT_BLOCK // max(1, k.shape[0]))
    gq, gk, gv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for i0 in range(0, n, rows):
        sl = slice(i0, i0 + rows)
        x = (q[sl] @ k.t()).clamp_(-1.0, 1.0)
        if rule == "exact":
            prob, slope = collision_prob_and_grad(x, hash_code_len)
        else:
            prob = collision_prob(x, hash_code_len)
            slope = prob * (hash_code_len / 2.0)
        a = (grad[sl] @ v.t()).mul_(slope)
        gq[sl] = a @ k
        gk.addmm_(a.t(), q[sl])
        gv.addmm_(prob.t(), grad[sl])
    return gq, gk, gv


# YOSO v2 evaluates dE/dx at 0.99·x, keeping 1/√(1 − x²) finite for parallel q and k.
V2_COSINE_SCALE = 0.99


def colliding_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, q_codes: torch.Tensor,
                    k_codes: torch.Tensor, hash_code_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YOSO v2's backward for one batch×head's (n, d) unit q, k: the exact derivative on the colliding pairs.

    S = the (query, key) pairs that share a code in at least one of the m hashes (`q_codes`, `k_codes`: (m, n)
    integer codes; padding rows carry codes that match nothing). Each pair of S counts once, however many hashes
    it collides in: ∇q̂_i = Σ_{j ∈ S_i} (g_i·v_j)·E′(0.99·q̂_i·k̂_j)·k̂_j, likewise ∇k̂_j over the queries, with
    E′(c) = τ·(1 − arccos(c)/π)^(τ−1) / (π·√(1 − c²)) taken at 0.99·c without the chain-rule factor 0.99 (as
    the reference kernels compute it); ∇V is the forward's transposed cumulation, (C/m)ᵀ·g with C the collision
    counts. The reference's CUDA kernels visit only S; here the collisions are compared out densely, O(m·n²)
    in blocks of query rows (memory linear in n): an option for reproducing YOSO v2, not a fast path."""
    n, m = q.shape[0], q_codes.shape[0]
    rows = max(1, _EXACT_BLOCK // max(1, k.shape[0] * m))
    gq, gk, gv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for i0 in range(0, n, rows):
        sl = slice(i0, i0 + rows)
        counts = (q_codes[:, sl, None] == k_codes[:, None, :]).sum(0, dtype=q.dtype)  # (rows, n)
        _, slope = collision_prob_and_grad((q[sl] @ k.t()).mul_(V2_COSINE_SCALE).clamp_(-1.0, 1.0), hash_code_len)
        a = (grad[sl] @ v.t()).mul_(slope).mul_(counts > 0)
        gq[sl] = a @ k
        gk.addmm_(a.t(), q[sl])
        gv.addmm_(counts.t(), grad[sl], alpha=1.0 / m)
    return gq, gk, gv


def _normalized(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / norm.clamp_min(_NORM_EPS), norm


def packs_of(groups: int, n: int, workers: int | None = None) -> list[tuple[int, int]]:
    """Runs [g0, g1) of batch×heads processed together as one work item.

    The bucket bookkeeping costs a few dozen numpy and torch calls per item whatever its size, so short
    sequences (LRA ListOps: tens of tokens, 64 batch×heads) would pay for those calls 64 times: items pack
    batch×heads up to `_PACK_TOKENS` tokens, but into no fewer items than there are workers."""
    workers = torch.get_num_threads() if workers is None else workers
    per_item = max(1, min(-(-groups // max(1, workers)), _PACK_TOKENS // max(1, n)))
    return [(g0, min(groups, g0 + per_item)) for g0 in range(0, groups, per_item)]


def _dense_counts(family: HashFamily, qg: torch.Tensor, kg: torch.Tensor, g0: int, pad: torch.Tensor | None,
                  used: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Collision counts of short sequences, densely: (P, n, n) float C[p, i, j] = number of hashes in which
    query i and key j of batch×head g0 + p share a code, over all m hashes and over the first `used` (what the
    LSH backward reads). Padding rows (`pad`, (P·n,) bool) collide with nothing. At a few dozen tokens this
    costs less than sorting keys into buckets, whose fixed costs dominate there."""
    P, n, _ = qg.shape
    qc, kc = family.codes_many(qg, g0), family.codes_many(kg, g0)  # (P, m, n) int32 in [0, 2^τ)
    if pad is not None:
        mask = pad.view(P, 1, n)
        qc, kc = qc.masked_fill(mask, -1), kc.masked_fill(mask, -2)
    qc, kc = qc.transpose(1, 2), kc.transpose(1, 2)  # (P, n, m): the hashes innermost, reduced contiguously
    same = qc[:, :, None, :] == kc[:, None, :, :]  # (P, n, n, m) bool
    first = same[..., :used].sum(-1, dtype=qg.dtype)
    total = first if used == same.shape[-1] else first + same[..., used:].sum(-1, dtype=qg.dtype)
    return total, first


def _packed_codes(family: HashFamily, x: torch.Tensor, g0: int, pad: torch.Tensor | None, hash_code_len: int
                  ) -> tuple[np.ndarray, int]:
    """Codes of the (P, n, d) vectors of batch×heads g0 … g0 + P − 1 as one (m, P·n) array whose buckets never
    mix batch×heads: batch×head j's codes are offset by j·(2^τ + 1). Returns the codes and the void code
    (P·(2^τ + 1), above every packed code) given to the rows in `pad`, (P·n,) bool."""
    P, n, _ = x.shape
    stride = (1 << hash_code_len) + 1
    # (P, m, n) → (m, P·n), batch×head j offset by j·stride
    codes = family.codes_many(x, g0).add_(torch.arange(P, dtype=torch.int32).mul_(stride).view(P, 1, 1))
    codes = codes.transpose(0, 1).reshape(-1, P * n)
    void = P * stride
    if pad is not None:
        codes[:, pad] = void
    return codes.numpy(), void


class LSHAttention(torch.autograd.Function):
    """normalise(Σ_h Σ_j [h(q̂_i) = h(k̂_j)]·v_j / m) on (batch, heads, n, d) q, k, v.

    apply(q, k, v, hash_code_len, num_hash, generator, backward, hashing, real, normalize,
          backward_hashes, expectation): `backward` one of `BACKWARDS` (see the module's docstring);
    `backward_hashes` (None: all m) is how many of the hashes the LSH backward uses; `expectation` computes
    YOSO-E instead, E·V with E itself (`exact_forward`, no hashing), with the same normalisations, padding
    and workers, and `backward` one of `EXPECTATION_BACKWARDS` ("lsh": the τ/2 rule on E).
    `real` (batch, n) bool or None marks real tokens; padding rows are zeroed (masked, so even NaN there
    cannot leak), get the void code (they collide with nothing), and have zero output and gradients.
    Work items are packs of batch×heads (`packs_of`) run on the worker threads of `group_pool`.
    """

    @staticmethod
    def forward(ctx, q, k, v, hash_code_len: int, num_hash: int, generator, backward: str = "lsh",
                hashing: str = "simhash", real: torch.Tensor | None = None, normalize: bool = True,
                backward_hashes: int | None = None, expectation: bool = False):
        b, h, n, d = q.shape
        valid = EXPECTATION_BACKWARDS if expectation else BACKWARDS
        if backward not in valid:
            raise ValueError(f"backward must be one of {', '.join(valid)}; got {backward!r}")
        # The rule applied over E in O(n²) ("lsh" or "exact"), or None: the LSH estimate from the collisions.
        colliding = backward == "exact_colliding"
        if expectation or backward not in ("lsh", "exact_colliding"):
            expected_rule = "lsh" if backward == "lsh_expectation" else backward
        else:
            expected_rule = None
        used = num_hash if backward_hashes is None else backward_hashes  # hashes the LSH backward reads
        groups, dv = b * h, v.shape[-1]
        qf, kf, vf = (t.reshape(groups, n, t.shape[-1]) for t in (q, k, v))
        family = None if expectation else HashFamily(hashing, groups, d, num_hash, hash_code_len, generator,
                                                     q.dtype, q.device)
        q_unit, k_unit = torch.empty_like(qf), torch.empty_like(kf)
        values = vf if real is None else torch.empty_like(vf)  # v with padding rows zeroed, for the backward
        out = torch.empty_like(vf)
        norms = q.new_empty(3, groups, n, 1)  # ‖q‖, ‖k‖, ‖y‖ per row, for the backward
        pad_rows = None if real is None else ~real.repeat_interleave(h, dim=0)  # (groups, n)
        packs = packs_of(groups, n)
        # The colliding pairs' bookkeeping (O(n·m) integers per batch×head) is kept for the LSH backward,
        # which would otherwise hash and sort again; as saved tensors, so autograd frees it after backward.
        keep_pairs = expected_rule is None and not colliding and any(ctx.needs_input_grad[:3])
        keep_codes = colliding and any(ctx.needs_input_grad[:3])  # YOSO v2's rule compares the codes again
        empty = torch.empty(0, dtype=torch.int32)
        # per pack: keys per (query, hash), where they begin in the keys' bucket order, that order (int32
        # halves it: positions are < m·n; the backward widens counts and starts again), the enumerated pairs
        # (empty: enumerate again in the backward); for short sequences only the dense counts, first slot
        kept: list[list[torch.Tensor]] = [[empty] * 4 for _ in packs]

        def run(i: int) -> None:
            g0, g1 = packs[i]
            rows = slice(g0, g1)
            P = g1 - g0
            qg, kg, vg = qf[rows], kf[rows], vf[rows]
            pad = None if pad_rows is None else pad_rows[rows]
            if pad is not None and bool(pad.any()):
                mask = pad[..., None]
                qg, kg, vg = qg.masked_fill(mask, 0.0), kg.masked_fill(mask, 0.0), vg.masked_fill(mask, 0.0)
                pad = pad.reshape(-1)
            else:
                pad = None
            if normalize:
                (qg, norms[0, rows]), (kg, norms[1, rows]) = _normalized(qg), _normalized(kg)
            q_unit[rows], k_unit[rows] = qg, kg
            if real is not None:
                values[rows] = vg
            if keep_codes:  # (P, m, n); padding rows get codes that match nothing
                qc, kc = family.codes_many(qg, g0), family.codes_many(kg, g0)
                if pad is not None:
                    mask = pad.view(P, 1, n)
                    qc, kc = qc.masked_fill(mask, -1), kc.masked_fill(mask, -2)
                kept[i][:2] = [qc, kc]
            if expectation:
                y = torch.stack([exact_forward(qg[j], kg[j], vg[j], hash_code_len) for j in range(P)])
                if pad is not None:  # a zero query still has E = 2^−τ with every key: its row is padding
                    y.masked_fill_(pad.view(P, n, 1), 0.0)
                if normalize:
                    y, norms[2, rows] = _normalized(y)
                out[rows] = y
                return
            if n <= _DENSE_MAX_TOKENS:
                counts, first = _dense_counts(family, qg, kg, g0, pad, used)
                y = torch.bmm(counts, vg).div_(num_hash)
                if normalize:
                    y, norms[2, rows] = _normalized(y)
                out[rows] = y
                if keep_pairs:
                    kept[i][0] = first
                return
            qc, void = _packed_codes(family, qg, g0, pad, hash_code_len)
            kc, _ = _packed_codes(family, kg, g0, pad, hash_code_len)
            buckets = build_buckets(qc, kc, hash_code_len, void)
            collisions = Collisions.of(buckets)
            y = collision_sums(buckets, collisions, vg.reshape(P * n, dv), keep=keep_pairs).div_(num_hash)
            y = y.view(P, n, dv)
            if normalize:
                y, norms[2, rows] = _normalized(y)
            out[rows] = y
            if keep_pairs:
                # Only the hashes the backward reads: the first `used` columns, and their keys (the order is
                # hash-major). The enumerated pairs mix all hashes: kept only when the backward reads them all.
                counts, firsts = collisions.counts[:, :used], collisions.firsts[:, :used]
                order = collisions.order[: used * collisions.keys]
                kept[i][:3] = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)) for a in (counts, firsts, order)]
                if collisions.cols is not None and used == num_hash:
                    kept[i][3] = torch.from_numpy(collisions.cols)

        map_groups(run, len(packs))
        ctx.save_for_backward(q_unit, k_unit, values, out, norms, real, *(t for item in kept for t in item))
        ctx.config = (h, hash_code_len, used, expected_rule, colliding, normalize, packs)
        return out.view(b, h, n, dv)

    @staticmethod
    def backward(ctx, grad):
        q_unit, k_unit, values, out, norms, real, *flat = ctx.saved_tensors
        h, tau, num_hash, expected_rule, colliding, normalize, packs = ctx.config  # num_hash: the hashes this backward reads
        groups, n, _ = q_unit.shape
        grad = grad.reshape(groups, n, -1)
        gq, gk, gv = torch.empty_like(q_unit), torch.empty_like(k_unit), torch.empty_like(values)
        pad_rows = None if real is None else ~real.repeat_interleave(h, dim=0)
        scale = tau / (2.0 * num_hash)  # the (τ/2)·E approximation of dE/dx, over m hashes

        def run(i: int) -> None:
            g0, g1 = packs[i]
            rows = slice(g0, g1)
            P = g1 - g0
            pad = None if pad_rows is None else pad_rows[rows][..., None]
            go = grad[rows] if pad is None else grad[rows].masked_fill(pad, 0.0)
            if normalize:
                go = normalize_backward(out[rows], norms[2, rows], go)
            qg, kg, vg = q_unit[rows], k_unit[rows], values[rows]
            if expected_rule is not None:
                parts = [expectation_grads(qg[j], kg[j], vg[j], go[j], tau, expected_rule) for j in range(P)]
                gq_g, gk_g, gv_g = (torch.stack(t) for t in zip(*parts))
            elif colliding:
                qc, kc = flat[4 * i], flat[4 * i + 1]
                parts = [colliding_grads(qg[j], kg[j], vg[j], go[j], qc[j], kc[j], tau) for j in range(P)]
                gq_g, gk_g, gv_g = (torch.stack(t) for t in zip(*parts))
            elif n <= _DENSE_MAX_TOKENS:  # the dense counts of the hashes read: pairs weighted by g·v
                counts = flat[4 * i]
                w = torch.bmm(go, vg.transpose(1, 2)).mul_(counts)
                gq_g, gk_g = torch.bmm(w, kg).mul_(scale), torch.bmm(w.transpose(1, 2), qg).mul_(scale)
                gv_g = torch.bmm(counts.transpose(1, 2), go).div_(num_hash)
            else:
                counts, firsts, order, cols = (t.numpy() for t in flat[4 * i: 4 * i + 4])
                pairs = Collisions(counts.astype(np.intp), firsts.astype(np.intp), order, cols if cols.size else None)
                flat_rows = (lambda t: t.reshape(P * n, t.shape[-1]))  # noqa: E731
                sums = gradient_sums(pairs, flat_rows(go), flat_rows(vg), flat_rows(qg), flat_rows(kg))
                gq_g, gk_g, gv_g = (t.view(P, n, -1) for t in sums)
                gq_g, gk_g, gv_g = gq_g.mul_(scale), gk_g.mul_(scale), gv_g.div_(num_hash)
            if normalize:
                gq_g, gk_g = normalize_backward(qg, norms[0, rows], gq_g), normalize_backward(kg, norms[1, rows], gk_g)
            if pad is not None:
                gq_g, gk_g, gv_g = gq_g.masked_fill(pad, 0.0), gk_g.masked_fill(pad, 0.0), gv_g.masked_fill(pad, 0.0)
            gq[rows], gk[rows], gv[rows] = gq_g, gk_g, gv_g

        map_groups(run, len(packs))
        b = groups // h
        shape = lambda t: t.view(b, h, n, t.shape[-1])  # noqa: E731
        return shape(gq), shape(gk), shape(gv), None, None, None, None, None, None, None, None, None
