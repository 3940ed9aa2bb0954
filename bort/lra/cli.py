"""Command-line flags of `bort lra` / `run_lra.py`: train the LRA classifier on one task with any attention.

    bort lra listops --data listops.tsv --attention bigbird --max-steps 3000 --output-dir out/listops-bigbird
    bort lra listops --data lra_release/listops-1000 --attention yoso --attention-params '{"hash_code_len": 11}'
    bort lra generate-listops listops-long --train 2000 --val 200 --test 200 --seed 0   # LRA-style rows
    bort lra text --data glue/SST-2/dev.tsv --dev-size 100 --test-size 200 --attention yoso   # bytes, 4,000 max
    bort lra retrieval --data lra_release/tsv_data --attention bigbird   # new_aan_pairs.*.tsv, dual encoder
    bort lra image --data digits --max-steps 300   # scikit-learn's 8x8 digits offline; or cifar-10-batches-py/
    bort lra generate-pathfinder pf32 --count 2000 && bort lra pathfinder32 --data pf32 --attention yoso
    bort lra listops --data lra_release/listops-1000 --recipe paper --attention yoso-v2-16   # the YOSO paper's

Unset schedule flags take the task's preset (`bort.lra.tasks`; ListOps: batch 32, lr 1e-4, 5,000 steps with
1,000 warmup, dev evaluation every 50 steps).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..atomic import WriteError
from ..train.resume import parse_allowed
from . import listops_gen
from .listops_gen import add_generate_args, run_generate
from . import pathfinder_gen
from .runner import LRASettings, run_lra
from .tasks import PAPER_ATTENTION, RECIPES, TASKS


def _json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} is not valid JSON at column {err.colno}: {err.msg} ({text!r})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    return value


GENERATE = "generate-listops"
GENERATE_PATHFINDER = "generate-pathfinder"


def add_args(parser: argparse.ArgumentParser) -> None:
    """`TASK [training flags]` trains on a task; `generate-listops OUT_DIR [flags]` writes generated ListOps."""
    ready = [name for name, task in TASKS.items() if task.implemented]
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK",
                                help=f"LRA task (with a data reader: {', '.join(ready)}; presets also exist for "
                                     f"{', '.join(n for n in TASKS if n not in ready) or 'none'}), or {GENERATE} / "
                                     f"{GENERATE_PATHFINDER}")
    for name in ready:
        _add_train_args(sub.add_parser(name, help=f"train the LRA classifier on {name}"), name)
    add_generate_args(sub.add_parser(GENERATE, help="generate LRA-style ListOps files (basic_{train,val,test}.tsv)",
                                     description=(listops_gen.__doc__ or "").splitlines()[0]))
    pathfinder_gen.add_generate_args(sub.add_parser(
        GENERATE_PATHFINDER, help="generate Pathfinder images in LRA's layout (imgs/<k>/*.png, metadata/<k>.npy)",
        description=(pathfinder_gen.__doc__ or "").splitlines()[0]))


def _add_train_args(parser: argparse.ArgumentParser, task: str = "listops") -> None:
    s = LRASettings()
    a = parser.add_argument
    a("--data", required=True, help=f"the {task} data: {TASKS[task].data_help}")
    a("--attention", default=s.attention, help="attention mechanism by registry name (dense, yoso, yoso_e, bigbird, "
                                               "longformer, dam_s, …) or one of the YOSO paper's LRA "
                                               f"configurations ({', '.join(PAPER_ATTENTION)})")
    a("--recipe", default=s.recipe, choices=list(RECIPES),
      help="bort: ours (linear warmup/decay, β1 0.9, mean over real tokens); paper: the YOSO paper's LRA code "
           "(OneCycleLR with β1 cycling, FFN dropout, mean over the padded length, power-of-two position "
           "table, its YOSO settings)")
    a("--attention-params", dest="attention_params", default=None,
      help="JSON object of the mechanism's parameters (default: the task's, e.g. YOSO hash_code_len 11 on listops)")
    a("--model-config", dest="model_overrides", default=None,
      help="JSON object overriding BortConfig fields of the LRA model, e.g. '{\"hidden_size\": 128}'")
    a("--output-dir", dest="output_dir", default=s.output_dir)
    a("--max-steps", dest="max_steps", type=int, default=None, help="optimiser steps (default: the preset's)")
    a("--batch-size", dest="batch_size", type=int, default=None)
    a("--lr", type=float, default=None)
    a("--weight-decay", dest="weight_decay", type=float, default=None)
    a("--warmup-ratio", dest="warmup_ratio", type=float, default=None,
      help="warmup fraction of max-steps (default: the preset's warmup/total)")
    a("--eval-interval", dest="eval_interval", type=int, default=None, help="steps between dev evaluations")
    a("--dev-size", dest="dev_size", type=int, default=s.dev_size, help="dev rows when splitting one file")
    a("--test-size", dest="test_size", type=int, default=s.test_size, help="test rows when splitting one file")
    a("--split-seed", dest="split_seed", type=int, default=s.split_seed)
    a("--seed", type=int, default=s.seed)
    a("--dam-lambda", dest="dam_lambda", type=float, default=s.dam_lambda,
      help="weight of the DAM mask penalty λ·Σ|M| (dam_s / dam_u attention)")
    a("--clip-norm", dest="clip_norm", type=float, default=s.clip_norm, help="gradient norm clip (0: off)")
    a("--pad-multiple", dest="pad_multiple", type=int, default=s.pad_multiple,
      help="round each batch's width up to a multiple of this (block patterns add their block)")
    a("--skip-bad-rows", dest="skip_bad_rows", action="store_true",
      help="skip malformed rows (reported with file and line) instead of stopping")
    a("--resume", action="store_true",
      help="continue from the newest checkpoint in --output-dir (same settings; data compared by content)")
    a("--overwrite", action="store_true",
      help="start afresh in an --output-dir that holds an earlier run: its checkpoints/, best/, metrics.jsonl, "
           "results.json and curves.png are deleted (other files are kept)")
    a("--allow-setting-change", dest="allow_setting_change", action="append", default=[], metavar="NAME[,NAME]",
      help="with --resume, accept these settings differing from the checkpoint's (e.g. max_steps to extend a run)")
    a("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> LRASettings:
    return LRASettings(
        task=args.task, data=args.data, output_dir=args.output_dir, attention=args.attention, recipe=args.recipe,
        attention_params=_json_object("--attention-params", args.attention_params),
        model_overrides=_json_object("--model-config", args.model_overrides) or {},
        max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, eval_interval=args.eval_interval, dev_size=args.dev_size,
        test_size=args.test_size, split_seed=args.split_seed, seed=args.seed, dam_lambda=args.dam_lambda,
        clip_norm=args.clip_norm, pad_multiple=args.pad_multiple, skip_bad_rows=args.skip_bad_rows,
        resume=args.resume, overwrite=args.overwrite, allow_setting_change=parse_allowed(args.allow_setting_change),
        progress=args.progress)


def run(args: argparse.Namespace) -> int:
    """Run from parsed flags; data and setting errors print one line and return 2."""
    import torch

    from ..config import ConfigError

    if args.task == GENERATE:
        return run_generate(args)
    if args.task == GENERATE_PATHFINDER:
        return pathfinder_gen.run_generate(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        summary = run_lra(settings_from_args(args))
    except (ValueError, FileNotFoundError, FloatingPointError, ConfigError, WriteError) as exc:
        print(f"bort lra: error: {exc}", file=sys.stderr)
        return 2
    keys = ("task", "attention", "steps", "best_step", "dev_accuracy", "test_accuracy", "majority_accuracy",
            "ms_per_step", "train_seconds", "wall_seconds", "best_checkpoint")
    print(json.dumps({k: summary[k] for k in keys}, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="run_lra.py", description=__doc__.splitlines()[0])
    add_args(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
