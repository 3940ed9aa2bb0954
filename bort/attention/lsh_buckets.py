"""Bucket bookkeeping and sums over colliding pairs for LSH attention on a CPU, one batch×head at a time.

Queries and keys carry m hash codes each; a bucket is a (hash, code) pair, and query i and key j collide in
hash h when their codes for h are equal. YOSO needs, summed over hashes and colliding pairs:

- forward: `Σ_j v_j` for every query (`collision_sums`);
- LSH backward, with w_ij = g_i·v_j: `Σ_j w_ij k_j` per query, `Σ_i w_ij q_i` and `Σ_i g_i` per key
  (`gradient_sums`).

The keys are sorted by bucket (one numpy sort per hash; numpy's AVX-512 sort is ~10× faster than torch's at
these sizes), so a query's keys in one hash are a contiguous run of that order (`Collisions` records where
and how long, O(n·m) integers, kept from the forward pass for the backward), and the pairs of a block of
queries are enumerated query-major as the column indices of a CSR matrix: one `embedding_bag` (gather and
sum per row) gives the forward sums; `torch.sparse.sampled_addmm` the weights w_ij and an `embedding_bag`
with per-sample weights the query sums of the backward, whose key sums come from the same pairs regrouped by
key (a sort). That costs O(pairs·d): with τ bits and random directions a query meets about n/2^τ keys per
hash (≈ 1.5 at n = 4096, τ = 12, head_dim 64), so there are about m·n²/2^τ pairs, and clustered inputs
make more. A table of v ⊗ k per bucket would avoid the pairs at 2^τ × d² per hash, far more at head_dim 64,
so the backward always uses pairs; blocks of queries whose pairs are crowded (at least 1/8 of all
(query, key) entries) switch to dense matrix products over collision counts, which bounds the cost on
clustered inputs by that of dense attention.

The forward sums have a pair-free form linear in n whatever the data: a table of per-bucket sums of v (one
`embedding_bag` over the keys in bucket order, a hash at a time so that it stays in cache) that every query
reads. Per output row that is slower than gathering a few pairs, so `collision_sums` gathers pairs unless
a measured cost model says the tables are cheaper (many pairs per query, or few buckets).

Padding: tokens whose code is `void_code(τ)` sit in per-hash void buckets and are given no partners.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Buckets", "Collisions", "Keys", "build_buckets", "collision_sums", "gradient_sums", "void_code"]

# The CSR matrices here only carry a sparsity pattern for sampled_addmm; torch warns once per process that
# its sparse CSR support is "beta", which says nothing to a user of this module.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)

# Bucket ids are (hash, code) packed densely while the codes per hash are at most this many times the token
# count; beyond it most buckets are empty and ids are compacted to the occupied ones (np.unique, a sort of all
# ids, which measured several times slower than counting into 16 mostly empty buckets per token).
_DENSE_BUCKETS_PER_TOKEN = 16
# Forward sums: bucket tables cost about this many gathered pairs per table row (a bucket of a hash, empty or
# not: embedding_bag's per-bag cost) plus one per (query, hash) read; measured at head_dim 64 (n = 4096:
# τ = 10 → tables 1.4× faster, τ = 11 → pairs 2× faster; n = 16384, τ = 12 → tables 1.25× faster).
_TABLE_ROW_PAIRS = 4
# Floats in one table of bucket sums (1 MB: tables are built a hash at a time at τ = 12, head_dim 64).
_TABLE_FLOATS = 1 << 18
# A block of rows whose pairs number at least 1/8 of its (row, source) entries is computed densely (matrix
# products over collision counts): a dense entry costs a few ns in a GEMM, a gathered pair tens of ns.
# (This also avoids sampled_addmm, which fails when a CSR has more entries than its dense shape.)
_DENSE_ROW_FRACTION = 8
# The forward's enumerated pairs are kept for the backward while at most this many per (query, hash): the
# int32 keys then cost at most 8 bytes per (query, hash), like the rest of the kept bookkeeping.
_KEEP_PAIRS_PER_ENTRY = 2
# Colliding pairs enumerated at once: indices, weights and CSR of 2^17 pairs stay a few MB.
_PAIR_BUDGET = 1 << 17
# The backward regroups a block's pairs by key and writes a full (keys, d) sum per block, so its blocks are
# larger: at n = 4096, τ = 12 a batch×head's ~2·10^5 pairs are one block (about 10 MB of temporaries).
_REGROUP_BUDGET = 1 << 19


def void_code(hash_code_len: int) -> int:
    """The code given to padding tokens: one past the largest real code, so they share no bucket."""
    return 1 << hash_code_len


@dataclass
class Keys:
    """The keys of one batch×head grouped by bucket: bucket b holds order[start[b] : start[b] + count[b]]
    (order: (m·n,) key indices, hash-major, sorted by code within a hash)."""

    order: np.ndarray
    count: np.ndarray
    start: np.ndarray
    hashes: int

    @property
    def tokens(self) -> int:
        return self.order.size // max(1, self.hashes)


@dataclass
class Buckets:
    """Bucket ids of every (hash, query) and the keys grouped by bucket, in a shared id space where hash h owns
    ids hash_start[h] … hash_start[h+1] − 1; query_real (n,) bool marks real queries (None: all are)."""

    query_ids: np.ndarray
    query_real: np.ndarray | None
    keys: Keys
    hash_start: np.ndarray


def _index_dtype(limit: int) -> type:
    return np.int32 if limit < 2**31 else np.int64


def _group(codes: np.ndarray, ids: np.ndarray, buckets: int, void: int) -> Keys:
    m, n = codes.shape
    index_bits = max(1, (n - 1).bit_length())
    # Sort each hash's tokens by code with the token index packed into the low bits: a plain value sort
    # (vectorised in numpy) instead of an argsort, and stable by construction. Codes reach `void`.
    dtype = _index_dtype(1 << (void.bit_length() + index_bits))
    packed = (codes.astype(dtype) << index_bits) | np.arange(n, dtype=dtype)
    packed.sort(axis=1)
    order = np.bitwise_and(packed, (1 << index_bits) - 1, out=packed).ravel()
    count = np.bincount(ids.ravel(), minlength=buckets)  # np.intp, as the pair enumeration wants
    return Keys(order, count, np.cumsum(count) - count, m)


def _compact_ids(q_ids: np.ndarray, k_ids: np.ndarray, stride: int
                 ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Bucket ids over the buckets that hold keys, plus one empty bucket per hash (first in its range) for
    the queries that meet no key: hash h owns ids base_h … base_h + (its occupied buckets), in code order.
    Only the keys' ids are sorted (a value sort); queries find theirs by binary search — measured several
    times faster than one `np.unique(…, return_inverse=True)` over queries and keys together."""
    m = q_ids.shape[0]
    occupied = np.sort(k_ids, axis=None)  # hash-major (ids carry their hash's offset); np.unique hashes, slower
    if occupied.size:
        occupied = occupied[np.concatenate(([True], occupied[1:] != occupied[:-1]))]
    hashes = np.arange(m, dtype=np.int64)
    base = np.searchsorted(occupied, hashes * stride) + hashes  # each hash's empty bucket
    pos = np.searchsorted(occupied, q_ids)
    found = occupied[np.minimum(pos, max(0, occupied.size - 1))] == q_ids if occupied.size else \
        np.zeros(q_ids.shape, dtype=bool)
    dtype = _index_dtype(occupied.size + m)
    q_new = np.where(found, pos + hashes[:, None] + 1, base[:, None]).astype(dtype)
    k_new = (np.searchsorted(occupied, k_ids) + hashes[:, None] + 1).astype(dtype)
    return q_new, k_new, occupied.size + m, np.append(base, occupied.size + m)


