"""Dense-masked execution of the fixed patterns: full softmax attention restricted to a pattern.

This is the reference every faster path (block-sparse, FlexAttention) must equal. It costs as much as dense
attention (the scores are computed for every pair and then masked), so its value is exactness and
simplicity, not speed. One mechanism is registered per pattern name ("strided", "fixed", "longformer",
"logsparse", "bigbird", "star"); its parameters come from `config.attention_params` (see
`patterns.PATTERNS`), checked when the model is built and again against each sequence length.

`attention_params` also chooses the execution (`IMPLS`), all exact to the same function:
- "impl": "masked" (default, this dense-masked reference), "block_sparse" (`block_sparse.py`: only the
  tiles the pattern touches, own backward; the CPU path for long inputs), "flex" (FlexAttention, `flex.py`:
  CUDA; on CPU forward only) or "auto" (FlexAttention on CUDA when it is importable and no attention dropout
  is active, else block-sparse when the plan computes at most `AUTO_MAX_FRACTION` of the score matrix, else
  masked);
- "block_size": the tile size of "block_sparse" and "flex" (default: the pattern's `block` when > 1, else 64
  for block-sparse and 128 for FlexAttention).
Asking for "flex" where it cannot run raises an error; nothing falls back silently. `need_weights=True` (the
probabilities, an n × n tensor in any case) always uses the dense-masked path.
"""
from __future__ import annotations

from dataclasses import dataclass, make_dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import flex, patterns
from .block_sparse import BlockSparsePlan, block_sparse_attention
from .registry import AttentionParams, attention_params, param, register_attention

