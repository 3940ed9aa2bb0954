"""The fine-tuning recipe: a pretrained checkpoint + a GLUE/SuperGLUE/RACE task directory → a fine-tuned
model, dev metrics, and leaderboard submission files.

    python run_finetune.py --task SST-2 --data-dir glue_data --model path/to/checkpoint --output-dir out
    ./scripts/run_finetune.sh BoolQ                      # the original launcher's form (see the script)

Outputs in `--output-dir`: `best/` (the best dev checkpoint with its tokenizer), `metrics.json` (settings, best
dev metrics, timings, skipped bad rows), `metrics.jsonl` (train and eval records), `curves.png`,
`dev_predictions.jsonl`, and `submission/<Task>.tsv|jsonl` when the task directory has a test file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..checkpoint import save_pretrained
from ..tokenization import BortTokenizer, load_tokenizer
from ..train.metrics import TENSORBOARD_DIR, JsonlLogger, check_report_to, plot_loss_and_dev, read_jsonl
from ..train.recipe import Recipe
from ..train.settings import Settings, boolean, number, optional, positive_int, setting
from .batching import encode_task_examples
from .heads import load_model_for
from .trainer import FitResult, HParams, evaluate, fit, predict

logger = logging.getLogger(__name__)

# What a run writes into its output directory (`FinetuneRecipe.artefacts`): a new run refuses a directory holding
# any of them (unless `overwrite`), and `overwrite` removes exactly these.
ARTEFACTS = ("best", "metrics.json", "metrics.jsonl", "curves.png", "dev_predictions.jsonl", "submission",
             TENSORBOARD_DIR)


def _json_object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be a JSON object of config fields, got {value!r}"


def _hparams(value: Any) -> str | None:
    return None if isinstance(value, HParams) else f"must be HParams (or a dict of its fields), got {value!r}"


def _as_hparams(value: Any) -> Any:
    """A dict (from a JSON file or `to_dict`) → HParams, so that settings written out read back."""
    return HParams(**value) if isinstance(value, dict) else value


@dataclass
class FinetuneSettings(Settings):
    """Every knob of a fine-tuning run (the command-line flags map one to one). Each field's constraint is
    declared beside it and checked when the settings are built (`bort.train.settings`)."""

    task: str = setting()
    model: str = setting()
    data_dir: str = "."
    tokenizer: str | None = None
    output_dir: str = "finetune_output"
    hparams: HParams = setting(default_factory=HParams, check=_hparams, coerce=_as_hparams)
    max_length: int = setting(512, check=positive_int())
    eval_interval: int = setting(0, check=positive_int(0), help="steps between dev evaluations (0: once an epoch)")
    patience: int | None = setting(None, check=optional(positive_int()))
    max_steps: int | None = setting(None, check=optional(positive_int()))
    eval_batch_size: int = setting(32, check=positive_int())
    dev_split: int | None = setting(None, check=optional(positive_int()))
    split_seed: int = setting(0, check=positive_int(0))
    skip_bad_rows: bool = setting(False, check=boolean())
    dam_lambda: float = setting(0.0, check=number(0))
    config: dict[str, Any] = setting(default_factory=dict, check=_json_object)
    progress: bool = setting(True, check=boolean())
    log_interval: int = setting(10, check=positive_int())
    # write best/ (grid trials may skip it: hundreds of copies of a model)
    save_checkpoint: bool = setting(True, check=boolean())
    # replace an earlier run's outputs (ARTEFACTS) in output_dir instead of refusing
    overwrite: bool = setting(False, check=boolean())
    # "tensorboard": metrics.jsonl's records also as TensorBoard events
    report_to: str | None = setting(None, check=check_report_to)


def resolve_task_dir(task: Any, data_dir: str | Path) -> Path:
    """The directory holding the task's files: `data_dir` itself, `data_dir/<default_subdir>` (a data root
    such as DATA with glue/SST-2 below it) or `data_dir/<task dir name>` (e.g. DATA/glue); if none holds them,
    `data_dir` (the reader then lists the paths it expected)."""
    root = Path(data_dir)
    sub = Path(task.default_subdir)
    for candidate in (root, root / sub, root / sub.name):
        if any(p.exists() for p in task.files(candidate, "dev")):
            return candidate
    return root


def split_examples(examples: Sequence[Any], first: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Shuffle with `seed` and cut after `first` rows: (train, held-out). Used to train on part of a dev file
    when a task has no training file at hand (e.g. 600/272 of SST-2 dev)."""
    if not 0 < first < len(examples):
        raise ValueError(f"dev split {first} must leave rows on both sides of the {len(examples)} examples")
    order = np.random.RandomState(seed).permutation(len(examples))
    return [examples[i] for i in order[:first]], [examples[i] for i in order[first:]]