def build_buckets(q_codes: np.ndarray, k_codes: np.ndarray, hash_code_len: int, void: int | None = None
                  ) -> Buckets:
    """Bucket ids of the queries and the keys grouped by bucket; codes are int (m, n) arrays in [0, void],
    `void` (default 2^τ, `void_code`) marking padding. (A larger `void` serves codes of several batch×heads
    packed side by side.)"""
    m = q_codes.shape[0]
    if k_codes.shape[0] != m:
        raise ValueError(f"queries have {m} hashes, keys {k_codes.shape[0]}")
    void = void_code(hash_code_len) if void is None else void
    stride = void + 1  # codes 0 … void − 1 and the void code
    id_dtype = _index_dtype(m * stride)
    offsets = np.arange(m, dtype=id_dtype)[:, None] * stride
    q_ids, k_ids = q_codes.astype(id_dtype) + offsets, k_codes.astype(id_dtype) + offsets
    if stride <= _DENSE_BUCKETS_PER_TOKEN * max(q_codes.shape[1], k_codes.shape[1]):
        buckets = m * stride
        hash_start = np.arange(m + 1, dtype=np.int64) * stride
    else:
        q_ids, k_ids, buckets, hash_start = _compact_ids(q_ids, k_ids, stride)
    padding = q_codes[0] == void
    return Buckets(q_ids, ~padding if padding.any() else None, _group(k_codes, k_ids, buckets, void), hash_start)


