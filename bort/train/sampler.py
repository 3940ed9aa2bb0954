"""Which records each rank reads at each step: a pure function of (seed, step), so resuming needs only the
step number and no rank ever holds the whole dataset's order of another rank's records."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@functools.lru_cache(maxsize=2)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch (cached: every micro-step of the epoch reads it)."""
    return np.random.default_rng([seed, epoch]).permutation(num_records)


@dataclass(frozen=True)
class BatchPlan:
    """Global batch = micro_batch_size × world_size × accumulation records, drawn from a per-epoch shuffle.

    Within one global batch, micro-step m of rank r reads the slice [(m·world + r)·micro, … + micro) of the
    epoch's permutation, so the union over ranks and micro-steps is the same set of records whatever the
    world size: 2 ranks × 4 records see exactly what 1 rank × 8 records sees.
    The incomplete tail of an epoch is dropped (as with `drop_last`).
    """

    num_records: int
    micro_batch_size: int
    world_size: int = 1
    accumulation: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or self.world_size < 1 or self.accumulation < 1:
            raise ValueError("batch size, world size and accumulation must be >= 1")
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_records} records cannot fill one global batch of {self.global_batch_size} "
                             f"(micro batch {self.micro_batch_size} × {self.world_size} ranks × "
                             f"{self.accumulation} accumulation steps)")

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.world_size * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.global_batch_size

    def indices(self, step: int, rank: int, micro_step: int) -> np.ndarray:
        """Record indices for optimiser step `step` (0-based), this rank and micro-step."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch_size + (micro_step * self.world_size + rank) * self.micro_batch_size
        return _epoch_permutation(self.num_records, self.seed, epoch)[start:start + self.micro_batch_size]