def task_tokenizer(settings: FinetuneSettings) -> BortTokenizer:
    source = settings.tokenizer or settings.model
    try:
        return load_tokenizer(source)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ValueError(f"no tokenizer found in {source!r} ({exc}); pass --tokenizer with a vocabulary file "
                         f"or a directory holding one") from exc


def read_splits(task: Any, settings: FinetuneSettings) -> tuple[list[Any], list[Any], list[Any] | None, list]:
    """(train, dev, test or None, bad rows) examples of the task as the settings ask."""
    if "dev" not in task.splits or "train" not in task.splits and settings.dev_split is None:
        raise ValueError(f"{task.name} has only the splits {', '.join(task.splits)}: it cannot be fine-tuned on "
                         f"directly (diagnostic sets are predicted by a model fine-tuned on MNLI or RTE)")
    task_dir = resolve_task_dir(task, settings.data_dir)
    dev = task.read(task_dir, "dev", skip_bad_rows=settings.skip_bad_rows)
    bad = list(getattr(dev, "bad_rows", []))
    if settings.dev_split is not None:
        train, dev = split_examples(dev, settings.dev_split, settings.split_seed)
    else:
        train = task.read(task_dir, "train", skip_bad_rows=settings.skip_bad_rows)
        bad += list(getattr(train, "bad_rows", []))
    test = None
    if all(p.exists() for p in task.files(task_dir, "test")):
        test = task.read(task_dir, "test", skip_bad_rows=settings.skip_bad_rows)
        bad += list(getattr(test, "bad_rows", []))
    return list(train), list(dev), (list(test) if test is not None else None), bad


def _attention_penalty(model: torch.nn.Module) -> torch.Tensor | None:
    """The attention mechanism's regularisation term (DAM's mask penalty), added times dam_lambda."""
    return model.attention_regularization()


def _attention_monitor(model: torch.nn.Module) -> dict[str, float]:
    """The attention mechanism's statistics (DAM's mask density), logged with the training loss."""
    return model.attention_statistics()


