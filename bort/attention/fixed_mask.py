"""A stored boolean attention mask per head: the fixed mask a DAM search exports ("fixed_mask").

Storage: the mask is a persistent bool buffer of the encoder, `encoder.fixed_mask.mask`, shaped (sets, heads,
length, length) with sets 1 (shared by all layers) or the number of layers (`per_layer`). A buffer rather than
a side file referenced by the config because then the checkpoint stays one safetensors file that every
existing reader, the shape checks and the S3 sync already handle, the mask can never drift from the weights it
was trained with, and `model.to(device)` moves it; at 1 byte an entry it is small (16 heads × 512² = 4 MB).
`attention_params` records only its shape and how to run it. A model built from the config alone attends
densely (an all-True mask) until a checkpoint fills the buffer; loading a checkpoint without the mask is an
error (it is an encoder parameter like any other).

Shorter inputs use the top-left n × n crop of the stored mask (positions are absolute: query i and key j keep
their relation whatever n is); longer inputs are an error.

`attention_params` (`FixedMaskParams`; unknown names are an error listing these):
    impl        "masked" (dense scores, masked softmax: the exact reference) or "block_sparse" (only the
                tiles with an allowed entry are computed; `block_sparse.block_sparse_attention`)
    length      n of the stored mask (default `config.max_position_embeddings`)
    per_layer   one mask per layer (default false: one for all layers)
    block_size  tile size of the block-sparse execution (default 64)

With `need_weights` (attention distillation, inspection) the masked path runs, since it is the one that
materialises the probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .masked import masked_attention
from .registry import AttentionParams, attention_params, param, register_attention
from .shared_state import SharedStateAttention

IMPLS = ("masked", "block_sparse")


def _nothing_to_learn(name: str, why: str) -> str:
    return (f"a fixed mask has nothing to learn ({why}, and a fixed mask is a stored 0/1 buffer with none); "
            f"remove {name}, or search with attention dam_s/dam_u before `bort mask export`")


@dataclass(frozen=True)
class FixedMaskParams(AttentionParams):
    """The `attention_params` of "fixed_mask" (see the module docstring)."""

    impl: str = param("masked", "execution (default masked)", choices=IMPLS)
    length: int | None = param(None, "n of the stored (n, n) mask (default: config.max_position_embeddings)",
                               minimum=1)
    per_layer: bool = param(False, "one mask per layer instead of one for all layers (default false)")
    block_size: int = param(64, "tile size of the block-sparse execution (default 64)", minimum=1)

    # The DAM search's options, given to its exported mask (a config edited from dam_s/dam_u to fixed_mask):
    # refused with the reason rather than as a mere unknown name.
    refused: ClassVar[dict[str, str]] = {
        "penalty": _nothing_to_learn("penalty", "the mask penalty λ·Σ|M| (sum or mean) trains DAM mask logits"),
        "eval_mask": _nothing_to_learn("eval_mask", "eval-mode sampling draws from DAM mask logits"),
    }

    def resolve(self, config: Any) -> "FixedMaskParams":
        return self if self.length is not None else replace(self, length=int(config.max_position_embeddings))


class StoredMask(nn.Module):
    """The encoder's stored mask: buffer `mask`, bool (sets, heads, length, length)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        p: FixedMaskParams = attention_params("fixed_mask", config)
        self.length: int = p.length
        self.per_layer: bool = p.per_layer
        sets = int(config.num_hidden_layers) if self.per_layer else 1
        heads = int(config.num_attention_heads)
        self.register_buffer("mask", torch.ones(sets, heads, self.length, self.length, dtype=torch.bool))
        self._plans: dict[tuple, Any] = {}

    def extra_repr(self) -> str:
        return f"length={self.length}, per_layer={self.per_layer}"

    def mask_for(self, layer_idx: int, n: int) -> torch.Tensor:
        """Bool (heads, n, n): the top-left crop of the layer's mask."""
        if n > self.length:
            raise ValueError(f"attention 'fixed_mask': sequence length {n} exceeds the stored mask's length "
                             f"{self.length}; export the mask at a length of at least {n}")
        return self.mask[layer_idx if self.per_layer else 0, :, :n, :n]

    def plan_for(self, layer_idx: int, n: int, block_size: int) -> Any:
        """The block-sparse plan of the layer's mask at length n, built once and reused by every layer that
        shares the mask and every later forward (building one reads the whole mask). Keyed on the buffer's
        storage and version, so `set_mask`, loading a state dict or moving the model invalidates it."""
        from .block_sparse import BlockSparsePlan

        index = layer_idx if self.per_layer else 0
        key = (index, n, block_size, self.mask.data_ptr(), self.mask._version)
        plan = self._plans.get(key)
        if plan is None:
            self._plans = {k: v for k, v in self._plans.items() if k[3:] == key[3:]}  # drop stale plans
            plan = BlockSparsePlan.from_mask(self.mask_for(layer_idx, n).contiguous(), block_size)
            self._plans[key] = plan
        return plan

    def set_mask(self, mask: torch.Tensor) -> None:
        """Store `mask`: bool (heads, length, length), or (layers, heads, length, length) per layer."""
        mask = mask.bool()
        if not self.per_layer and mask.dim() == 3:
            mask = mask[None]
        if tuple(mask.shape) != tuple(self.mask.shape):
            raise ValueError(f"fixed mask shape {tuple(mask.shape)} does not fit the config's "
                             f"{tuple(self.mask.shape)} (sets, heads, length, length)")
        with torch.no_grad():
            self.mask.copy_(mask)


@register_attention("fixed_mask", params=FixedMaskParams)
class FixedMaskAttention(SharedStateAttention):
    """Softmax attention restricted to the encoder's stored per-head mask and to the key padding mask."""

    shared_hint = "bind_shared(StoredMask(config))"

    @classmethod
    def build_shared(cls, config: Any) -> tuple[str, nn.Module]:
        """The encoder-level module holding the mask, and the attribute name the encoder gives it."""
        return "fixed_mask", StoredMask(config)

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        p: FixedMaskParams = attention_params("fixed_mask", config)
        self.impl: str = p.impl
        self.block_size: int = p.block_size
        self.layer_idx = int(layer_idx)
        self.dropout = float(config.attention_probs_dropout_prob)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        stored: StoredMask = self.shared("fixed_mask")
        n = self.self_attention_length("fixed_mask", q, k)
        mask = stored.mask_for(self.layer_idx, n)
        p = self.dropout if self.training else 0.0
        if self.impl == "block_sparse" and not need_weights:
            # Imported here: the block-sparse kernel is optional for every other mechanism.
            from .block_sparse import block_sparse_attention

            plan = stored.plan_for(self.layer_idx, n, self.block_size)
            out = block_sparse_attention(q, k, v, plan, block_size=self.block_size,
                                         key_padding_mask=key_padding_mask, dropout_p=p)
            return out, None
        allowed = mask[None]
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask.bool()[:, None, None, :]
        return masked_attention(q, k, v, allowed, dropout_p=p, need_weights=need_weights)
