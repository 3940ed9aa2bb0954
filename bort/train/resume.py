"""Resuming only the run a checkpoint belongs to: the settings that shape a run must match its checkpoint's.

A resumed run continues bit for bit only with the seed, data, model, schedule and batch it was started with;
anything else silently makes a different run under the old one's name. `check_resume_settings` compares the
settings saved in a checkpoint with the ones given now and raises an error naming every difference, unless the
user allowed that setting to change (`--allow-setting-change max_steps`: e.g. to extend a run; the run then
follows the new value from the resumed step on).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import torch

from ..checkpoint.errors import CheckpointError

ALLOW_FLAG = "--allow-setting-change"


def parse_allowed(values: Iterable[str] | None) -> list[str]:
    """Flag values (repeated and/or comma-separated) → setting names."""
    return sorted({name.strip() for item in values or () for name in str(item).split(",") if name.strip()})


def changed_settings(before: Mapping[str, Any], now: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Names whose values differ between `before` and `now` (a name missing on one side counts as None)."""
    skip = set(ignore)
    return sorted(k for k in set(before) | set(now) if k not in skip and before.get(k) != now.get(k))


def check_resume_settings(checkpoint: str | os.PathLike, before: Mapping[str, Any], now: Mapping[str, Any],
                          allowed: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[str]:
    """Raise `CheckpointError` when a setting in `before` (the checkpoint's) or `now` differs, except those in
    `ignore` (settings that do not shape the run) and `allowed` (explicitly overridden). Returns the allowed
    names that did change, for the caller to apply and log. An allowed name that is not a setting is refused
    too, so that a typo cannot go unnoticed."""
    allowed = list(allowed)
    known = set(before) | set(now)
    unknown = sorted(set(allowed) - known)
    if unknown:
        raise CheckpointError(f"{ALLOW_FLAG}: {', '.join(unknown)} is not a setting of this run; settings: "
                              f"{', '.join(sorted(known - set(ignore)))}")
    changed = changed_settings(before, now, ignore)
    refused = [k for k in changed if k not in allowed]
    if refused:
        raise CheckpointError(
            f"cannot resume {checkpoint}: settings differ from the original run's: "
            + "; ".join(f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in refused)
            + f". Resume with the original settings, start a new run elsewhere, or pass {ALLOW_FLAG} "
            + ",".join(refused) + " to continue with the new values")
    return [k for k in changed if k in allowed]


def restore_optimizer_and_schedule(source: str | os.PathLike, optimizer: Any, scheduler: Any,
                                   optimizer_state: Any, schedule_state: Any, step: int,
                                   changed: Iterable[str] = ()) -> None:
    """Load a checkpoint's optimiser and `LambdaLR` states (untrusted: `source` names the file in errors).

    From the file come the optimiser's moments and the schedule's position; the hyper-parameters (betas,
    eps, weight decay, the schedule's shape and peak rates) stay those of this run's settings, which the
    caller has checked against the checkpoint's: identical values in an ordinary resume, so the run continues
    bit for bit, and the new values after an allowed change (`changed`), with the current step's rate
    recomputed. A file whose states do not fit (wrong keys, shapes or types) raises `CheckpointError`, never
    a bare error in the middle of training."""
    fresh_groups = [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]
    shape = [dict(fn.__dict__) for fn in scheduler.lr_lambdas]
    base_lrs = list(scheduler.base_lrs)
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(schedule_state)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{source}: its optimiser/schedule state does not fit this run's model "
                              f"({type(err).__name__}: {err})") from None
    restore_param_groups(source, optimizer, fresh_groups)
    for fn, values in zip(scheduler.lr_lambdas, shape):
        fn.__dict__.clear()
        fn.__dict__.update(values)
    scheduler.base_lrs = base_lrs
    if scheduler.last_epoch != step:
        raise CheckpointError(f"{source}: the schedule is at step {scheduler.last_epoch!r}, the training state at "
                              f"step {step}")
    if list(changed):
        for group, base, fn in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    check_rates(source, [group.get("lr") for group in optimizer.param_groups] + list(scheduler.get_last_lr()))


def restore_param_groups(source: str | os.PathLike, optimizer: Any, fresh_groups: list[dict[str, Any]]) -> None:
    """After `optimizer.load_state_dict` from `source`: put back this run's hyper-parameters (`fresh_groups`,
    the groups' settings before the load) and check every loaded moment has its parameter's shape."""
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update(fresh)
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(f"{source}: optimiser state {key!r} has shape {tuple(value.shape)} for a "
                                          f"parameter of shape {tuple(param.shape)}")


def check_rates(source: str | os.PathLike, rates: list[Any]) -> None:
    """The learning rates restored from `source` are finite floats."""
    if not all(isinstance(rate, float) and math.isfinite(rate) for rate in rates):
        raise CheckpointError(f"{source}: learning rates {rates!r} are not finite numbers")
