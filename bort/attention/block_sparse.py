"""Block-sparse softmax attention: only the tiles of the score matrix that a mask allows are computed.

The n × n element mask is cut into block_size × block_size tiles. A query block reads the key blocks whose
tile has at least one allowed entry: they are gathered (`index_select` on the blocked keys and values), scored
by one batched matmul, masked inside the tiles (element mask, key padding), and normalised by a softmax that
leaves rows without any allowed key at exactly 0. Query blocks whose row is mostly allowed (BigBird's global
rows) are computed against all keys at once: a gather would only add work there.

`BlockSparsePlan` holds the layout as gather indices, grouped into segments of query blocks with the same
number of key blocks (rounded up to 1, 2, 3, 4, 6, 8, 12, …, so padding slots waste at most a third), and the
element mask only for tiles that are partly allowed. Building it reads the whole mask once; a mechanism keeps
it per (n, device).

The backward pass is our own (`torch.autograd.Function`). The forward keeps q, k, v, the output and, when
they fit `_SAVED_PROBS_MAX`, each chunk's probabilities (K·bs values per query and head: linear in n); above
that cap the backward recomputes them with the same fused softmax (as flash attention recomputes its scores).
It forms dS = P ∘ (dP − δ) with δ = rowsum(dO ∘ O), and scatters key and value gradients back with
`index_add_`. Each batch×head is one work item on a single-threaded worker thread (`group_pool`, one per
core), done in chunks of query blocks whose scores hold about `_SCORE_BUDGET` elements (4 MB): a chunk's
operands stay in the core's cache, its temporaries stay below glibc's mmap threshold (reused, not
page-faulted in again), and no operation waits for other threads (see README, "Performance notes").

Dropout (training): the keep-mask of each (batch×head, chunk) is drawn from a private generator seeded from
the call's seed (one draw of the global RNG), the batch×head and the chunk; the backward replays it whichever
worker runs it, so it sees the same mask without storing it. Results then differ from `masked_attention`'s
dropout draws (same distribution).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .group_pool import map_groups
from .registry import is_integer

__all__ = ["BlockSparsePlan", "block_sparse_attention"]

# Elements of one chunk's score tile (query rows × gathered keys of one batch×head): 2^20 fp32 values = 4 MB,
# so that a chunk's scores, gathered keys and values stay in a core's L2 cache (2 MB here) while the
# worker goes through the products, softmax and gradients of that chunk.
_SCORE_BUDGET = 1 << 20
# Probabilities kept from the forward for the backward: at most 2^28 values (1 GB fp32), else recomputed.
_SAVED_PROBS_MAX = 1 << 28
# Rows with more than this fraction of key blocks allowed are computed against all keys (no gather).
DENSE_FRACTION = 0.5
_BUCKETS = (1, 2, 3, 4, 6)  # key-block counts per segment: these, then 8, 12, 16, 24, … (×2 each)


def _bucket(count: int) -> int:
    """The segment width (in key blocks) for a row with `count` allowed key blocks."""
    for b in _BUCKETS:
        if count <= b:
            return b
    size = 8
    while True:
        if count <= size:
            return size
        if count <= size * 3 // 2:
            return size * 3 // 2
        size *= 2


@dataclass(frozen=True, eq=False)
class _Segment:
    """Query blocks computed alike: `keys` None means against every key (dense rows)."""

    rows: torch.Tensor  # (R,) int64 query-block ids
    keys: torch.Tensor | None  # (H', R, K) int64 key-block ids; padding slots point at an unused block
    slot_bias: torch.Tensor | None  # (H', R, K) float: 0, or -inf for a padding slot (no tile_bias then)
    # (H', R, bs, K·bs or N) float: 0, or -inf where the element mask forbids (added, not masked_fill: a
    # broadcast masked_fill measured 4× slower than an add)
    tile_bias: torch.Tensor | None
    padded: tuple[bool, ...]  # per row: has a padding slot in some head (slot_bias needed for it)
    may_empty: tuple[bool, ...]  # per row: some query in some head may attend nothing (before key padding)

    def to(self, device: torch.device) -> "_Segment":
        move = (lambda t: None if t is None else t.to(device))
        return _Segment(move(self.rows), move(self.keys), move(self.slot_bias), move(self.tile_bias),
                        self.padded, self.may_empty)


@dataclass(frozen=True, eq=False)
class BlockSparsePlan:
    """A block layout turned into gather indices: what `block_sparse_attention` computes for one mask.

    `heads` is the number of distinct head layouts (1 = shared by all heads); `n` the sequence length, padded
    internally to `padded_n` (a multiple of `block_size`). `tile_fraction` is the share of the padded n × n
    score matrix that is computed, padding slots included (BigBird 64/3/2/3 at n = 4096: about 0.15).
    """

    n: int
    block_size: int
    heads: int
    segments: tuple[_Segment, ...]
    tile_fraction: float

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.block_size)

    @property
    def padded_n(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def device(self) -> torch.device:
        return self.segments[0].rows.device if self.segments else torch.device("cpu")

    def to(self, device: torch.device | str) -> "BlockSparsePlan":
        """The same plan with its index tensors on `device`."""
        device = torch.device(device)
        return BlockSparsePlan(self.n, self.block_size, self.heads, tuple(s.to(device) for s in self.segments),
                               self.tile_fraction)

    @classmethod
    def from_mask(cls, allowed: torch.Tensor, block_size: int = 64,
                  dense_fraction: float = DENSE_FRACTION) -> "BlockSparsePlan":
        """Plan for a bool element mask (heads or 1, n, n), True = query i may attend to key j.

        Any mask works, not only block-aligned ones: tiles with no allowed entry are skipped, fully allowed
        tiles need no element mask, and partly allowed tiles keep theirs.
        """
        if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool or allowed.dim() != 3 \
                or allowed.shape[-1] != allowed.shape[-2]:
            got = (f"{allowed.dtype} tensor of shape {tuple(allowed.shape)}" if isinstance(allowed, torch.Tensor)
                   else type(allowed).__name__)
            raise ValueError(f"allowed must be a bool tensor (heads or 1, n, n); got {got}")
        n = allowed.shape[-1]
        bs = _check_block_size(block_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        if pad:
            # Padded keys are excluded at run time (as padding); padded query rows are never returned. So a
            # tile is "full" when every entry inside the real n × n region is allowed.
            real = F.pad(allowed, (0, pad, 0, pad), value=False)
            lenient = real.clone()
            lenient[:, n:, :] = True
            lenient[:, :, n:] = True
        else:
            real = lenient = allowed
        heads = allowed.shape[0]
        tiles = real.view(heads, nb, bs, nb, bs)
        lenient_tiles = lenient.view(heads, nb, bs, nb, bs)
        used = tiles.any(dim=4).any(dim=2)  # (H', nb, nb)
        full = lenient_tiles.all(dim=4).all(dim=2)

        def element_tiles(h: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            # (…, bs, bs) tiles of the lenient mask at (head, query block, key block)
            return lenient_tiles.permute(0, 1, 3, 2, 4)[h, r, c]

        def dense_rows(rows: torch.Tensor) -> torch.Tensor:
            return lenient.view(heads, nb, bs, nb * bs)[:, rows]

        return cls._build(n, bs, used, full, element_tiles, dense_rows, dense_fraction)

    @classmethod
    def from_layout(cls, layout: torch.Tensor, block_size: int, n: int | None = None,
                    dense_fraction: float = DENSE_FRACTION) -> "BlockSparsePlan":
        """Plan for a bool block layout (heads or 1, n_blocks, n_blocks) whose True tiles are fully allowed;
        `n` (default n_blocks · block_size) may cut the last block short. No n × n mask is ever built."""
        if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() != 3 \
                or layout.shape[-1] != layout.shape[-2]:
            raise ValueError("layout must be a bool tensor (heads or 1, n_blocks, n_blocks)")
        nb = layout.shape[-1]
        n = nb * block_size if n is None else n
        bs = _check_block_size(block_size, n)
        if -(-n // bs) != nb:
            raise ValueError(f"layout has {nb} blocks but n={n} with block_size {bs} needs {-(-n // bs)}")
        return cls._build(n, bs, layout, layout, None, None, dense_fraction)

    @classmethod
    def _build(cls, n, bs, used, full, element_tiles, dense_rows, dense_fraction) -> "BlockSparsePlan":
        heads, nb, _ = used.shape
        counts = used.sum(dim=-1).amax(dim=0)  # (nb,) the most key blocks any head's row needs
        segments = []
        dense = torch.nonzero(counts > dense_fraction * nb).flatten()
        computed = 0
        if dense.numel():
            forbid = None
            if not bool(full[:, dense].all()):
                forbid = ~dense_rows(dense) if dense_rows is not None else \
                    (~full[:, dense]).repeat_interleave(bs, 2)[:, :, None, :].expand(-1, -1, bs, -1)
            empty = forbid.all(dim=-1).flatten(2).any(dim=2).any(dim=0) if forbid is not None else \
                torch.zeros(dense.numel(), dtype=torch.bool)
            segments.append(_Segment(dense, None, None, _bias(forbid), (False,) * dense.numel(),
                                     tuple(empty.tolist())))
            computed += dense.numel() * nb
        sparse = torch.nonzero((counts > 0) & (counts <= dense_fraction * nb)).flatten()
        widths = torch.tensor([_bucket(int(c)) for c in counts[sparse]], dtype=torch.long)
        for width in sorted(set(widths.tolist())):
            rows = sparse[widths == width]
            row_used = used[:, rows]  # (H', R, nb)
            # Rows with padding slots first: chunks without any then skip the slot bias altogether.
            rows = rows[torch.argsort((row_used.sum(-1) < width).any(0).to(torch.uint8), descending=True,
                                      stable=True)]
            row_used = used[:, rows]
            # Allowed key blocks first, in increasing order, then unused ones as padding slots.
            order = torch.argsort((~row_used).to(torch.uint8), dim=-1, stable=True)[..., :width]
            valid = row_used.gather(-1, order)
            partial = valid & ~full[:, rows].gather(-1, order)
            slot_bias = tile_bias = None
            padded = (~valid).any(-1).any(0)
            empty = (~valid).all(-1).any(0)
            if bool(partial.any()):
                if element_tiles is None:
                    raise AssertionError("a block layout has no partial tiles")
                tiles = element_tiles(torch.arange(heads)[:, None, None], rows[None, :, None], order)
                forbid = (~tiles | ~valid[..., None, None]).permute(0, 1, 3, 2, 4)  # (H', R, bs, K, bs)
                empty = forbid.flatten(3).all(-1).any(-1).any(0)
                tile_bias = _bias(forbid.reshape(heads, rows.numel(), bs, width * bs))
                padded = torch.zeros_like(padded)  # folded into the tile bias
            elif bool(padded.any()):
                slot_bias = _bias(~valid)
            segments.append(_Segment(rows, order.contiguous(), slot_bias, tile_bias, tuple(padded.tolist()),
                                     tuple(empty.tolist())))
            computed += rows.numel() * width
        return cls(n, bs, heads, tuple(segments), computed / (nb * nb) if nb else 0.0)


def _bias(forbid: torch.Tensor | None) -> torch.Tensor | None:
    """0 where allowed, -inf where `forbid` is True (float32, contiguous)."""
    if forbid is None:
        return None
    return torch.zeros(forbid.shape).masked_fill_(forbid, float("-inf"))


def _check_block_size(block_size: int, n: int) -> int:
    if not is_integer(block_size) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer (e.g. 16, 32, 64, 128), got {block_size!r}")
    if n < 1:
        raise ValueError(f"sequence length must be positive, got {n}")
    return block_size


# --- the kernel ---------------------------------------------------------------------------------------------
def _chunks(plan: BlockSparsePlan) -> Iterator[tuple[_Segment, int, int]]:
    """(segment, rows r0:r1) of one batch×head in a fixed order (the backward replays the forward's dropout
    draws chunk by chunk): runs of query blocks whose scores hold about `_SCORE_BUDGET` elements."""
    bs = plan.block_size
    for seg in plan.segments:
        width = plan.padded_n if seg.keys is None else seg.keys.shape[-1] * bs
        step = max(1, _SCORE_BUDGET // (bs * width))
        for r0 in range(0, seg.rows.numel(), step):
            yield seg, r0, min(seg.rows.numel(), r0 + step)


class _Head:
    """One batch×head's (padded n, d) q, k, v as blocks, its head layout index and its key bias."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kbias: torch.Tensor | None,
                 plan: BlockSparsePlan, g: int, heads: int) -> None:
        b, h = divmod(g, heads)
        nb, bs = plan.num_blocks, plan.block_size
        self.b, self.h, self.layout = b, h, h if plan.heads > 1 else 0
        self.q, self.k, self.v = q[b, h], k[b, h], v[b, h]
        self.qb, self.kb, self.vb = (x.view(nb, bs, x.shape[-1]) for x in (self.q, self.k, self.v))
        self.kbias = None if kbias is None else kbias[b if kbias.shape[0] > 1 else 0]


