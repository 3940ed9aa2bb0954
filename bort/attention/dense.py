"""Dense softmax attention through `torch.nn.functional.scaled_dot_product_attention`."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_attention


@register_attention("dense")
class DenseAttention(nn.Module):
    """Full softmax attention with key padding; SDPA picks the fused kernel (flash on CPU and GPU).

    With `need_weights=True` the probabilities are computed explicitly (the fused kernels do not return
    them), which is the slow path used for attention distillation and inspection.
    """

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        self.dropout = float(config.attention_probs_dropout_prob)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.dropout if self.training else 0.0
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        if not need_weights:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p), None
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        return torch.matmul(F.dropout(probs, p), v), probs