class Collisions:
    """The colliding (query, key) pairs of one batch×head, by query: how many keys share each (query, hash)
    bucket and where they begin in keys.order; `blocks` enumerates the pairs. Small enough (O(n·m)) to keep
    from the forward pass for the backward."""

    def __init__(self, counts: np.ndarray, firsts: np.ndarray, order: np.ndarray, cols: np.ndarray | None = None
                 ) -> None:
        """counts, firsts: (n_q, m) np.intp, C order (row blocks are then views; np.repeat and fancy indexing
        would convert anything else first); order: the keys' (m·n_k,) bucket order; cols: the enumerated
        pairs' keys, query-major, if kept from an earlier pass (see `blocks`)."""
        self.counts, self.firsts, self.order, self.cols = counts, firsts, order, cols
        self.keys = order.size // max(1, counts.shape[1])
        self.crow = np.zeros(counts.shape[0] + 1, dtype=np.intp)
        np.cumsum(counts.sum(1), out=self.crow[1:])
        self.total = int(self.crow[-1])

    @classmethod
    def of(cls, buckets: Buckets) -> "Collisions":
        keys = buckets.keys
        # (n_q, m): a query's buckets, hash by hash; np.intp, which numpy's gathers index fastest with
        ids = buckets.query_ids.T.astype(np.intp, order="C")
        counts = np.take(keys.count, ids)
        if buckets.query_real is not None:
            counts[~buckets.query_real] = 0  # padding sits in void buckets, which pair with nothing
        return cls(counts, np.take(keys.start, ids), keys.order)

    def blocks(self, budget: int, keep: bool = False) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """(i0, i1, crow, col) for runs of queries whose pairs fit `budget` (at least one row): crow the CSR
        row pointers of rows i0…i1 − 1, col the key of each pair, query-major. With `keep`, the keys of all
        pairs are also written to `self.cols`, and later calls slice them instead of enumerating again."""
        rows = self.crow.size - 1
        if keep and self.cols is None:
            kept = np.empty(self.total, dtype=self.order.dtype)
        else:
            kept = None
        steps = np.arange(min(self.total, budget), dtype=np.intp) if self.cols is None else None
        i0 = 0
        while i0 < rows:
            i1 = int(np.searchsorted(self.crow, self.crow[i0] + budget, side="right")) - 1
            i1 = min(rows, max(i1, i0 + 1))
            p0, p1 = int(self.crow[i0]), int(self.crow[i1])
            if self.cols is not None:
                col = self.cols[p0:p1]
            else:
                c = self.counts[i0:i1].ravel()
                if p1 - p0 > steps.size:  # one row over the budget
                    steps = np.arange(p1 - p0, dtype=np.intp)
                # pair p of (row, hash) segment s is the key at order[first_s + p − (pairs before s)]
                pos = np.repeat(self.firsts[i0:i1].ravel() - (np.cumsum(c) - c), c)
                pos += steps[: p1 - p0]
                col = np.take(self.order, pos, out=None if kept is None else kept[p0:p1])
            crow = torch.from_numpy((self.crow[i0: i1 + 1] - p0).astype(col.dtype))
            yield i0, i1, crow, torch.from_numpy(col)
            i0 = i1
        if kept is not None:
            self.cols = kept


