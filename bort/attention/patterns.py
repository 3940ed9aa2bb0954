"""Fixed sparse attention patterns (SparseBERT's baselines) as pure functions of the sequence length.

`mask(name, seq_len, **params)` returns a bool (n, n) tensor, True where query i may attend to key j;
`block_layout` pools it into (heads, n_blocks, n_blocks) tiles for block-sparse execution; `sparsity` is the
percentage of zero entries, the ratio SparseBERT reports. With the defaults, n = 128 gives Strided 70.4,
Fixed 72.7, Longformer 88.6, LogSparse 89.8, BigBird 93.1 and Star 96.1.

How the defaults scale with n (see `PATTERNS` for every parameter):

- strided, fixed: stride = round(sqrt(n / 8)) (4 at n = 128), so cost grows like n·sqrt(n) as in the
  Sparse Transformer, whose stride is about sqrt(n);
- logsparse: parameter-free, about 2·log2(n) keys per query, so n·log(n);
- longformer, bigbird, star: window, global and random counts do not depend on n, so cost is linear in n,
  as in the papers (Longformer and BigBird keep their window fixed while the input grows).

Every pattern also takes `block` (default 1): with block > 1 the pattern is built on the grid of n / block
block positions (every size parameter then counts blocks) and each cell is expanded to a block × block
tile. That is BigBird's own formulation (e.g. block 64 with 3 window, 2 global and 3 random blocks) and is what
keeps a block layout sparse; `block` must divide n.

BigBird's global blocks are the first and the last (`global_blocks="first_last"`, the default), as in the
BigBird paper's block-sparse implementation and Hugging Face's `big_bird` (tested against HF's layout); with
num_global g the first ⌈g/2⌉ and the last ⌊g/2⌋ positions. `global_blocks="first"` gives the first g
positions, this library's layout before issue 24. With padded batches the last block is the padded sequence's
last, as in HF. Longformer and Star keep their global tokens first (their papers' [CLS]-style globals).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .registry import is_integer

Params = dict[str, Any]


@dataclass(frozen=True)
class Pattern:
    """A named pattern: its builder, its parameters with defaults (a function of n) and their meaning."""

    name: str
    build: Callable[..., torch.Tensor]
    defaults: Callable[[int], Params]
    params: dict[str, str]  # parameter name -> meaning and default
    random: bool = False  # True when the pattern depends on `seed` (per-head masks then differ)


def _offsets(n: int) -> torch.Tensor:
    """The (n, n) matrix of i - j (query minus key)."""
    idx = torch.arange(n)
    return idx[:, None] - idx[None, :]


def _global(allowed: torch.Tensor, num_global: int) -> torch.Tensor:
    """The first `num_global` tokens attend to and are attended by everything."""
    allowed[:num_global, :] = True
    allowed[:, :num_global] = True
    return allowed


# Where BigBird's global positions sit: "first_last" (the paper's and HF's), "first" (our former layout).
GLOBAL_BLOCKS = ("first_last", "first")


def _global_positions(n: int, num_global: int, global_blocks: str) -> torch.Tensor:
    """Indices of the global positions: the first ⌈g/2⌉ and the last ⌊g/2⌋, or the first g."""
    idx = torch.arange(n)
    if global_blocks == "first":
        return idx[:num_global]
    last = num_global // 2
    return torch.cat((idx[: num_global - last], idx[n - last:] if last else idx[:0]))


def _strided(n: int, stride: int) -> torch.Tensor:
    d = _offsets(n)
    return (d.abs() < stride) | (d % stride == 0)


def _fixed(n: int, stride: int, summary: int) -> torch.Tensor:
    idx = torch.arange(n)
    same_block = (idx[:, None] // stride) == (idx[None, :] // stride)
    # The last `summary` positions of every block are "summary" keys that every query can read.
    summary_key = (idx % stride) >= stride - summary
    return same_block | summary_key[None, :]


def _longformer(n: int, window: int, num_global: int) -> torch.Tensor:
    return _global(_offsets(n).abs() <= window, num_global)


def _logsparse(n: int) -> torch.Tensor:
    d = _offsets(n).abs()
    # |i - j| is a power of two exactly when it is positive and has a single bit set.
    return (d == 0) | ((d > 0) & ((d & (d - 1)) == 0))


def _bigbird(n: int, window: int, num_global: int, num_random: int, seed: int,
             global_blocks: str = "first_last") -> torch.Tensor:
    allowed = _offsets(n).abs() <= window
    positions = _global_positions(n, num_global, global_blocks)
    allowed[positions, :] = True
    allowed[:, positions] = True
    if num_random == 0:
        return allowed
    # Random keys are drawn from those a row does not already see, so the count (and the sparsity) is
    # exact for a given n; global rows already see everything. A private generator keeps it reproducible
    # without touching the global RNG.
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(n, n, generator=gen).masked_fill(allowed, -1.0)
    take = min(num_random, n)
    top = scores.topk(take, dim=1)
    chosen = torch.zeros(n, n, dtype=torch.bool).scatter_(1, top.indices, top.values >= 0)
    return allowed | chosen


def _star(n: int, window: int, num_global: int) -> torch.Tensor:
    return _longformer(n, window, num_global)


def _stride_default(n: int) -> int:
    return max(1, min(n, round(math.sqrt(n / 8))))


PATTERNS: dict[str, Pattern] = {
    "strided": Pattern(
        "strided", _strided, lambda n: {"stride": _stride_default(n)},
        {"stride": "keys with |i-j| < stride or (i-j) % stride == 0; 1..n; default round(sqrt(n/8)) (4 at 128)"}),
    "fixed": Pattern(
        "fixed", _fixed, lambda n: {"stride": _stride_default(n), "summary": 1},
        {"stride": "block length l: keys in the query's block of l; 1..n; default round(sqrt(n/8))",
         "summary": "the last `summary` positions of every block are readable by all queries; 1..stride; "
                    "default 1"}),
    "longformer": Pattern(
        "longformer", _longformer, lambda n: {"window": min(6, n - 1), "num_global": min(1, n)},
        {"window": "keys with |i-j| <= window; 0..n-1; default 6",
         "num_global": "first tokens attending and attended everywhere; 0..n; default 1"}),
    # LogSparse has no parameters: keys at |i-j| = 0 or a power of two, about 2*log2(n) per query.
    "logsparse": Pattern("logsparse", _logsparse, lambda n: {}, {}),
    "bigbird": Pattern(
        "bigbird", _bigbird,
        lambda n: {"window": min(1, n - 1), "num_global": min(2, n), "num_random": 2, "seed": 0,
                   "global_blocks": "first_last"},
        {"window": "keys with |i-j| <= window; 0..n-1; default 1",
         "num_global": "tokens attending and attended everywhere (where: global_blocks); 0..n; default 2",
         "global_blocks": "first_last (the first ceil(g/2) and last floor(g/2) positions, as BigBird and HF) "
                          "or first (the first g); default first_last",
         "num_random": "extra keys per row drawn outside window and global (fewer if the row has fewer "
                       "unseen keys); >= 0; default 2",
         "seed": "seed of the random keys (head h of a layout uses seed + h); default 0"},
        random=True),
    "star": Pattern(
        "star", _star, lambda n: {"window": min(1, n - 1), "num_global": min(1, n)},
        {"window": "keys with |i-j| <= window (the ring); 0..n-1; default 1",
         "num_global": "relay tokens attending and attended everywhere; 0..n; default 1"}),
}

COMMON_PARAMS = {"block": "granularity: build on n/block positions and expand each to a block x block tile; "
                    "must divide n; default 1"}


def _get(name: str) -> Pattern:
    try:
        return PATTERNS[name]
    except KeyError:
        raise ValueError(f"unknown attention pattern {name!r}; valid patterns: {', '.join(PATTERNS)}") from None


def _int(name: str, key: str, value: Any) -> int:
    if not is_integer(value):
        raise ValueError(f"pattern {name!r}: parameter {key} must be an integer, got {value!r}")
    return value


def _in_range(name: str, key: str, value: int, lo: int, hi: int, n: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"pattern {name!r}: {key}={value} does not fit seq_len {n}; valid values: {lo}..{hi}")


def resolve_params(name: str, seq_len: int, **params: Any) -> Params:
    """The full parameter set for `name` at `seq_len`: defaults filled in, everything checked.

    Raises `ValueError` naming the valid patterns, parameters or ranges. With `block` > 1 the other sizes
    are checked against the block grid n / block.
    """
    pattern = _get(name)
    n = _int(name, "seq_len", seq_len)
    if n <= 0:
        raise ValueError(f"pattern {name!r}: seq_len must be positive, got {n}")
    valid = {**pattern.params, **COMMON_PARAMS}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"pattern {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                         f"valid parameters: {', '.join(valid) or '(none)'}")
    block = _int(name, "block", params.get("block", 1))
    if block < 1 or n % block:
        divisors = [b for b in range(1, n + 1) if n % b == 0]
        raise ValueError(f"pattern {name!r}: block={block} does not divide seq_len {n}; "
                         f"valid values: {', '.join(map(str, divisors))}")
    grid = n // block
    values = {**pattern.defaults(grid), **{k: v for k, v in params.items() if k != "block"}}
    for key, value in values.items():
        if key == "global_blocks":
            if not isinstance(value, str) or value not in GLOBAL_BLOCKS:
                raise ValueError(f"pattern {name!r}: global_blocks={value!r}; valid values: "
                                 f"{', '.join(GLOBAL_BLOCKS)}")
            continue
        value = _int(name, key, value)
        if key == "stride":
            _in_range(name, key, value, 1, grid, grid)
        elif key == "window":
            _in_range(name, key, value, 0, grid - 1, grid)
        elif key == "num_global":
            _in_range(name, key, value, 0, grid, grid)
        elif key == "num_random" and value < 0:
            # Not capped by n: a row takes as many as it has unseen keys, so short inputs still work.
            raise ValueError(f"pattern {name!r}: num_random must be >= 0, got {value}")
    if "summary" in values:
        _in_range(name, "summary", values["summary"], 1, values["stride"], grid)
    return {**values, "block": block}


def mask(name: str, seq_len: int, **params: Any) -> torch.Tensor:
    """Bool (seq_len, seq_len) tensor on the CPU, True where query i may attend to key j."""
    values = resolve_params(name, seq_len, **params)
    block = values.pop("block")
    allowed = _get(name).build(seq_len // block, **values)
    if block > 1:
        allowed = allowed.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return allowed


def head_masks(name: str, seq_len: int, num_heads: int = 1, **params: Any) -> torch.Tensor:
    """Bool (heads, n, n): one mask per head. Only random patterns differ by head (head h uses seed + h,
    as BigBird draws its random blocks per head); the others are one mask expanded without a copy."""
    if not is_integer(num_heads) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
    if not _get(name).random:
        return mask(name, seq_len, **params).expand(num_heads, seq_len, seq_len)
    seed = resolve_params(name, seq_len, **params)["seed"]
    return torch.stack([mask(name, seq_len, **{**params, "seed": seed + h}) for h in range(num_heads)])


def block_layout(name: str, seq_len: int, block_size: int, num_heads: int = 1, **params: Any) -> torch.Tensor:
    """Bool (heads, n_blocks, n_blocks): True where a block_size × block_size tile of the element mask has
    any allowed entry. Expanded back it covers the element mask; a block-sparse kernel computes the True
    tiles and applies the element mask inside them. `block_size` must divide seq_len."""
    if not is_integer(block_size) or block_size < 1 or seq_len % block_size:
        divisors = [b for b in range(1, seq_len + 1) if seq_len % b == 0] if isinstance(seq_len, int) else []
        raise ValueError(f"block_size {block_size!r} does not divide seq_len {seq_len}; "
                         f"valid values: {', '.join(map(str, divisors))}")
    masks = head_masks(name, seq_len, num_heads, **params)
    nb = seq_len // block_size
    tiles = masks.reshape(num_heads, nb, block_size, nb, block_size)
    return tiles.any(dim=4).any(dim=2)


def sparsity(allowed: torch.Tensor) -> float:
    """Percentage of zero (disallowed) entries, SparseBERT's sparsity ratio."""
    if allowed.numel() == 0:
        raise ValueError("sparsity of an empty mask is undefined")
    return 100.0 * (1.0 - allowed.bool().sum().item() / allowed.numel())


def describe() -> str:
    """One line per pattern with its parameters, for error messages and `--help` text."""
    lines = []
    for p in PATTERNS.values():
        params = "; ".join(f"{k}: {v}" for k, v in {**p.params, **COMMON_PARAMS}.items())
        lines.append(f"{p.name}: {params}")
    return "\n".join(lines)
