"""The LRA recipes' learning-rate schedules: ours (`bort.train.schedule`) or the original's `OneCycleLR`.

The YOSO / Nyströmformer LRA code steps `torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
pct_start=warmup/steps, anneal_strategy="linear", total_steps=steps)` after every optimiser step, with
OneCycleLR's defaults: the rate starts at lr/25, rises linearly to lr at the end of warmup, falls linearly to
lr/25e4; with Adam, β1 is cycled the other way (0.95 → 0.85 → 0.95). PyTorch's class is used as is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from ..checkpoint.errors import CheckpointError
from ..train.resume import check_rates, restore_optimizer_and_schedule, restore_param_groups
from ..train.schedule import build_schedule

SCHEDULES = ("linear", "one_cycle")


def build_lra_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_ratio: float,
                       peak_lr: float) -> LRScheduler:
    """The recipe's schedule over `optimizer` for `total_steps` optimiser steps."""
    if kind == "linear":
        return build_schedule(optimizer, total_steps, warmup_ratio=warmup_ratio)
    if kind == "one_cycle":
        if not 0.0 < warmup_ratio < 1.0:
            # OneCycleLR needs a rising and a falling phase of at least one step each.
            raise ValueError(f"the one_cycle schedule needs a warmup fraction in (0, 1), got {warmup_ratio}")
        return OneCycleLR(optimizer, max_lr=peak_lr, total_steps=total_steps, pct_start=warmup_ratio,
                          anneal_strategy="linear")
    raise ValueError(f"unknown LRA schedule {kind!r}; valid: {', '.join(SCHEDULES)}")


def restore_lra_schedule(source: Path, optimizer: torch.optim.Optimizer, schedule: LRScheduler,
                         optimizer_state: Any, schedule_state: Any, step: int, changed: list[str]) -> None:
    """Load a checkpoint's optimiser and schedule states (untrusted: `source` names the file in errors).

    The linear schedule is restored by `bort.train.resume`. For `OneCycleLR` the file gives the optimiser's
    moments and the schedule's position; its shape (total steps, phases, peak rate, the β1 range) stays this
    run's, as the caller checked it against the checkpoint's (or allowed the change), and the rate and β1 of
    the current step are recomputed by the schedule itself: the same numbers in an ordinary resume."""
    if not isinstance(schedule, OneCycleLR):
        restore_optimizer_and_schedule(source, optimizer, schedule, optimizer_state, schedule_state, step, changed)
        return
    fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    fresh_schedule = {k: v for k, v in schedule.__dict__.items() if k != "optimizer"}
    try:
        optimizer.load_state_dict(optimizer_state)
        position = schedule_state["last_epoch"]
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{source}: its optimiser/schedule state does not fit this run's model "
                              f"({type(err).__name__}: {err})") from None
    if not isinstance(position, int) or isinstance(position, bool) or position != step:
        raise CheckpointError(f"{source}: the schedule is at step {position!r}, the training state at step {step}")
    if step > fresh_schedule["total_steps"]:
        raise CheckpointError(f"{source}: the checkpoint is at step {step}, beyond this run's "
                              f"{fresh_schedule['total_steps']} one-cycle steps")
    restore_param_groups(source, optimizer, fresh_groups)
    schedule.__dict__.update(fresh_schedule)
    schedule._step_count = step + 1  # as after `step` steps (PyTorch warns about step order on the first)
    # One step back, then the schedule's own step: it sets the rate and β1 of step `step` on every group.
    schedule.last_epoch = step - 1
    schedule.step()
    check_rates(source, [group.get("lr") for group in optimizer.param_groups])
