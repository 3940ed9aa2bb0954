"""Train and evaluate the LRA classifier on one task: the recipe behind `bort lra` and `run_lra.py`.

    settings = LRASettings(task="listops", data="listops.tsv", attention="bigbird", max_steps=3000)
    summary = run_lra(settings)        # best-dev checkpoint → test accuracy, results.json, curves.png

The loop: length-bucketed batches (`batching`), AdamW, linear warmup then linear decay (the task's preset,
`tasks.TASKS`; `recipe="paper"` trains as the YOSO paper's LRA code does: `OneCycleLR` with β1 cycling, FFN
dropout, padded mean pooling, a power-of-two position table, its attention settings), dev accuracy every
`eval_interval` steps, the best dev checkpoint kept in `<out>/best`, a
resumable checkpoint in `<out>/checkpoints/step-N` at every evaluation, JSON-lines metrics. At the end the
best checkpoint is reloaded from disk and scored on the test split.

`LRARecipe` is the recipe (`bort.train.recipe`): `setup()` claims the output directory, reads the splits,
builds the model and resumes; `train()` runs the loop and returns the summary; `save()` writes a resumable
checkpoint; `cleanup()` releases the directory. The loop is also public step by step, so several runs can be
interleaved in one process (the benchmark alternates mechanisms to expose them to the same machine load):
`LRARecipe(settings, splits).build()` gives a run without claiming a directory, `train_steps(n)` advances it,
`finish()` scores it. Each run keeps its own torch RNG state, swapped in for its steps, and evaluations draw
from a fixed seed, so a run's numbers do not depend on what ran beside it or on whether it was resumed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from ..atomic import atomic_write_text
from ..checkpoint.errors import CheckpointError
from ..train.checkpointing import latest_checkpoint, load_trainer_state, write_checkpoint
from ..train.metrics import TENSORBOARD_DIR, JsonlLogger, check_report_to, plot_loss_and_dev, read_jsonl
from ..train.optim import build_optimizer
from ..train.recipe import Recipe
from ..train.resume import check_resume_settings
from ..train.settings import (Settings, SettingsError, boolean, number, optional, positive_int,
                              setting)
from . import batching
from .data import load_splits
from .model import LRAClassifier, LRADualClassifier, lra_config, load_lra_model, save_lra_model
from .schedule import build_lra_schedule, restore_lra_schedule
from .splits import EncodedSplit, LRASplits
from .tasks import PAPER_ATTENTION, LRATask, get_recipe, get_task, position_rows, resolve_attention

logger = logging.getLogger(__name__)

# Settings that may differ between a run and its resumption (they change no number of the run).
_RESUME_FREE = {"output_dir", "resume", "overwrite", "allow_setting_change", "progress", "log_interval",
                "eval_batch_size", "report_to"}
# What a run writes into its output directory: a fresh run refuses a directory holding any of them (unless
# resume or overwrite), and overwrite removes exactly these.
ARTEFACTS = ("checkpoints", "best", "metrics.jsonl", "results.json", "curves.png", TENSORBOARD_DIR)
_STATE_TYPES = {"step": int, "epoch": int, "cursor": int, "rng_state": torch.Tensor, "optimizer": dict,
                "schedule": dict, "best_accuracy": (int, float), "best_step": int, "history": list,
                "step_seconds": list, "eval_seconds": (int, float), "settings": dict}


def _registered(lookup: Callable[[str], Any]) -> Callable[[Any], str | None]:
    """A check that `lookup` knows the name (its error, which lists the valid names, is the problem)."""
    def run(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a name, got {value!r}"
        try:
            lookup(value)
        except ValueError as err:
            return str(err)
        return None
    return run


def _json_object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be a JSON object (a dict), got {value!r}"


@dataclass
class LRASettings(Settings):
    """One LRA run. Fields left None take the task's preset (`tasks.TASKS[task].train`); a shorter or longer
    run (`max_steps`) keeps the preset's warmup fraction. `attention_params` None takes the task's defaults for
    that mechanism. `output_dir` None writes nothing (the best weights are then kept in memory). `recipe`:
    "bort" (ours) or "paper" (the YOSO paper's LRA code; `tasks.RECIPES`); `attention` also takes the
    paper's configuration names (`tasks.PAPER_ATTENTION`, e.g. "yoso-v2-16"). An explicit value is checked when
    the settings are built; the preset's values when they are filled in (`resolved`)."""

    task: str = setting("listops", check=_registered(get_task))
    data: str = ""
    output_dir: str | None = "lra_output"
    attention: str = "dense"  # resolved against the task and recipe (`tasks.resolve_attention`) by the recipe
    recipe: str = setting("bort", check=_registered(get_recipe))
    attention_params: dict[str, Any] | None = setting(None, check=optional(_json_object))
    model_overrides: dict[str, Any] = setting(default_factory=dict, check=_json_object)
    max_steps: int | None = setting(None, check=optional(positive_int()))
    batch_size: int | None = setting(None, check=optional(positive_int()))
    lr: float | None = setting(None, check=optional(number(0, low_open=True)))
    weight_decay: float | None = setting(None, check=optional(number(0)))
    warmup_ratio: float | None = setting(None, check=optional(number(0, 1)))
    eval_interval: int | None = setting(None, check=optional(positive_int()))
    dev_size: int = 800
    test_size: int = 800
    split_seed: int = 0
    seed: int = 0
    dam_lambda: float = setting(0.0, check=number(0))
    clip_norm: float = setting(0.0, check=number(0))  # 0: off
    pad_multiple: int = setting(8, check=positive_int())
    bucket_pool: int = setting(50, check=positive_int())
    eval_batch_size: int = setting(128, check=positive_int())
    skip_bad_rows: bool = setting(False, check=boolean())
    resume: bool = setting(False, check=boolean())
    # A fresh run replacing an earlier run's outputs (ARTEFACTS) in output_dir.
    overwrite: bool = setting(False, check=boolean())
    allow_setting_change: list[str] = field(default_factory=list)  # settings `resume` may change (e.g. max_steps)
    progress: bool = setting(True, check=boolean())
    log_interval: int = setting(10, check=positive_int())
    # "tensorboard": metrics.jsonl's records also as TensorBoard events.
    report_to: str | None = setting(None, check=check_report_to)

    def resolved(self, task: LRATask) -> dict[str, Any]:
        """Every setting with the preset's values filled in (what results.json records)."""
        preset = task.train
        recipe = get_recipe(self.recipe)
        mechanism, default_params = resolve_attention(task, self.attention, recipe)
        values = dataclasses.asdict(self)
        values.update(
            attention=mechanism,
            attention_preset=self.attention if self.attention in PAPER_ATTENTION else None,
            max_steps=self.max_steps or preset.total_steps,
            batch_size=self.batch_size or preset.batch_size,
            lr=self.lr if self.lr is not None else preset.lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else preset.weight_decay,
            warmup_ratio=self.warmup_ratio if self.warmup_ratio is not None else preset.warmup_ratio,
            eval_interval=self.eval_interval or preset.eval_interval,
            attention_params=(dict(default_params or {}) if self.attention_params is None
                              else dict(self.attention_params)),
        )
        # The fields' own checks covered explicit values; these are the ones a preset filled in.
        checks = {name: positive_int() for name in ("max_steps", "batch_size", "eval_interval")}
        checks["lr"] = number(0, low_open=True)
        found = [f"{name} {problem}" for name, check in checks.items() if (problem := check(values[name]))]
        if found:
            raise SettingsError(f"{type(self).__name__} (task {task.name!r}): " + "; ".join(found))
        return values


# --- evaluation --------------------------------------------------------------------------------------------
def pad_multiple_for(attention: str, params: dict[str, Any], base: int) -> int:
    """Batch widths are rounded up to this: `base`, times what a block-structured pattern needs (its `block`
    must divide the length; ListOps rows are often shorter than any useful block, so padding is how a
    block pattern fits them)."""
    block = params.get("block", 1) if isinstance(params, dict) else 1
    return math.lcm(base, block) if isinstance(block, int) and block > 1 else base


@torch.no_grad()
def evaluate_split(model: nn.Module, split: EncodedSplit, pad_id: int, batch_size: int = 128, multiple: int = 8,
                   seed: int = 0) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on `split`, in eval mode, with a fixed RNG seed (YOSO hashes
    and any other randomness repeat exactly; the caller's RNG state is left untouched)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for idx in batching.eval_batches(split.lengths, batch_size):
            inputs = split.batch(idx, pad_id, multiple)  # pair tasks: both documents
            labels = inputs["labels"]
            out = model(**inputs)
            correct += int((out.logits.argmax(-1) == labels).sum())
            loss_sum += float(out.loss) * len(idx)
    model.train(was_training)
    return {"accuracy": correct / len(split), "loss": loss_sum / len(split)}


def majority_class(train: EncodedSplit, test: EncodedSplit) -> tuple[int, float]:
    """The most frequent training label (smallest on a tie) and the test accuracy of always predicting it."""
    counts: dict[int, int] = {}
    for label in train.labels:
        counts[label] = counts.get(label, 0) + 1
    label = min(counts, key=lambda k: (-counts[k], k))
    return label, sum(1 for y in test.labels if y == label) / len(test)


# --- the recipe --------------------------------------------------------------------------------------------
class LRARecipe(Recipe):
    """One LRA run: `run()` (setup → train → cleanup) trains it to the end; `build()`, `train_steps(n)` and
    `finish()` drive it step by step beside other runs (see the module docstring).

    `splits` already read (shared by interleaved runs) are used instead of reading `settings.data`; `on_event`
    receives every train/eval record that metrics.jsonl gets."""

    artefacts = ARTEFACTS

    def __init__(self, settings: LRASettings, splits: LRASplits | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(settings)
        self.task = get_task(settings.task)
        self.values = settings.resolved(self.task)
        self.splits = splits
        self.out = Path(settings.output_dir) if settings.output_dir else None
        self.total = self.values["max_steps"]
        self.lra_recipe = get_recipe(settings.recipe)  # ours or the paper's way of training (`tasks.RECIPES`)
        self.mechanism = self.values["attention"]  # a paper configuration name resolved to its mechanism
        self.multiple = pad_multiple_for(self.mechanism, self.values["attention_params"], settings.pad_multiple)
        self.model: LRAClassifier | None = None
        self.resumed = False
        self._on_event = on_event
        self._log: JsonlLogger | None = None
        self._start = time.perf_counter()

    # --- setup ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Claim the output directory, read the data, build the model, resume when asked, open metrics.jsonl.

        The directory is held for the run (`bort.train.run_dir`): a second run into it is refused, and so is a
        fresh run into one holding an earlier run's outputs, unless `resume` (same settings, or the changes
        `allow_setting_change` names) or `overwrite` (those outputs are deleted first)."""
        self._start = time.perf_counter()
        settings = self.settings
        if self.out is not None:
            # Claimed before the data are read, so that a second run into the directory is refused at once.
            self.claim(self.out, resume=settings.resume, overwrite=settings.overwrite)
        self.build()
        for row in self.splits.bad_rows:
            logger.warning("skipped bad row: %s", row)
        self.resumed = bool(settings.resume and self.resume())
        if not self.resumed:
            self.clear_outputs()  # a --resume that found no checkpoint: whatever else is there starts over
        if self.out is not None:
            self._log = JsonlLogger(self.out / "metrics.jsonl", resume_step=self.step if self.resumed else None,
                                    report_to=settings.report_to)

    def build(self) -> LRARecipe:
        """Read the splits (unless given), build the model, optimiser and schedule; returns the recipe, ready for
        `train_steps`. `setup` calls it after claiming the output directory; called alone, nothing is claimed
        and no metrics.jsonl is written (the caller owns the directory, as the benchmark does)."""
        if self.model is not None:
            return self
        settings = self.settings
        if self.splits is None:
            self.splits = load_splits(self.task, settings.data, dev_size=settings.dev_size,
                                      test_size=settings.test_size, split_seed=settings.split_seed,
                                      skip_bad_rows=settings.skip_bad_rows)
        torch.manual_seed(settings.seed)  # the initial weights
        overrides = dict(settings.model_overrides)
        if self.splits.num_classes is not None:  # the data decides (a multiclass text file); --model-config wins
            overrides.setdefault("num_labels", self.splits.num_classes)
        overrides.setdefault("max_position_embeddings", position_rows(self.task.max_length, self.lra_recipe))
        config = lra_config(self.task, len(self.splits.vocab), self.mechanism, self.values["attention_params"],
                            pad_token_id=self.splits.pad_id, **overrides)
        # Pair data (Retrieval) gets the dual encoder: one shared encoder for both documents.
        dual = self.splits.train.pair_ids is not None
        self.model = (LRADualClassifier if dual else LRAClassifier)(
            config, pooling=self.lra_recipe.pooling,
            ffn_dropout=config.hidden_dropout_prob if self.lra_recipe.ffn_dropout else 0.0)
        self.optimizer = build_optimizer(self.model, "adamw", lr=self.values["lr"],
                                         weight_decay=self.values["weight_decay"])
        self.schedule = build_lra_schedule(self.optimizer, self.lra_recipe.schedule, self.total,
                                           self.values["warmup_ratio"], self.values["lr"])
        self.penalty = None
        if settings.dam_lambda:
            if self.model.attention_regularization() is None:  # else λ would silently multiply nothing
                raise ValueError(f"dam_lambda {settings.dam_lambda} needs attention dam_s or dam_u (a mask to "
                                 f"learn), not {settings.attention!r}")
            self.penalty = type(self.model).attention_regularization
        self.rng_state = torch.get_rng_state()  # this run's RNG (dropout, DAM samples, YOSO hashes)
        self.step, self.epoch, self.cursor = 0, 0, 0
        self.best_accuracy, self.best_step = -1.0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.step_seconds: list[float] = []
        self.eval_seconds = 0.0
        self._plan: list[list[int]] | None = None
        self._bar: tqdm | None = None
        self.model.train()
        return self

    # --- state ---------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step >= self.total

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "cursor": self.cursor, "rng_state": self.rng_state,
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "best_accuracy": self.best_accuracy, "best_step": self.best_step, "history": self.history,
                "step_seconds": self.step_seconds, "eval_seconds": self.eval_seconds,
                "settings": {k: v for k, v in self.values.items() if k not in _RESUME_FREE},
                "data_sha256": self.splits.digest}

    def save(self) -> Path | None:
        """Write `<out>/checkpoints/step-N` (model + trainer state) atomically, keeping only the newest; None
        without an output directory."""
        if self.out is None:
            return None
        return write_checkpoint(
            self.out / "checkpoints", self.step,
            lambda directory: save_lra_model(self.model, directory, self.task.name, self.splits.vocab),
            self._state(), keep=1)

    def clear_outputs(self) -> None:
        """Remove the checkpoints and best model of an earlier run in the output directory (a fresh run)."""
        for name in ("checkpoints", "best"):
            if self.out is not None and (self.out / name).is_dir():
                logger.info("fresh run: removing %s", self.out / name)
                shutil.rmtree(self.out / name)

    def resume(self) -> bool:
        """Continue from the newest checkpoint under `<out>/checkpoints`; False when there is none. Settings
        that change the run's numbers must match those it was started with (the error names them). The data
        are compared by content (`LRASplits.digest`), not by path: a run resumes on a moved copy of its data
        and refuses data edited in place. Checkpoints written before digests were kept compare the path."""
        found = latest_checkpoint(self.out / "checkpoints") if self.out else None
        if found is None:
            return False
        state = load_trainer_state(found, _STATE_TYPES)  # a damaged or hostile file raises CheckpointError
        rng, expected = state["rng_state"], torch.get_rng_state()
        if rng.dtype != expected.dtype or rng.shape != expected.shape:
            raise CheckpointError(f"{found}/trainer.pt: rng_state should be a {expected.dtype} tensor of shape "
                                  f"{tuple(expected.shape)} (torch's generator state), got {rng.dtype} of shape "
                                  f"{tuple(rng.shape)}")
        now = {k: v for k, v in self.values.items() if k not in _RESUME_FREE}
        before = dict(state["settings"])
        # Checkpoints written before recipes existed trained ours, under a registry name.
        before.setdefault("recipe", "bort")
        before.setdefault("attention_preset", None)
        if "data_sha256" in state:
            if state["data_sha256"] != self.splits.digest:
                raise CheckpointError(
                    f"cannot resume {found}: the data differ from the original run's: {self.settings.data} encodes "
                    f"to sha256 {self.splits.digest[:16]}…, the run was trained on {state['data_sha256'][:16]}… "
                    f"(read from {before.get('data')}). Use the original data or another output directory.")
            now.pop("data", None)
            before.pop("data", None)
        changed = check_resume_settings(found, before, now, self.settings.allow_setting_change)
        model, _ = load_lra_model(found)
        try:
            self.model.load_state_dict(model.state_dict())
        except RuntimeError as err:
            raise CheckpointError(f"{found}: the model does not fit this run's ({err})") from None
        self.model.train()
        restore_lra_schedule(found / "trainer.pt", self.optimizer, self.schedule, state["optimizer"],
                             state["schedule"], state["step"], changed)
        if changed:
            logger.warning("resuming %s with changed settings (allowed): %s", found,
                           ", ".join(f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in changed))
        for key in ("step", "epoch", "cursor", "rng_state", "best_accuracy", "best_step", "history",
                    "step_seconds", "eval_seconds"):
            setattr(self, key, state[key])
        self._plan = None
        logger.info("resumed from %s at step %d", found, self.step)
        return True

    # --- training ------------------------------------------------------------------------------------------
    def _emit(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.log(record)
        if self._on_event is not None:
            self._on_event(record)

    def _next_batch(self) -> list[int]:
        if self._plan is None:
            self._plan = batching.epoch_batches(self.splits.train.lengths, self.values["batch_size"],
                                                self.settings.seed, self.epoch, self.settings.bucket_pool)
        if self.cursor >= len(self._plan):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._plan = None
            return self._next_batch()
        idx = self._plan[self.cursor]
        self.cursor += 1
        return idx

    def _train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        train = self.splits.train
        idx = self._next_batch()
        inputs = train.batch(idx, self.splits.pad_id, self.multiple)
        ids, labels = inputs["input_ids"], inputs["labels"]
        out = self.model(**inputs)
        loss = out.loss
        extra = self.penalty(self.model) if self.penalty is not None else None
        total = loss + self.settings.dam_lambda * extra if extra is not None else loss
        if not torch.isfinite(total):
            raise FloatingPointError(f"LRA {self.task.name} ({self.settings.attention}): loss is {float(total)} at "
                                     f"step {self.step + 1}; lower the learning rate")
        total.backward()
        if self.settings.clip_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_norm)
        self.optimizer.step()
        lr = self.schedule.get_last_lr()[0]  # the rate this step used (step() below sets the next one's)
        beta1 = self.optimizer.param_groups[0]["betas"][0]  # cycled by the paper recipe's schedule
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.step_seconds.append(time.perf_counter() - start)
        record = {"event": "train", "step": self.step, "loss": loss.item(), "lr": lr, "beta1": beta1,
                  "width": ids.shape[1], "accuracy": float((out.logits.argmax(-1) == labels).float().mean())}
        if extra is not None:
            record["penalty"] = float(extra.detach())
        return record

    def evaluate(self, split: str = "dev") -> dict[str, float]:
        """Accuracy and loss of the current weights on "train", "dev" or "test"."""
        data = getattr(self.splits, split)
        return evaluate_split(self.model, data, self.splits.pad_id, self.settings.eval_batch_size, self.multiple,
                              self.settings.seed)

    def _evaluate_and_keep(self) -> dict[str, Any]:
        start = time.perf_counter()
        metrics = self.evaluate("dev")
        self.eval_seconds += time.perf_counter() - start
        record = {"event": "eval", "step": self.step, "dev_accuracy": metrics["accuracy"],
                  "dev_loss": metrics["loss"], "train_seconds": sum(self.step_seconds)}
        if metrics["accuracy"] > self.best_accuracy:
            self.best_accuracy, self.best_step = metrics["accuracy"], self.step
            record["best"] = True
            if self.out is not None:
                save_lra_model(self.model, self.out / "best", self.task.name, self.splits.vocab)
                atomic_write_text(self.out / "best" / "dev.json",
                                  json.dumps({"step": self.step, "dev_accuracy": metrics["accuracy"]}) + "\n")
            else:
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.history.append(record)
        self.save()
        return record

    def train_steps(self, n: int) -> int:
        """Advance up to `n` optimiser steps (fewer at the end of the run), evaluating and checkpointing on
        schedule; returns the number of steps taken."""
        if self.settings.progress and self._bar is None:
            self._bar = tqdm(total=self.total, initial=self.step, unit="step", leave=False,
                             desc=f"lra {self.task.name} {self.settings.attention}")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        taken = 0
        try:
            while taken < n and not self.done:
                record = self._train_step()
                taken += 1
                if self.step % self.settings.log_interval == 0 or self.done:
                    self._emit(record)
                if self._bar is not None:
                    self._bar.update(1)
                if self.step % self.values["eval_interval"] == 0 or self.done:
                    # The RNG state is part of the checkpoint written here: store it first.
                    self.rng_state = torch.get_rng_state()
                    evaluation = self._evaluate_and_keep()
                    self._emit(evaluation)
                    if self._bar is not None:
                        self._bar.set_postfix(dev=f"{evaluation['dev_accuracy']:.3f}",
                                              best=f"{self.best_accuracy:.3f}")
        finally:
            self.rng_state = torch.get_rng_state()
            torch.set_rng_state(outer)
        return taken

    # --- the end -------------------------------------------------------------------------------------------
    def best_model(self) -> LRAClassifier:
        """The best-dev weights, reloaded from `<out>/best` (or from memory without an output directory)."""
        if self.out is not None and (self.out / "best").is_dir():
            model, _ = load_lra_model(self.out / "best")
            return model
        model = type(self.model)(self.model.config, pooling=self.model.pooling, ffn_dropout=self.model.ffn_dropout)
        model.load_state_dict(self.best_state if self.best_state is not None else self.model.state_dict())
        return model.eval()

    def timing(self) -> dict[str, float]:
        """Milliseconds per training step (median and quartiles) and seconds spent training / evaluating."""
        ms = sorted(1000 * s for s in self.step_seconds) or [math.nan]
        q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
        return {"ms_per_step": q[1], "ms_per_step_q1": q[0], "ms_per_step_q3": q[2],
                "train_seconds": sum(self.step_seconds), "eval_seconds": self.eval_seconds}

    def finish(self) -> dict[str, Any]:
        """Score the best checkpoint on dev and test; the run's summary (also written to results.json)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        best = self.best_model()
        pad, size, seed = self.splits.pad_id, self.settings.eval_batch_size, self.settings.seed
        test = evaluate_split(best, self.splits.test, pad, size, self.multiple, seed)
        dev = evaluate_split(best, self.splits.dev, pad, size, self.multiple, seed)
        label, majority = majority_class(self.splits.train, self.splits.test)
        summary = {
            "task": self.task.name, "attention": self.settings.attention, "recipe": self.lra_recipe.name,
            "attention_params": self.values["attention_params"], "steps": self.step, "best_step": self.best_step,
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "dev_accuracy": dev["accuracy"],
            "majority_class": label, "majority_accuracy": majority,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "sizes": {s: len(getattr(self.splits, s)) for s in ("train", "dev", "test")},
            "data": self.splits.source, "truncated": self.splits.truncated,
            "bad_rows": [str(row) for row in self.splits.bad_rows], **self.timing(),
            "settings": self.values,
            "best_checkpoint": str(self.out / "best") if self.out is not None else None,
        }
        if self.out is not None:
            atomic_write_text(self.out / "results.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    def train(self) -> dict[str, Any]:
        """Train to `max_steps`, score the best checkpoint; the summary, also in results.json (with curves.png
        drawn from metrics.jsonl)."""
        try:
            while not self.done:
                self.train_steps(self.total - self.step)
            summary = self.finish()
        finally:
            self._close_log()
        summary["wall_seconds"] = time.perf_counter() - self._start
        summary["resumed"] = self.resumed
        if self.out is not None:
            summary["curves"] = str(plot_run(read_jsonl(self.out / "metrics.jsonl"), self.out / "curves.png",
                                             f"{self.task.name} · {self.settings.attention}"))
            atomic_write_text(self.out / "results.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        """Close metrics.jsonl (if a failed run left it open) and release the output directory."""
        self._close_log()
        super().cleanup()


def plot_run(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss and dev accuracy against step, as PNG."""
    return plot_loss_and_dev(records, path, title, "dev_accuracy", "dev accuracy")


def run_lra(settings: LRASettings, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train (or resume), keep the best dev checkpoint, score it on test; returns the summary (`LRARecipe`).
    Writes into `settings.output_dir`: metrics.jsonl, best/, checkpoints/step-N/, results.json, curves.png.
    `on_event` also receives every train/eval record."""
    return LRARecipe(settings, on_event=on_event).run()
