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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..checkpoint import save_pretrained
from ..tokenization import BortTokenizer, load_tokenizer
from ..train.metrics import TENSORBOARD_DIR, JsonlLogger, check_report_to, plot_loss_and_dev, read_jsonl
from ..train.run_dir import claim_output_dir
from .batching import encode_task_examples
from .heads import load_model_for
from .trainer import FitResult, HParams, evaluate, fit, predict

logger = logging.getLogger(__name__)

# What a run writes into its output directory: a new run refuses a directory holding any of them (unless
# `overwrite`), and `overwrite` removes exactly these.
ARTEFACTS = ("best", "metrics.json", "metrics.jsonl", "curves.png", "dev_predictions.jsonl", "submission",
             TENSORBOARD_DIR)


@dataclass
class FinetuneSettings:
    """Every knob of a fine-tuning run (the command-line flags map one to one)."""

    task: str
    model: str
    data_dir: str = "."
    tokenizer: str | None = None
    output_dir: str = "finetune_output"
    hparams: HParams = field(default_factory=HParams)
    max_length: int = 512
    eval_interval: int = 0
    patience: int | None = None
    max_steps: int | None = None
    eval_batch_size: int = 32
    dev_split: int | None = None
    split_seed: int = 0
    skip_bad_rows: bool = False
    dam_lambda: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    log_interval: int = 10
    save_checkpoint: bool = True  # write best/ (grid trials may skip it: hundreds of copies of a model)
    overwrite: bool = False  # replace an earlier run's outputs (ARTEFACTS) in output_dir instead of refusing
    report_to: str | None = None  # "tensorboard": metrics.jsonl's records also as TensorBoard events

    def __post_init__(self) -> None:
        problem = check_report_to(self.report_to)
        if problem is not None:
            raise ValueError(f"report_to {problem}")


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


def run_finetune(settings: FinetuneSettings) -> dict[str, Any]:
    """Fine-tune, keep the best dev checkpoint, write predictions and submissions; returns the summary.

    The output directory is held for the run (`bort.train.run_dir`): a second run into it is refused, and so
    is a directory holding an earlier run's outputs unless `settings.overwrite`."""
    from ..data.tasks import get_task

    task = get_task(settings.task)
    out = Path(settings.output_dir)
    with claim_output_dir(out, ARTEFACTS, overwrite=settings.overwrite):
        return _run_finetune(settings, task, out)


def _run_finetune(settings: FinetuneSettings, task: Any, out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    train, dev, test, bad = read_splits(task, settings)
    for row in bad:
        logger.warning("skipped bad row: %s line %s: %s", row.path, row.line, row.reason)
    tokenizer = task_tokenizer(settings)
    train_items = encode_task_examples(tokenizer, train, settings.max_length)
    dev_items = encode_task_examples(tokenizer, dev, settings.max_length)

    torch.manual_seed(settings.hparams.seed)  # the fresh head's initialisation
    model = load_model_for(task, settings.model, settings.config)
    if tokenizer.vocab_size > model.config.vocab_size:  # its ids would index past the embedding mid-training
        raise ValueError(f"the tokenizer ({settings.tokenizer or settings.model}) has {tokenizer.vocab_size} ids but "
                         f"the model {settings.model} embeds {model.config.vocab_size}: pass --tokenizer with the "
                         "vocabulary the model was trained with")
    if settings.dam_lambda and model.attention_regularization() is None:
        raise ValueError(f"--dam-lambda {settings.dam_lambda} needs a model with dam_s/dam_u attention; "
                         f"{settings.model} uses {model.config.attention!r}")
    best_dir = out / "best"

    def save_best(m: torch.nn.Module, directory: Path) -> None:
        save_pretrained(m, directory)
        tokenizer.save(directory)

    metrics_log = JsonlLogger(out / "metrics.jsonl", report_to=settings.report_to)
    try:
        result: FitResult = fit(model, task, train_items, dev_items, dev, settings.hparams, tokenizer.pad_token_id,
                                eval_interval=settings.eval_interval, patience=settings.patience,
                                max_steps=settings.max_steps, best_dir=best_dir, on_event=metrics_log.log,
                                progress=settings.progress, log_interval=settings.log_interval,
                                penalty=_attention_penalty if settings.dam_lambda else None,
                                monitor=_attention_monitor,
                                penalty_weight=settings.dam_lambda,
                                save_best=save_best if settings.save_checkpoint else None)
    finally:
        metrics_log.close()

    dev_metrics, dev_preds = evaluate(model, task, dev_items, dev, tokenizer.pad_token_id, settings.eval_batch_size)
    _write_predictions(out / "dev_predictions.jsonl", dev, dev_preds)
    submission = None
    if test is not None:
        test_items = encode_task_examples(tokenizer, test, settings.max_length)
        test_preds = predict(model, test_items, task.kind, tokenizer.pad_token_id, settings.eval_batch_size)
        submission = str(task.write_submission(test_preds, test, out / "submission"))
    plot_loss_and_dev(read_jsonl(out / "metrics.jsonl"), out / "curves.png", task.name, task.main_metric,
                      f"dev {task.main_metric}")

    summary = {
        "task": task.name, "model": settings.model, "main_metric": task.main_metric,
        "dev": dev_metrics, "best_step": result.best_step, "steps": result.steps,
        "stopped_early": result.stopped_early, "train_examples": len(train), "dev_examples": len(dev),
        "test_examples": len(test) if test is not None else 0, "submission": submission,
        "train_seconds": round(result.seconds, 2), "total_seconds": round(time.perf_counter() - start, 2),
        "bad_rows": [{"path": str(r.path), "line": r.line, "reason": r.reason} for r in bad],
        "settings": _settings_dict(settings),
        "best_checkpoint": str(best_dir) if settings.save_checkpoint else None,
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _settings_dict(settings: FinetuneSettings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    d["hparams"] = settings.hparams.as_dict()
    return d


def _write_predictions(path: Path, examples: Sequence[Any], preds: Sequence[Any]) -> None:
    lines = [json.dumps({"guid": ex.guid, "prediction": p, "label": ex.label}) for ex, p in zip(examples, preds)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