def _table_sums(buckets: Buckets, x: torch.Tensor) -> torch.Tensor:
    """The forward sums through per-bucket tables: linear in n whatever the collisions."""
    keys, ids, hash_start = buckets.keys, buckets.query_ids, buckets.hash_start
    m, n_k, d = ids.shape[0], keys.tokens, x.shape[-1]
    widest = int(np.max(np.diff(hash_start)))
    chunk = max(1, min(m, _TABLE_FLOATS // max(1, widest * d)))
    out = x.new_zeros(ids.shape[1], d)
    for h0 in range(0, m, chunk):
        h1 = min(m, h0 + chunk)
        b0, b1 = int(hash_start[h0]), int(hash_start[h1])
        members = torch.from_numpy(keys.order[h0 * n_k: h1 * n_k])
        offsets = torch.from_numpy((keys.start[b0:b1] - h0 * n_k).astype(members.numpy().dtype))
        table = F.embedding_bag(members, x, offsets, mode="sum")  # empty buckets give zero rows
        rows = torch.from_numpy(np.ascontiguousarray(ids[h0:h1].T) - b0).view(-1)
        out += F.embedding_bag(rows, table, torch.arange(0, rows.numel(), h1 - h0, dtype=rows.dtype), mode="sum")
    if buckets.query_real is not None:
        out[torch.from_numpy(~buckets.query_real)] = 0  # padding read its void bucket; it has no partners
    return out


def _counts_block(i0: int, i1: int, crow: torch.Tensor, col: torch.Tensor, sources: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """(rows, sources) collision counts of a block of rows, from its CSR pairs."""
    rows = i1 - i0
    flat = torch.repeat_interleave(torch.arange(rows, dtype=torch.int64) * sources, torch.diff(crow).to(torch.int64),
                                   output_size=col.numel()) + col
    # counted straight into floats: ~3× faster than bincount's int64 counts converted afterwards
    return torch.zeros(rows * sources, dtype=dtype).scatter_add_(0, flat, torch.ones(1, dtype=dtype).expand(
        flat.numel())).view(rows, sources)


def _crowded(rows: int, nnz: int, sources: int) -> bool:
    return nnz * _DENSE_ROW_FRACTION >= rows * sources


def collision_sums(buckets: Buckets, pairs: Collisions, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
    """out[i] = Σ_h Σ_{key j in bucket_h(i)} x[j] for every query i: (n_k, d) → (n_q, d), the forward
    cumulation. Gathered pairs unless bucket tables (linear in n whatever the input) cost less by the
    measured model of `_TABLE_ROW_PAIRS`; crowded blocks of rows as dense products. With `keep`, the
    enumerated pairs are kept in `pairs.cols` (for the backward) when they number at most
    `_KEEP_PAIRS_PER_ENTRY` per (query, hash), so that the kept memory stays O(n·m)."""
    if pairs.total > _TABLE_ROW_PAIRS * int(buckets.hash_start[-1]) + pairs.counts.size:
        return _table_sums(buckets, x)
    keep = keep and pairs.total <= _KEEP_PAIRS_PER_ENTRY * pairs.counts.size
    out = x.new_zeros(pairs.crow.size - 1, x.shape[-1])
    for i0, i1, crow, col in pairs.blocks(_PAIR_BUDGET, keep):
        if col.numel() == 0:
            continue
        if _crowded(i1 - i0, col.numel(), pairs.keys):
            out[i0:i1] = _counts_block(i0, i1, crow, col, pairs.keys, x.dtype) @ x
        else:
            out[i0:i1] = F.embedding_bag(col, x, crow[:-1], mode="sum")
    return out


def gradient_sums(pairs: Collisions, g: torch.Tensor, v: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums of the LSH backward, with w_ij = g_i·v_j over colliding (query i, key j) pairs and hashes:
    (Σ_j w_ij k_j per query, Σ_i w_ij q_i per key, Σ_i g_i per key).

    The pairs are enumerated once, query-major (a block of rows at a time): `sampled_addmm` gives the w_ij,
    an `embedding_bag` with per-sample weights the query sums; the block's pairs are then regrouped by key
    with one numpy sort of packed (key, position) values for the two key sums, which measured cheaper than
    enumerating and weighting the pairs a second time, key-major. Crowded blocks use dense products."""
    n_k = pairs.keys
    gq, gk, gv = q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(n_k, g.shape[-1])
    vt = v.t()  # sampled_addmm reads the transposed view directly (measured faster than a copy)
    for i0, i1, crow, col in pairs.blocks(_REGROUP_BUDGET):
        rows, nnz = i1 - i0, col.numel()
        if nnz == 0:
            continue
        if _crowded(rows, nnz, n_k):
            counts = _counts_block(i0, i1, crow, col, n_k, g.dtype)
            w = (g[i0:i1] @ vt).mul_(counts)
            gq[i0:i1] = w @ k
            gk.addmm_(w.t(), q[i0:i1])
            gv.addmm_(counts.t(), g[i0:i1])
            continue
        pattern = torch.sparse_csr_tensor(crow, col, g.new_zeros(nnz), size=(rows, n_k), check_invariants=False)
        w = torch.sparse.sampled_addmm(pattern, g[i0:i1], vt, beta=0.0).values()
        gq[i0:i1] = F.embedding_bag(col, k, crow[:-1], mode="sum", per_sample_weights=w)
        # regroup by key: sort (key << bits | pair position), stable by construction
        cols = col.numpy()
        bits = max(1, int(nnz - 1).bit_length())
        dtype = _index_dtype(n_k << bits)  # int32 when it fits: numpy sorts it about twice as fast
        packed = (cols.astype(dtype) << bits) | np.arange(nnz, dtype=dtype)
        packed.sort()
        perm = (packed & ((1 << bits) - 1)).astype(np.intp)
        # gathers in numpy / index_select: torch's advanced indexing is several times slower here
        by_key = torch.from_numpy(np.repeat(np.arange(i0, i1, dtype=cols.dtype), np.diff(crow.numpy()))[perm])
        per_key = np.bincount(cols, minlength=n_k)
        offsets = torch.from_numpy((np.cumsum(per_key) - per_key).astype(cols.dtype))
        w_by_key = torch.index_select(w, 0, torch.from_numpy(perm))
        gk += F.embedding_bag(by_key, q, offsets, mode="sum", per_sample_weights=w_by_key)
        gv += F.embedding_bag(by_key, g, offsets, mode="sum")
    return gq, gk, gv
