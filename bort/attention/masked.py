"""Dense-masked execution of the fixed patterns: full softmax attention restricted to a pattern.

This is the reference every faster path (block-sparse, FlexAttention) must equal. It costs as much as dense
attention (the scores are computed for every pair and then masked), so its value is exactness and
simplicity, not speed. One mechanism is registered per pattern name ("strided", "fixed", "longformer",
"logsparse", "bigbird", "star"); its parameters come from `config.attention_params` (see
`patterns.PATTERNS`), checked when the model is built and again against each sequence length.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import patterns
from .registry import register_attention


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


class PatternAttention(nn.Module):
    """Dense softmax attention restricted to `pattern` and to the key padding mask.

    The (heads, n, n) pattern mask (one shared mask for non-random patterns) is built once per (n, device)
    and cached; it is not a buffer, so checkpoints of a pattern model equal those of a dense model.
    """

    pattern: str = ""

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        self.dropout = float(config.attention_probs_dropout_prob)
        self.num_heads = int(config.num_attention_heads)
        self.params = dict(getattr(config, "attention_params", None) or {})
        # Fail at build time on a misspelt parameter; values are checked against each input length, since
        # n varies between batches and a window or block that fits one length may not fit another.
        self._check_names()
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _check_names(self) -> None:
        valid = set(patterns.PATTERNS[self.pattern].params) | {"block"}
        unknown = sorted(set(self.params) - valid)
        if unknown:
            raise ValueError(f"attention {self.pattern!r}: unknown attention_params {', '.join(unknown)}; "
                             f"valid parameters: {', '.join(sorted(valid))}")

    def pattern_mask(self, n: int, device: torch.device) -> torch.Tensor:
        """Bool (heads or 1, n, n) on `device`, cached per (n, device)."""
        key = (n, torch.device(device))
        cached = self._cache.get(key)
        if cached is None:
            heads = self.num_heads if patterns.PATTERNS[self.pattern].random else 1
            cached = patterns.head_masks(self.pattern, n, heads, **self.params).contiguous().to(device)
            self._cache[key] = cached
        return cached

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = q.shape[-2]
        if k.shape[-2] != n:
            raise ValueError(f"attention {self.pattern!r} is self-attention: {n} queries but {k.shape[-2]} keys")
        allowed = self.pattern_mask(n, q.device)[None]  # (1, heads or 1, n, n)
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask.bool()[:, None, None, :]
        p = self.dropout if self.training else 0.0
        return masked_attention(q, k, v, allowed, dropout_p=p, need_weights=need_weights)


def _make(name: str) -> type[PatternAttention]:
    """A registered subclass of `PatternAttention` for one pattern name."""
    cls = type(f"{name.capitalize()}Attention", (PatternAttention,),
               {"pattern": name, "__doc__": f"Dense-masked {name!r} pattern attention (see `patterns`).",
                "__module__": __name__})
    return register_attention(name)(cls)


MECHANISMS: dict[str, type[PatternAttention]] = {name: _make(name) for name in patterns.PATTERNS}
