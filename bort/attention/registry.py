"""The attention registry: mechanisms are chosen by name in `BortConfig.attention`.

Every mechanism is an `nn.Module` built as `cls(config, layer_idx)` and called as
`forward(q, k, v, key_padding_mask=None, need_weights=False) -> (output, probabilities or None)` on
tensors of shape (batch, heads, seq, head_dim); `key_padding_mask` is (batch, seq) bool with True for real
tokens. The projections around it (query/key/value/output) belong to the encoder layer, so a mechanism
never owns parameters that a checkpoint of another mechanism would lack, unless it is learned (DAM).
A module holding parameters that are not weights (DAM's mask logits) declares them exempt from weight decay
with a `no_weight_decay()` method returning their names relative to itself; `train.optim.decay_param_groups`
honours it, so no trainer needs to know a mechanism's parameter names.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.nn as nn

_REGISTRY: dict[str, type[nn.Module]] = {}

M = TypeVar("M", bound=type[nn.Module])


def register_attention(name: str) -> Callable[[M], M]:
    """Class decorator adding a mechanism to the registry under `name`."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attention mechanism {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_attention(name: str) -> type[nn.Module]:
    """The mechanism class registered under `name`; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention mechanism {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def available_attention() -> list[str]:
    return sorted(_REGISTRY)
