"""`bort agora`: Agora on a task from a grid file (task, candidate, data, pool Θ) and a reference model.

    bort agora grid.json --reference path/to/finetuned_reference --holdout 136 --replay 1 --output-dir out

Writes `rounds.jsonl` (one record per round: pool and scores, errors, points added, training-set size),
`agora.json`, `generated.jsonl`, `agora.png` and the final model in `best/` (with its tokenizer). The output
directory is held for the run (`bort.train.run_dir`); one holding an earlier run's outputs is refused unless
`--overwrite`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..checkpoint import load_pretrained, save_pretrained
from ..tokenization import load_tokenizer
from ..train.metrics import JsonlLogger
from ..train.run_dir import claim_output_dir
from .agora import Agora, write_report
from .augment import MLMInfill, TokenPerturbation, vocabulary_words
from .batching import encode_task_examples
from .grid import load_grid
from .heads import load_model_for, model_task
from .runner import read_splits, task_tokenizer
from .trainer import evaluate, predict

# What a run writes into its output directory (refused when present, removed by --overwrite).
ARTEFACTS = ("rounds.jsonl", "agora.json", "generated.jsonl", "agora.png", "best")


def reference_labeller(task: Any, reference: str, tokenizer_path: str | None, max_length: int):
    """A function labelling examples with the reference model's predictions (its own tokenizer)."""
    model = load_pretrained(reference, task=model_task(task.kind))
    tokenizer = load_tokenizer(tokenizer_path or reference)

    def label(examples: Sequence[Any]) -> list[Any]:
        items = encode_task_examples(tokenizer, examples, max_length)
        return predict(model, items, task.kind, tokenizer.pad_token_id)

    return label


def run_agora(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.tasks import get_task

    spec = load_grid(args.grid)
    settings = spec.settings
    task = get_task(settings.task)
    out = Path(args.output_dir)
    with claim_output_dir(out, ARTEFACTS, overwrite=getattr(args, "overwrite", False)):
        return _run_agora(args, spec, task, out)


def _run_agora(args: argparse.Namespace, spec: Any, task: Any, out: Path) -> dict[str, Any]:
    settings = spec.settings
    train, dev, _, _ = read_splits(task, settings)
    holdout: list[Any] = []
    if args.holdout:
        if not 0 < args.holdout < len(dev):
            raise ValueError(f"--holdout {args.holdout} must leave evaluation rows (the set has {len(dev)})")
        dev, holdout = dev[:-args.holdout], dev[-args.holdout:]
    tokenizer = task_tokenizer(settings)
    if args.generator == "mlm":
        if not args.mlm_teacher:
            raise ValueError("--generator mlm needs --mlm-teacher (a checkpoint with a masked-LM head)")
        generator = MLMInfill(load_pretrained(args.mlm_teacher, task="mlm"), load_tokenizer(args.mlm_teacher))
    else:
        generator = TokenPerturbation(vocabulary_words(tokenizer, limit=20000))
    label = reference_labeller(task, args.reference, args.reference_tokenizer, settings.max_length)
    log = JsonlLogger(out / "rounds.jsonl")
    try:
        agora = Agora(task, lambda: load_model_for(task, settings.model, settings.config),
                      lambda exs: encode_task_examples(tokenizer, exs, settings.max_length), label, generator,
                      tokenizer.pad_token_id, per_error=args.per_error, max_new_per_round=args.max_new_per_round,
                      fit_options={"patience": settings.patience, "eval_interval": settings.eval_interval,
                                   "max_steps": settings.max_steps},
                      log=log)
        model, result = agora.run(spec.trials(), train, dev, replay=args.replay)
    finally:
        log.close()
    holdout_metrics = None
    if holdout:
        items = encode_task_examples(tokenizer, holdout, settings.max_length)
        holdout_metrics, _ = evaluate(model, task, items, holdout, tokenizer.pad_token_id)
    save_pretrained(model, out / "best")
    tokenizer.save(out / "best")
    extra = {"holdout": holdout_metrics, "holdout_examples": len(holdout), "generator": args.generator,
             "replay": args.replay, "pool": len(spec.trials())}
    write_report(result, out, task, extra)
    return {"task": task.name, "hparams": result.hparams.as_dict(), "dev": result.dev, "holdout": holdout_metrics,
            "trainings": result.trainings, "added": len(result.added)}


__all__ = ["run_agora", "reference_labeller"]