class FinetuneRecipe(Recipe):
    """Fine-tune, keep the best dev checkpoint, write predictions and submissions (`Recipe`'s shape).

    The output directory is held for the run (`bort.train.run_dir`): a second run into it is refused, and so
    is a directory holding an earlier run's outputs unless `settings.overwrite`."""

    artefacts = ARTEFACTS

    def setup(self) -> None:
        """Claim the output directory, read the task's splits, encode them, build the model with a new head."""
        from ..data.tasks import get_task

        settings = self.settings
        self.task = get_task(settings.task)
        self.out = self.claim(settings.output_dir, overwrite=settings.overwrite)
        self.start = time.perf_counter()
        self.train_examples, self.dev, self.test, self.bad = read_splits(self.task, settings)
        for row in self.bad:
            logger.warning("skipped bad row: %s line %s: %s", row.path, row.line, row.reason)
        self.tokenizer = tokenizer = task_tokenizer(settings)
        self.train_items = encode_task_examples(tokenizer, self.train_examples, settings.max_length)
        self.dev_items = encode_task_examples(tokenizer, self.dev, settings.max_length)

        torch.manual_seed(settings.hparams.seed)  # the fresh head's initialisation
        self.model = model = load_model_for(self.task, settings.model, settings.config)
        if tokenizer.vocab_size > model.config.vocab_size:  # its ids would index past the embedding mid-training
            raise ValueError(f"the tokenizer ({settings.tokenizer or settings.model}) has {tokenizer.vocab_size} ids "
                             f"but the model {settings.model} embeds {model.config.vocab_size}: pass --tokenizer "
                             "with the vocabulary the model was trained with")
        if settings.dam_lambda and model.attention_regularization() is None:
            raise ValueError(f"--dam-lambda {settings.dam_lambda} needs a model with dam_s/dam_u attention; "
                             f"{settings.model} uses {model.config.attention!r}")

    def train(self) -> dict[str, Any]:
        """Fit (best/ written at every new best dev metric), then dev predictions, the submission, the curves,
        and metrics.json; returns the summary."""
        settings, task, out, tokenizer, model = self.settings, self.task, self.out, self.tokenizer, self.model
        metrics_log = JsonlLogger(out / "metrics.jsonl", report_to=settings.report_to)
        try:
            result: FitResult = fit(model, task, self.train_items, self.dev_items, self.dev, settings.hparams,
                                    tokenizer.pad_token_id, eval_interval=settings.eval_interval,
                                    patience=settings.patience, max_steps=settings.max_steps,
                                    best_dir=out / "best", on_event=metrics_log.log, progress=settings.progress,
                                    log_interval=settings.log_interval,
                                    penalty=_attention_penalty if settings.dam_lambda else None,
                                    monitor=_attention_monitor, penalty_weight=settings.dam_lambda,
                                    save_best=self.save_best if settings.save_checkpoint else None)
        finally:
            metrics_log.close()

        dev, test = self.dev, self.test
        dev_metrics, dev_preds = evaluate(model, task, self.dev_items, dev, tokenizer.pad_token_id,
                                          settings.eval_batch_size)
        _write_predictions(out / "dev_predictions.jsonl", dev, dev_preds)
        submission = None
        if test is not None:
            test_items = encode_task_examples(tokenizer, test, settings.max_length)
            test_preds = predict(model, test_items, task.kind, tokenizer.pad_token_id, settings.eval_batch_size)
            submission = str(task.write_submission(test_preds, test, out / "submission"))
        plot_loss_and_dev(read_jsonl(out / "metrics.jsonl"), out / "curves.png", task.name, task.main_metric,
                          f"dev {task.main_metric}")

        self.summary = {
            "task": task.name, "model": settings.model, "main_metric": task.main_metric,
            "dev": dev_metrics, "best_step": result.best_step, "steps": result.steps,
            "stopped_early": result.stopped_early, "train_examples": len(self.train_examples),
            "dev_examples": len(dev), "test_examples": len(test) if test is not None else 0,
            "submission": submission, "train_seconds": round(result.seconds, 2),
            "total_seconds": round(time.perf_counter() - self.start, 2),
            "bad_rows": [{"path": str(r.path), "line": r.line, "reason": r.reason} for r in self.bad],
            "settings": _settings_dict(settings),
            "best_checkpoint": str(out / "best") if settings.save_checkpoint else None,
        }
        self.save()
        return self.summary

    def save_best(self, model: torch.nn.Module, directory: Path) -> None:
        """The best dev checkpoint with its tokenizer (`fit` calls it at every new best)."""
        save_pretrained(model, directory)
        self.tokenizer.save(directory)

    def save(self) -> Path:
        """metrics.json: the summary (settings, best dev metrics, timings, skipped bad rows)."""
        path = self.out / "metrics.json"
        atomic_write_text(path, json.dumps(self.summary, indent=2, sort_keys=True) + "\n")
        return path


def run_finetune(settings: FinetuneSettings) -> dict[str, Any]:
    """Fine-tune as `settings` say (`FinetuneRecipe`); returns the summary."""
    return FinetuneRecipe(settings).run()


def _settings_dict(settings: FinetuneSettings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    d["hparams"] = settings.hparams.as_dict()
    return d


def _write_predictions(path: Path, examples: Sequence[Any], preds: Sequence[Any]) -> None:
    lines = [json.dumps({"guid": ex.guid, "prediction": p, "label": ex.label}) for ex, p in zip(examples, preds)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
