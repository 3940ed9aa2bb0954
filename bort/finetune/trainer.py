"""The fine-tuning loop shared by `run_finetune`, the hyper-parameter grid and Agora.

`fit` trains a model with one set of hyper-parameters (`HParams`), evaluates the task's official metrics on the
dev examples every `eval_interval` steps (default: once an epoch), stops early after `patience` evaluations
without improvement of the task's main metric, and leaves the best weights in the model (kept in memory, and
written atomically to `best_dir` when given).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..train.optim import OPTIMIZERS, build_optimizer
from ..train.schedule import build_schedule
from ..train.settings import Settings, number, positive_int, setting
from . import heads
from .batching import EncodedExample, collate, eval_batches, train_batches

logger = logging.getLogger(__name__)


def _optimizer_problem(name: Any) -> str | None:
    """`build_optimizer` takes the name in any case ("AdamW"); the value is kept as written, since a grid's
    trial ids hash it."""
    if isinstance(name, str) and name.lower() in OPTIMIZERS:
        return None
    return f"{name!r} is not one of {', '.join(OPTIMIZERS)}"


@dataclass(frozen=True)
class HParams(Settings):
    """One point of the hyper-parameter space. Defaults are the original Bort fine-tuning script's
    (lr 5e-5, batch 8, warmup ratio 0.45, BERTAdam with ε 1e-6, weight decay 110).

    Frozen (and so hashable): a grid names, compares and deduplicates its trials by these values. Every field's
    constraint is declared beside it and checked when the point is built (`bort.train.settings`), so a grid
    file's bad value is refused before any trial runs."""

    lr: float = setting(5e-5, check=number(0, low_open=True))
    batch_size: int = setting(8, check=positive_int())
    warmup_ratio: float = setting(0.45, check=number(0, 1, high_open=True))
    weight_decay: float = setting(110.0, check=number(0))
    seed: int = setting(0, check=positive_int(0))
    epochs: float = setting(3.0, check=number(0, low_open=True))
    optimizer: str = setting("bertadam", check=_optimizer_problem)
    eps: float = setting(1e-6, check=number(0, low_open=True))
    clip_norm: float = setting(1.0, check=number(0), help="gradient norm clip (0: off)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What a `fit` call reached: the best dev metrics and when, plus the evaluation history."""

    best: dict[str, float]
    best_step: int
    steps: int
    seconds: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


@torch.no_grad()
def predict(model: nn.Module, items: Sequence[EncodedExample], kind: str, pad_id: int,
            batch_size: int = 32) -> list[int | float]:
    """Predictions for every item (in item order), batched by length."""
    was_training = model.training
    model.eval()
    out: list[int | float | None] = [None] * len(items)
    for idx in eval_batches(items, batch_size):
        batch = collate([items[i] for i in idx], pad_id, kind)
        for i, p in zip(idx, heads.predictions(heads.scores(model, batch), kind)):
            out[i] = p
    model.train(was_training)
    return out  # type: ignore[return-value]


def evaluate(model: nn.Module, task: Any, items: Sequence[EncodedExample], examples: Sequence[Any],
             pad_id: int, batch_size: int = 32) -> tuple[dict[str, float], list[int | float]]:
    """The task's official metrics on `examples` and the predictions they were computed from."""
    preds = predict(model, items, task.kind, pad_id, batch_size)
    return {k: float(v) for k, v in task.evaluate(preds, examples).items()}, preds


def fit(model: nn.Module, task: Any, train_items: Sequence[EncodedExample], dev_items: Sequence[EncodedExample],
        dev_examples: Sequence[Any], hp: HParams, pad_id: int, *, eval_interval: int = 0,
        patience: int | None = None, max_steps: int | None = None, best_dir: str | Path | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
        log_interval: int = 10, penalty: Callable[[nn.Module], torch.Tensor | None] | None = None,
        penalty_weight: float = 0.0, save_best: Callable[[nn.Module, Path], None] | None = None,
        monitor: Callable[[nn.Module], dict[str, float]] | None = None) -> FitResult:
    """Train `model` on `train_items` with `hp`; evaluate `task.main_metric` on the dev set; keep the best.

    `eval_interval` 0 evaluates once per epoch; `patience` stops after that many evaluations without a new
    best (None: never). `penalty(model)` (e.g. `model.attention_regularization()`, a DAM mask's Σ|M|) is added
    to the loss times `penalty_weight`. `on_event` receives every train/eval record (for JSON-lines logs);
    `monitor(model)` adds fields to the train records (e.g. `model.attention_statistics()`, a DAM mask's
    density). A loss that is NaN/inf stops the run
    with an error naming the step, since continuing would only waste the remaining budget.
    """
    if not train_items:
        raise ValueError("no training examples")
    if not dev_items:
        raise ValueError("no dev examples to evaluate on")
    torch.manual_seed(hp.seed)
    rng = np.random.default_rng(hp.seed)
    steps_per_epoch = math.ceil(len(train_items) / hp.batch_size)
    total = max_steps if max_steps is not None else max(1, math.ceil(hp.epochs * steps_per_epoch))
    interval = eval_interval or steps_per_epoch
    optimizer = build_optimizer(model, hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, eps=hp.eps)
    schedule = build_schedule(optimizer, total, warmup_ratio=hp.warmup_ratio)
    emit = on_event or (lambda record: None)
    main = task.main_metric

    best: dict[str, float] = {}
    best_step, best_state, bad_evals, stopped = -1, None, 0, False
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    model.train()
    step, plan = 0, []
    bar = tqdm(total=total, desc=f"finetune {task.name}", unit="step", disable=not progress, leave=False)
    while step < total and not stopped:
        if not plan:
            plan = train_batches(train_items, hp.batch_size, rng)
        idx = plan.pop(0)
        batch = collate([train_items[i] for i in idx], pad_id, task.kind)
        logits = heads.scores(model, batch)
        value = heads.loss(logits, batch.labels, task.kind)
        extra = penalty(model) if penalty is not None and penalty_weight else None
        total_loss = value + penalty_weight * extra if extra is not None else value
        if not torch.isfinite(total_loss):
            raise FloatingPointError(f"{task.name}: loss is {total_loss.item()} at step {step + 1} "
                                     f"(lr {hp.lr}, seed {hp.seed}); lower the learning rate")
        total_loss.backward()
        if hp.clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), hp.clip_norm)
        optimizer.step()
        lr = schedule.get_last_lr()[0]  # the rate this step used (step() below sets the next one's)
        schedule.step()
        optimizer.zero_grad(set_to_none=False)
        step += 1
        bar.update(1)
        if step % log_interval == 0 or step == total:
            record = {"event": "train", "step": step, "loss": float(value.detach()), "lr": lr}
            if extra is not None:
                record["penalty"] = float(extra.detach())
            if monitor is not None:
                record.update(monitor(model))
            emit(record)
        if step % interval == 0 or step == total:
            metrics, _ = evaluate(model, task, dev_items, dev_examples, pad_id)
            record = {"event": "eval", "step": step, **metrics}
            history.append(record)
            emit(record)
            bar.set_postfix({main: f"{metrics[main]:.4f}"})
            if not best or metrics[main] > best[main]:
                best, best_step, bad_evals = metrics, step, 0
                best_state = copy.deepcopy(model.state_dict())
                if best_dir is not None and save_best is not None:
                    save_best(model, Path(best_dir))
            else:
                bad_evals += 1
                if patience is not None and bad_evals >= patience:
                    stopped = True
                    logger.info("%s: early stop at step %d (best %s %.4f at step %d)", task.name, step, main,
                                best[main], best_step)
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(best=best, best_step=best_step, steps=step, seconds=time.perf_counter() - start,
                     stopped_early=stopped, history=history)
