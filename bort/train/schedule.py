"""Learning-rate schedules: linear warmup, then linear / polynomial decay to 0, or constant.

Step counting follows the original Bort script: optimiser step n (1-based) runs at
`lr · n / W` during warmup (n ≤ W, W = int(total_steps · warmup_ratio)), so the first step already learns
and the last step n = total_steps reaches 0 under decay. With `LambdaLR`, call `scheduler.step()` after
each `optimizer.step()`: the factor for step n is computed from `last_epoch = n − 1`.
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("linear", "poly", "constant", "bort_linear")


class WarmupDecay:
    """The multiplier as a picklable object, so `LambdaLR.state_dict()` records and restores it.

    kinds, for step n after warmup (W < n ≤ T):
      "linear"      (T − n) / (T − W)
      "poly"        ((T − n) / (T − W)) ** power
      "constant"    1
      "bort_linear" 1 − n / T — what the original script computes (its decay restarts from 1 − W/T
                    instead of 1, a small jump at the end of warmup); for reproducing its runs.
    """

    def __init__(self, total_steps: int, warmup_steps: int, kind: str = "linear", power: float = 1.0) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.power = float(power)

    def __call__(self, last_epoch: int) -> float:
        n = last_epoch + 1  # the optimiser step this factor is used for
        total, warmup = self.total_steps, self.warmup_steps
        if n <= warmup:
            return n / warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "bort_linear":
            return max(0.0, 1.0 - n / total)
        remaining = max(0.0, (total - n) / (total - warmup))
        return remaining if self.kind == "linear" else remaining ** self.power


def build_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.01,
                   kind: str = "linear", power: float = 1.0) -> LambdaLR:
    """A `LambdaLR` over `optimizer`: warmup for `int(total_steps · warmup_ratio)` steps, then `kind`
    ("linear", "poly" with `power`, "constant", or "bort_linear"; see `WarmupDecay`)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
    if not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")
    warmup_steps = int(total_steps * warmup_ratio)
    return LambdaLR(optimizer, WarmupDecay(total_steps, warmup_steps, kind, power))