IMPLS = ("masked", "block_sparse", "flex", "auto")
# Execution parameters accepted in attention_params besides the pattern's own.
EXEC_PARAMS = ("impl", "block_size")
# "auto" uses block-sparse when the plan computes at most this share of the score matrix: beyond it the
# gathers cost more than the skipped tiles save (dense SDPA is a fused kernel).
AUTO_MAX_FRACTION = 0.5


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     dropout_p: float = 0.0, need_weights: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention where `allowed` (broadcastable to (batch, heads, n, n), True = may attend) is False.

    Rows with no allowed key give output 0 and probabilities 0 (not NaN, and no NaN gradients): such a row
    is unmasked for the softmax, which keeps every value finite, and then zeroed.
    """
    empty = ~allowed.any(dim=-1, keepdim=True)
    has_empty = bool(empty.any())
    safe = allowed | empty if has_empty else allowed
    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p)
        return (out.masked_fill(empty, 0.0) if has_empty else out), None
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    # finfo.min rather than -inf: exp underflows to exactly 0 either way, and a row is never all -inf.
    probs = scores.masked_fill(~safe, torch.finfo(scores.dtype).min).softmax(dim=-1)
    if has_empty:
        probs = probs.masked_fill(empty, 0.0)
    return torch.matmul(F.dropout(probs, dropout_p), v), probs


# Masks and plans are cached per sequence length; with length-bucketed batches there are many lengths, so
# only the most recently used few are kept (an n × n mask per length would otherwise grow without bound).
_CACHE_LIMIT = 16


def _remember(cache: dict, key: object, value: object) -> None:
    """Store `value` under `key`, dropping the oldest entries beyond `_CACHE_LIMIT` (dicts keep insertion
    order, and a hit is not refreshed: a bounded FIFO is enough for this)."""
    cache[key] = value
    while len(cache) > _CACHE_LIMIT:
        cache.pop(next(iter(cache)))


class PatternAttention(nn.Module):
    """Softmax attention restricted to `pattern` and to the key padding mask, executed by `impl`.

    The (heads, n, n) pattern mask (one shared mask for non-random patterns) or its block-sparse plan is
    built once per (n, device) and cached; neither is a buffer, so checkpoints of a pattern model equal those
    of a dense model.
    """

    pattern: str = ""

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        self.dropout = float(config.attention_probs_dropout_prob)
        self.num_heads = int(config.num_attention_heads)
        # Names and types fail at build time; values are checked against each input length, since n varies
        # between batches and a window or block that fits one length may not fit another.
        p = attention_params(self.pattern, config)
        self.impl: str = p.impl
        self.block_size: int | None = p.block_size
        given = getattr(config, "attention_params", None) or {}
        self.params = {k: v for k, v in given.items() if k not in EXEC_PARAMS}
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._plans: dict[tuple[int, torch.device], BlockSparsePlan] = {}
        self._flex_masks: dict[tuple[int, torch.device], object] = {}

    def _tile(self, default: int) -> int:
        if self.block_size is not None:
            return self.block_size
        block = self.params.get("block", 1)
        return block if isinstance(block, int) and block > 1 else default

    def pattern_mask(self, n: int, device: torch.device) -> torch.Tensor:
        """Bool (heads or 1, n, n) on `device`, cached per (n, device)."""
        key = (n, torch.device(device))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._build_mask(n, device)
            _remember(self._cache, key, cached)
        return cached

    def _build_mask(self, n: int, device: torch.device) -> torch.Tensor:
        heads = self.num_heads if patterns.PATTERNS[self.pattern].random else 1
        return patterns.head_masks(self.pattern, n, heads, **self.params).contiguous().to(device)

    def plan(self, n: int, device: torch.device) -> BlockSparsePlan:
        """The block-sparse plan for length n on `device`, cached per (n, device); the n × n mask it is
        built from is not kept."""
        key = (n, torch.device(device))
        cached = self._plans.get(key)
        if cached is None:
            mask = self._cache.get(key)
            if mask is None:
                mask = self._build_mask(n, torch.device("cpu"))
            cached = BlockSparsePlan.from_mask(mask.cpu(), self._tile(64)).to(device)
            _remember(self._plans, key, cached)
        return cached

    def _flex_mask(self, n: int, device: torch.device) -> object:
        key = (n, torch.device(device))
        cached = self._flex_masks.get(key)
        if cached is None:
            cached = flex.block_mask(self._build_mask(n, device), self._tile(128))
            _remember(self._flex_masks, key, cached)
        return cached

    def _choose(self, q: torch.Tensor, dropout_p: float) -> str:
        """The execution for this call: `impl`, with "auto" resolved (see the module docstring)."""
        if self.impl != "auto":
            return self.impl
        if q.is_cuda and flex.available() and dropout_p == 0.0:
            return "flex"
        if self.plan(q.shape[-2], q.device).tile_fraction <= AUTO_MAX_FRACTION:
            return "block_sparse"
        return "masked"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = q.shape[-2]
        if k.shape[-2] != n:
            raise ValueError(f"attention {self.pattern!r} is self-attention: {n} queries but {k.shape[-2]} keys")
        p = self.dropout if self.training else 0.0
        impl = "masked" if need_weights else self._choose(q, p)
        if impl == "block_sparse":
            return block_sparse_attention(q, k, v, self.plan(n, q.device), key_padding_mask=key_padding_mask,
                                          dropout_p=p), None
        if impl == "flex":
            return flex.flex_masked_attention(q, k, v, self._flex_mask(n, q.device), key_padding_mask, p), None
        allowed = self.pattern_mask(n, q.device)[None]  # (1, heads or 1, n, n)
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask.bool()[:, None, None, :]
        return masked_attention(q, k, v, allowed, dropout_p=p, need_weights=need_weights)


@dataclass(frozen=True)
class PatternParams(AttentionParams):
    """The execution parameters every pattern takes; `_schema` adds the pattern's own."""

    impl: str = param("masked", "execution (default masked; see the module docstring)", choices=IMPLS)
    block_size: int | None = param(None, "tile size of block_sparse and flex, e.g. 32, 64, 128 (default: the "
                                         "pattern's block when > 1, else 64 for block_sparse, 128 for flex)",
                                   minimum=1)
    block: int = param(None, patterns.COMMON_PARAMS["block"])


def _schema(pattern: patterns.Pattern) -> type[PatternParams]:
    """The parameter schema of one pattern: its own parameters (default None: the pattern's default at the
    input length, checked against each length by `patterns.resolve_params`) and the execution's."""
    fields = []
    for key, help in pattern.params.items():
        if key == "global_blocks":
            fields.append((key, str, param(None, help, choices=patterns.GLOBAL_BLOCKS)))
        else:
            fields.append((key, int, param(None, help)))
    return make_dataclass(f"{pattern.name.capitalize()}Params", fields, bases=(PatternParams,), frozen=True,
                          namespace={"__module__": __name__})


def _make(name: str) -> type[PatternAttention]:
    """A registered subclass of `PatternAttention` for one pattern name."""
    cls = type(f"{name.capitalize()}Attention", (PatternAttention,),
               {"pattern": name, "__doc__": f"Dense-masked {name!r} pattern attention (see `patterns`).",
                "__module__": __name__})
    return register_attention(name, params=_schema(patterns.PATTERNS[name]))(cls)


MECHANISMS: dict[str, type[PatternAttention]] = {name: _make(name) for name in patterns.PATTERNS}
