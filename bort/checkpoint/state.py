"""Fitting a state dict to a model: prefix adaptation, shape checks and clear reports of what differs."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from .errors import CheckpointError

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "bort."
# Buffers some checkpoints carry that our model computes instead.
IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")


def canonical_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Put encoder parameters under `bort.` and keep head parameters at the top level, whatever model
    the state came from (a bare encoder has no prefix, heads have `bort.`)."""
    head_roots = ("lm_head.", "classifier.")
    out = {}
    for key, value in state.items():
        if key.endswith(IGNORED_KEYS):
            continue
        if key.startswith(ENCODER_PREFIX) or key.startswith(head_roots):
            out[key] = value
        else:
            out[ENCODER_PREFIX + key] = value
    return out


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                    strict_heads: bool = False) -> list[str]:
    """Copy `state` (canonical or model-shaped keys) into `model`, checking every shape.

    Raises `CheckpointError` listing all shape mismatches (name, checkpoint shape, model shape) and all
    missing encoder parameters. Missing head parameters are left as initialised (a new task head) and
    returned, so callers can say so; with `strict_heads` they are an error too. Unexpected keys are
    logged and ignored (e.g. a pooler or NSP head the model does not have).
    """
    canonical = canonical_state(state)
    own = model.state_dict()
    encoder_only = not any(k.startswith(ENCODER_PREFIX) for k in own)
    if encoder_only:
        wanted = {k: v for k, v in canonical.items() if k.startswith(ENCODER_PREFIX)}
        wanted = {k[len(ENCODER_PREFIX):]: v for k, v in wanted.items()}
        extra_heads = [k for k in canonical if not k.startswith(ENCODER_PREFIX)]
    else:
        wanted, extra_heads = canonical, []

    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in wanted.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in wanted]
    missing_encoder = [k for k in missing if encoder_only or k.startswith(ENCODER_PREFIX)]
    missing_head = [k for k in missing if k not in missing_encoder]
    # Learned attention state that a checkpoint of another mechanism lacks (DAM's mask logits, in modules
    # marked `init_if_missing`) keeps its fresh initialisation, like a new head.
    fresh_roots = tuple(f"{name}." for name, module in model.named_modules()
                        if getattr(module, "init_if_missing", False))
    fresh = [k for k in missing_encoder if k.startswith(fresh_roots)]
    missing_encoder = [k for k in missing_encoder if k not in fresh]
    unexpected = [k for k in wanted if k not in own] + extra_heads
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} parameter(s) do not fit the config:\n  " + "\n  ".join(mismatched))
    if missing_encoder:
        problems.append(f"{len(missing_encoder)} encoder parameter(s) missing from the checkpoint:\n  "
                        + "\n  ".join(missing_encoder))
    if strict_heads and missing_head:
        problems.append("head parameter(s) missing: " + ", ".join(missing_head))
    if problems:
        raise CheckpointError(f"{source}: " + "\n".join(problems))
    if unexpected:
        logger.warning("%s: ignoring %d parameter(s) the model does not use: %s", source, len(unexpected),
                       ", ".join(unexpected[:10]) + (" …" if len(unexpected) > 10 else ""))
    if missing_head:
        logger.warning("%s: newly initialised head parameter(s): %s", source, ", ".join(missing_head))
    if fresh:
        logger.warning("%s: newly initialised parameter(s): %s", source, ", ".join(fresh))
    with torch.no_grad():
        for key, value in wanted.items():
            if key in own:
                own[key].copy_(value.to(own[key].dtype))
    return missing_head


def load_state_exact(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model` name for name, for models whose checkpoints are always written whole (the
    kinds of `kinds.py`): no prefix adaptation and no fresh heads; every missing, unexpected or misshapen
    parameter is reported in one `CheckpointError`."""
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} parameter(s) do not fit the config:\n  " + "\n  ".join(mismatched))
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing from the checkpoint:\n  " + "\n  ".join(missing))
    if unexpected:
        problems.append(f"{len(unexpected)} parameter(s) the model does not have:\n  " + "\n  ".join(unexpected))
    if problems:
        raise CheckpointError(f"{source}: " + "\n".join(problems))
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