class _Chunk:
    """Scores and probabilities (c, bs, L) of query blocks r0:r1 of one segment for one batch×head, and the
    operands their products need: the scaled queries and, for sparse rows, the gathered keys and values."""

    def __init__(self, seg: _Segment, r0: int, r1: int, head: _Head, block_size: int,
                 probs: torch.Tensor | None = None) -> None:
        bs, d = block_size, head.q.shape[-1]
        self.rows = rows = seg.rows[r0:r1]
        self.c = c = rows.numel()
        self.q = head.qb.index_select(0, rows).mul_(d ** -0.5)  # (c, bs, d) scaled queries (a copy)
        if seg.keys is None:  # dense rows: every key, no gather
            self.keys = self.k = self.v = None
            if probs is not None:  # kept by the forward pass
                self.p = probs
                return
            n = head.k.shape[0]
            s = torch.mm(self.q.view(c * bs, d), head.k.t()).view(c, bs, n)
            if head.kbias is not None:
                s.add_(head.kbias)
        else:
            width = seg.keys.shape[-1]
            self.keys = keys = seg.keys[head.layout, r0:r1].reshape(-1)  # (c·K) key blocks
            self.k = head.kb.index_select(0, keys).view(c, width * bs, d)
            self.v = head.vb.index_select(0, keys).view(c, width * bs, -1)
            if probs is not None:
                self.p = probs
                return
            s = torch.bmm(self.q, self.k.transpose(1, 2))  # (c, bs, K·bs)
            bias = None
            if head.kbias is not None:
                bias = head.kbias.view(-1, bs).index_select(0, keys).view(c, 1, width, bs)
            if seg.slot_bias is not None and any(seg.padded[r0:r1]):
                sb = seg.slot_bias[head.layout, r0:r1].view(c, 1, width, 1)
                bias = sb if bias is None else bias + sb
            if bias is not None:
                s.view(c, bs, width, bs).add_(bias)
        if seg.tile_bias is not None:
            s.add_(seg.tile_bias[head.layout, r0:r1])
        p = torch.softmax(s, dim=-1)
        # A row with no allowed key is all -inf, and its softmax NaN: such rows attend to nothing (output 0,
        # gradient 0). Every entry of such a row is NaN, so looking at one column finds them.
        if (head.kbias is not None or any(seg.may_empty[r0:r1])) and bool(p[..., 0].isnan().any()):
            p = p.nan_to_num_(0.0)
        self.p = p


