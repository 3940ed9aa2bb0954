"""Command-line flags of `run_finetune.py` / `bort finetune` (with the original script's names as aliases:
`--task_name`, `--batch_size`, `--lr`, `--epochs`, `--warmup_ratio`, `--max_len`, `--output_dir`, …)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..atomic import WriteError
from .runner import FinetuneSettings, run_finetune
from .trainer import HParams


def add_args(parser: argparse.ArgumentParser) -> None:
    h, s = HParams(), FinetuneSettings(task="", model="")
    a = parser.add_argument
    a("--task", "--task_name", dest="task", required=True,
      help="GLUE/SuperGLUE/RACE task name (case-insensitive), e.g. SST-2, MNLI-mm, BoolQ, ReCoRD, RACE-high")
    a("--model", "--model_parameters", dest="model", required=True,
      help="pretrained checkpoint: anything load_pretrained reads (native/HF directory, Gluon .params, s3://…)")
    a("--data-dir", "--data_dir", dest="data_dir", default=s.data_dir,
      help="the task's directory, or a root holding glue/<Task>, superglue/<Task>, race/RACE")
    a("--tokenizer", default=None, help="vocabulary file or directory (default: the model directory)")
    a("--output-dir", "--output_dir", dest="output_dir", default=s.output_dir)
    a("--config", default=None, help="JSON object of config overrides, e.g. '{\"attention\": \"bigbird\"}'")
    a("--lr", type=float, default=h.lr)
    a("--batch-size", "--batch_size", dest="batch_size", type=int, default=h.batch_size)
    a("--epochs", type=float, default=h.epochs)
    a("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=float, default=h.warmup_ratio)
    a("--weight-decay", "--wd", dest="weight_decay", type=float, default=h.weight_decay,
      help="decoupled weight decay (the original's default 110 is multiplied by the learning rate)")
    a("--optimizer", choices=("bertadam", "adamw"), default=h.optimizer)
    a("--eps", "--epsilon", dest="eps", type=float, default=h.eps)
    a("--clip-norm", dest="clip_norm", type=float, default=h.clip_norm, help="gradient norm clip (0: off)")
    a("--seed", type=int, default=h.seed)
    a("--max-length", "--max_len", dest="max_length", type=int, default=s.max_length)
    a("--max-steps", dest="max_steps", type=int, default=None, help="stop after this many steps")
    a("--eval-interval", dest="eval_interval", type=int, default=0, help="steps between dev evaluations "
      "(0: once an epoch)")
    a("--patience", "--early_stop", dest="patience", type=int, default=None,
      help="stop after this many evaluations without a better dev metric")
    a("--dev-split", dest="dev_split", type=int, default=None,
      help="train on this many rows of the shuffled dev file and evaluate on the rest (no train file needed)")
    a("--split-seed", dest="split_seed", type=int, default=s.split_seed)
    a("--skip-bad-rows", dest="skip_bad_rows", action="store_true",
      help="skip malformed rows (reported with file and line, counted in metrics.json) instead of stopping")
    a("--dam-lambda", dest="dam_lambda", type=float, default=0.0,
      help="weight of the DAM mask penalty λ·Σ|M| (models with dam_s/dam_u attention)")
    a("--overwrite", action="store_true",
      help="replace an earlier run's outputs in --output-dir (best/, metrics.json(l), curves.png, "
           "dev_predictions.jsonl, submission/; other files are kept) instead of refusing the directory")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    hp = HParams(lr=args.lr, batch_size=args.batch_size, warmup_ratio=args.warmup_ratio,
                 weight_decay=args.weight_decay, seed=args.seed, epochs=args.epochs, optimizer=args.optimizer,
                 eps=args.eps, clip_norm=args.clip_norm)
    config = json.loads(args.config) if args.config else {}
    if not isinstance(config, dict):
        raise ValueError(f"--config must be a JSON object, got {args.config!r}")
    return FinetuneSettings(task=args.task, model=args.model, data_dir=args.data_dir, tokenizer=args.tokenizer,
                            output_dir=args.output_dir, hparams=hp, max_length=args.max_length,
                            eval_interval=args.eval_interval, patience=args.patience, max_steps=args.max_steps,
                            dev_split=args.dev_split, split_seed=args.split_seed,
                            skip_bad_rows=args.skip_bad_rows, dam_lambda=args.dam_lambda, config=config,
                            progress=args.progress, overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    try:
        summary = run_finetune(settings_from_args(args))
    except (ValueError, FileNotFoundError, FloatingPointError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("task", "dev", "best_step", "steps", "train_seconds",
                                              "submission")}, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="run_finetune.py", description=__doc__)
    add_args(parser)
    return run(parser.parse_args(argv))


# --- bort grid ------------------------------------------------------------------------------------------------
def add_grid_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid file (JSON; see bort.finetune.grid)")
    parser.add_argument("--output-dir", default="grid_output")
    parser.add_argument("--workers", type=int, default=1, help="parallel trials (processes, or Ray CPUs)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's best/ checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the finished trials and results of an earlier grid in --output-dir (a rerun "
                             "of the same grid resumes without it; one with other settings is refused)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run_grid_cli(args: argparse.Namespace) -> int:
    import dataclasses

    from .grid import load_grid, run_grid

    try:
        spec = load_grid(args.grid)
        spec.settings = dataclasses.replace(spec.settings, save_checkpoint=args.keep_checkpoints)
        results = run_grid(spec, args.output_dir, workers=args.workers, backend=args.backend,
                           progress=args.progress, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FloatingPointError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"trials": len(results), "best": results[0] if results else None}, sort_keys=True))
    return 0


# --- bort agora -----------------------------------------------------------------------------------------------
def add_agora_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid file: task, candidate model, data and the pool Θ (its grid)")
    parser.add_argument("--reference", required=True,
                        help="fine-tuned reference model that labels generated points (any load_pretrained path)")
    parser.add_argument("--reference-tokenizer", default=None, help="default: the reference's directory")
    parser.add_argument("--generator", choices=("perturb", "mlm"), default="perturb",
                        help="token-level perturbations, or infilling by --mlm-teacher's masked-LM head")
    parser.add_argument("--mlm-teacher", default=None, help="checkpoint with an MLM head for --generator mlm")
    parser.add_argument("--per-error", type=int, default=2, help="new points per evaluation error")
    parser.add_argument("--max-new-per-round", type=int, default=None)
    parser.add_argument("--replay", type=int, default=0, help="re-run the rounds K more times")
    parser.add_argument("--holdout", type=int, default=0,
                        help="rows of the evaluation set kept out of Agora for a final, unbiased test")
    parser.add_argument("--output-dir", default="agora_output")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run's outputs in --output-dir (rounds.jsonl, agora.json, "
                             "generated.jsonl, agora.png, best/; other files are kept) instead of refusing it")


def run_agora_cli(args: argparse.Namespace) -> int:
    from .agora_recipe import run_agora

    try:
        summary = run_agora(args)
    except (ValueError, FileNotFoundError, FloatingPointError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("task", "hparams", "dev", "holdout", "trainings", "added")},
                     sort_keys=True))
    return 0
