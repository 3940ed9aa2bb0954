"""The error objective e(·): a truncated distillation run per candidate, scored on held-out shards.

Each candidate student is distilled from the teacher by the ordinary recipe (`bort.distill.recipe`) for
`intervals × interval_steps` optimiser steps, with a held-out evaluation at the end of every interval. The
error is the chosen evaluation metric at the last interval: by default `eval_mlm_loss`, the masked-LM
cross-entropy of the student on the test shards (nats per masked token, `eval_batches` batches). The whole
held-out curve is kept in the cache.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BortConfig
from ..distill.recipe import DistillationRecipe, DistillSettings
from ..train.metrics import read_jsonl

ERROR_METRICS = ("eval_mlm_loss", "eval_kd", "eval_hidden")
# DistillSettings fields the search sets itself; a space's "distill" block may not override them.
_OWNED = {"train", "test", "teacher", "student", "output_dir", "max_steps", "eval_interval", "eval_batches",
          "checkpoint_interval", "resume", "progress", "seed", "log_interval"}


@dataclass
class ErrorSettings:
    """The truncated run: data, teacher, budget (`intervals` × `interval_steps`) and the recipe's other knobs."""

    train: list[str]
    test: list[str]
    teacher: str | None = None
    interval_steps: int = 10
    intervals: int = 2
    eval_batches: int = 4
    metric: str = "eval_mlm_loss"
    seed: int = 0
    keep_runs: bool = False
    distill: dict[str, Any] = field(default_factory=dict)  # extra DistillSettings fields (batch_size, lr, …)

    def __post_init__(self) -> None:
        if not self.test:
            raise ValueError("the search's error needs held-out shards: give --test")
        if self.metric not in ERROR_METRICS:
            raise ValueError(f"error metric {self.metric!r} is not one of {', '.join(ERROR_METRICS)}")
        known = {f.name for f in dataclasses.fields(DistillSettings)}
        bad = sorted(set(self.distill) - (known - _OWNED))
        if bad:
            raise ValueError(f"distill setting(s) {', '.join(bad)} cannot be set in a search space "
                             f"(unknown, or set by the search itself); settable: {', '.join(sorted(known - _OWNED))}")

    @property
    def total_steps(self) -> int:
        return self.interval_steps * self.intervals

    def identity(self) -> dict[str, Any]:
        """What the measured error depends on (for the cache fingerprint)."""
        return {"train": self.train, "test": self.test, "teacher": self.teacher, "interval_steps": self.interval_steps,
                "intervals": self.intervals, "eval_batches": self.eval_batches, "metric": self.metric,
                "seed": self.seed, "distill": self.distill}


class _SharedTeacherRecipe(DistillationRecipe):
    """The ordinary recipe, except that the teacher is loaded once per search and shared by every candidate's
    run (it is frozen and in eval mode, so runs cannot change it; loading it is most of a short run's setup)."""

    _teachers: dict[tuple, tuple] = {}

    def _load_teacher(self):
        # the data is part of the key: the parent checks the teacher against the data's vocabulary
        key = (self.s.teacher, self.s.teacher_config, str(self.env.device), tuple(self.s.train))
        if key not in self._teachers:
            self._teachers.clear()  # one teacher at a time: a search uses one
            self._teachers[key] = super()._load_teacher()
        return self._teachers[key]


def _run(settings: DistillSettings) -> dict[str, Any]:
    # Each run's loss plot is half the time of a short run (2.3 of 4.3 s measured) and nobody looks at it: the
    # search plots its own front.
    return _SharedTeacherRecipe(dataclasses.replace(settings, plot=False)).run()


def truncated_error(cfg: BortConfig, settings: ErrorSettings, run_dir: Path) -> dict[str, Any]:
    """Distil `cfg` for the truncated budget and return {"value", "curve", "seconds", "steps"}."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run killed earlier: start it afresh (its result was never cached)
    values = dict(progress=False, **settings.distill)
    values.update(train=list(settings.train), test=list(settings.test), teacher=settings.teacher,
                  student=cfg.to_json_string(), output_dir=str(run_dir), max_steps=settings.total_steps,
                  eval_interval=settings.interval_steps, eval_batches=settings.eval_batches,
                  checkpoint_interval=0, log_interval=settings.interval_steps, seed=settings.seed)
    start = time.perf_counter()
    summary = _run(DistillSettings(**values))
    seconds = time.perf_counter() - start
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("event") == "eval"]
    if not evals or settings.metric not in evals[-1]:
        raise ValueError(f"the truncated run in {run_dir} logged no {settings.metric!r} (teacher without an MLM "
                         "head has no eval_kd; eval_hidden needs hidden-state matching)")
    value = float(evals[-1][settings.metric])
    if not settings.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"value": value if math.isfinite(value) else math.inf, "metric": settings.metric,
            "curve": [{"step": r["step"], settings.metric: r[settings.metric]} for r in evals],
            "steps": summary["steps"], "skipped_steps": summary["skipped_steps"], "seconds": seconds}