class _BlockSparseFunction(torch.autograd.Function):
    """Forward and backward over the plan's chunks, a batch×head at a time on single-threaded workers
    (`group_pool.map_groups`): a chunk's operands then stay in the worker's cache, and no operation pays for
    synchronising threads. q, k, v are (B, H, padded n, d) and contiguous."""

    @staticmethod
    def forward(ctx, q, k, v, plan: BlockSparsePlan, kbias, dropout_p: float, seed: int):
        B, H, N, _ = q.shape
        nb, bs, dv = plan.num_blocks, plan.block_size, v.shape[-1]
        out = q.new_zeros(B, H, nb, bs, dv)
        # Keep the probabilities for the backward when they fit `_SAVED_PROBS_MAX`: it then skips recomputing
        # the scores and their softmax (about a fifth of the work). They take K·bs values per query and head
        # (8 × 64 for BigBird), linear in n like everything else kept here.
        sizes = [B * H * bs * seg.rows.numel() * (N if seg.keys is None else seg.keys.shape[-1] * bs)
                 for seg in plan.segments]
        keep_probs = any(ctx.needs_input_grad[:3]) and sum(sizes) <= _SAVED_PROBS_MAX
        kept: list[list[torch.Tensor]] = [[] for _ in range(B * H)]

        def run(g: int) -> None:
            head = _Head(q, k, v, kbias, plan, g, H)
            out_h = out[head.b, head.h]
            for i, (seg, r0, r1) in enumerate(_chunks(plan)):
                ch = _Chunk(seg, r0, r1, head, bs)
                p = ch.p
                if keep_probs:
                    kept[g].append(p)
                if dropout_p > 0:
                    keep = _keep_scale(p, dropout_p, _generator(seed, g, i, q.device))
                    p = p * keep if keep_probs else p.mul_(keep)
                if ch.v is None:
                    o = torch.mm(p.view(ch.c * bs, N), head.v)
                else:
                    o = torch.bmm(p, ch.v)
                out_h.index_copy_(0, ch.rows, o.view(ch.c, bs, dv))

        map_groups(run, B * H)
        out = out.view(B, H, N, dv)
        ctx.save_for_backward(q, k, v, out, kbias)
        ctx.plan, ctx.dropout_p, ctx.seed, ctx.kept = plan, dropout_p, seed, kept if keep_probs else None
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, kbias = ctx.saved_tensors
        plan, dropout_p, seed = ctx.plan, ctx.dropout_p, ctx.seed
        B, H, N, d = q.shape
        nb, bs, dv_dim = plan.num_blocks, plan.block_size, v.shape[-1]
        scale = d ** -0.5
        dout = dout.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        kept, ctx.kept = ctx.kept, None  # released as the chunks are used

        def run(g: int) -> None:
            head = _Head(q, k, v, kbias, plan, g, H)
            b, h = head.b, head.h
            do_b = dout[b, h].view(nb, bs, dv_dim)
            # δ_i = Σ_j P_ij dP_ij = dO_i · O_i (dropout included): dS = P ∘ (dP − δ), no second pass over P.
            delta = (dout[b, h] * out[b, h]).sum(-1, keepdim=True).view(nb, bs, 1)
            dq_b, dk_h, dv_h = dq[b, h].view(nb, bs, d), dk[b, h], dv[b, h]
            dk_b, dv_b = dk_h.view(nb, bs, d), dv_h.view(nb, bs, dv_dim)
            for i, (seg, r0, r1) in enumerate(_chunks(plan)):
                probs = None
                if kept is not None:
                    probs, kept[g][i] = kept[g][i], None
                ch = _Chunk(seg, r0, r1, head, bs, probs)
                p, c, rows = ch.p, ch.c, ch.rows
                keep = _keep_scale(p, dropout_p, _generator(seed, g, i, q.device)) if dropout_p > 0 else None
                pd = p if keep is None else p * keep
                do = do_b.index_select(0, rows)  # (c, bs, dv)
                if ch.v is None:
                    do2 = do.view(c * bs, dv_dim)
                    dv_h.addmm_(pd.view(c * bs, N).t(), do2)
                    dp = torch.mm(do2, head.v.t()).view(p.shape)
                else:
                    dv_b.index_add_(0, ch.keys, torch.bmm(pd.transpose(1, 2), do).view(-1, bs, dv_dim))
                    dp = torch.bmm(do, ch.v.transpose(1, 2))
                if keep is not None:
                    dp.mul_(keep)
                ds = dp.sub_(delta.index_select(0, rows)).mul_(p)
                # Scores are (scale·q)·k: ∂s/∂q = scale·k, and dk uses the scaled queries.
                if ch.k is None:
                    ds2 = ds.view(c * bs, N)
                    dq_c = torch.mm(ds2, head.k).view(c, bs, d)
                    dk_h.addmm_(ds2.t(), ch.q.view(c * bs, d))
                else:
                    dq_c = torch.bmm(ds, ch.k)
                    dk_b.index_add_(0, ch.keys, torch.bmm(ds.transpose(1, 2), ch.q).view(-1, bs, d))
                dq_b.index_copy_(0, rows, dq_c.mul_(scale))

        map_groups(run, B * H)
        return dq, dk, dv, None, None, None, None


def _generator(seed: int, group: int, chunk: int, device: torch.device) -> torch.Generator:
    """The dropout generator of one chunk of one batch×head: the same draws in the forward and the backward
    whichever worker runs them."""
    return torch.Generator(device=device).manual_seed((seed + 1_000_003 * group + 7_919 * chunk) % (1 << 63))


def _keep_scale(p: torch.Tensor, dropout_p: float, gen: torch.Generator) -> torch.Tensor:
    """0 where dropped, 1 / (1 − p) where kept: the next draw of `gen` (the backward replays the draws)."""
    return torch.empty_like(p).bernoulli_(1.0 - dropout_p, generator=gen).mul_(1.0 / (1.0 - dropout_p))


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           allowed: torch.Tensor | BlockSparsePlan, block_size: int = 64,
                           key_padding_mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention computed only on the tiles that `allowed` touches; equal to `masked_attention`.

    q, k, v: (batch, heads, n, head_dim) (v may have another head_dim). `allowed`: bool (heads or 1, n, n),
    True = query i may attend to key j, or a `BlockSparsePlan` built from such a mask (reuse one across
    calls: building reads the whole mask). `key_padding_mask`: (batch, n), True/1 = real token. n need not
    be a multiple of `block_size` (padded internally). Rows with no allowed key give 0, with no NaN in the
    output or the gradients. `dropout_p` drops probabilities as `F.dropout` would (see the module docstring
    for how the backward replays the mask). Returns (batch, heads, n, head_dim of v).
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (batch, heads, n, head_dim) with matching shapes; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    batch, heads, n, _ = q.shape
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if isinstance(allowed, BlockSparsePlan):
        plan = allowed
    else:
        if isinstance(allowed, torch.Tensor) and allowed.dim() == 3 and allowed.shape[-2:] != (n, n):
            raise ValueError(f"allowed must be (heads or 1, n, n) = (…, {n}, {n}); got {tuple(allowed.shape)}")
        plan = BlockSparsePlan.from_mask(allowed, block_size)
    if plan.n != n:
        raise ValueError(f"the plan was built for n={plan.n}, but the inputs have n={n}")
    if plan.heads not in (1, heads):
        raise ValueError(f"the mask has {plan.heads} head layouts; expected 1 or {heads} (the inputs' heads)")
    if plan.device != q.device:
        plan = plan.to(q.device)
    N = plan.padded_n
    kbias = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, n):
            raise ValueError(f"key_padding_mask must be (batch, n) = {(batch, n)}, got {tuple(key_padding_mask.shape)}")
        real = key_padding_mask.to(device=q.device, dtype=torch.bool)
        kbias = torch.zeros(batch, N, dtype=q.dtype, device=q.device)
        kbias[:, :n].masked_fill_(~real, float("-inf"))
        kbias[:, n:] = float("-inf")
    elif N > n:
        kbias = torch.zeros(1, N, dtype=q.dtype, device=q.device)
        kbias[:, n:] = float("-inf")

    def prep(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, N - n)) if N > n else x.contiguous()

    seed = int(torch.randint(0, 2 ** 62, (1,)).item()) if dropout_p > 0 else 0
    out = _BlockSparseFunction.apply(prep(q), prep(k), prep(v), plan, kbias, float(dropout_p), seed)
    return out[:, :, :n] if N > n else out

