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

from ..cli import add_alias, add_no_progress, report_error, run_reporting, script_parser
from ..train.metrics import REPORT_TO
from ..train.resume import parse_allowed
from . import listops_gen, pathfinder_gen
from .listops_gen import ListOpsSpec, generate_listops_dir
from .pathfinder_gen import DIFFICULTIES, DIFFICULTY_PARAMS, write_pathfinder
from .runner import LRARecipe, LRASettings
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
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK",
                                help=f"LRA task ({', '.join(TASKS)}), or {GENERATE} / {GENERATE_PATHFINDER}")
    for name in TASKS:
        _add_train_args(sub.add_parser(name, help=f"train the LRA classifier on {name}"), name)
    add_listops_args(sub.add_parser(GENERATE, help="generate LRA-style ListOps files (basic_{train,val,test}.tsv)",
                                     description=(listops_gen.__doc__ or "").splitlines()[0]))
    add_pathfinder_args(sub.add_parser(
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
    add_alias(parser, a("--model-config", dest="model_overrides", default=None, metavar="JSON",
                        help="JSON object overriding BortConfig fields of the LRA model, e.g. "
                             "'{\"hidden_size\": 128}'"), "--config")
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
    a("--report-to", dest="report_to", choices=REPORT_TO, default="none",
      help="also write the metrics as TensorBoard events in OUTPUT_DIR/tensorboard (needs pip install tensorboard)")
    add_no_progress(parser)


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
        progress=args.progress, report_to=args.report_to)


def add_listops_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `bort lra generate-listops`."""
    d = ListOpsSpec()
    a = parser.add_argument
    a("out_dir", metavar="OUT_DIR", help="directory for basic_train.tsv, basic_val.tsv, basic_test.tsv")
    a("--train", type=int, default=96000, help="training rows (LRA: 96000)")
    a("--val", type=int, default=2000, help="validation rows (LRA: 2000)")
    a("--test", type=int, default=2000, help="test rows (LRA: 2000)")
    a("--seed", type=int, default=0)
    a("--min-length", dest="min_length", type=int, default=d.min_length,
      help="keep trees longer than this (symbols other than parentheses)")
    a("--max-length", dest="max_length", type=int, default=d.max_length, help="keep trees shorter than this")
    a("--max-depth", dest="max_depth", type=int, default=d.max_depth)
    a("--max-args", dest="max_args", type=int, default=d.max_args)
    add_no_progress(parser)


def run_listops_generator(args: argparse.Namespace) -> int:
    """Generate from parsed flags, print the summary as JSON; bad settings print one line and return 2."""
    try:
        spec = ListOpsSpec(args.min_length, args.max_length, args.max_depth, args.max_args)
        info = generate_listops_dir(args.out_dir, args.train, args.val, args.test, args.seed, spec, args.progress)
    except ValueError as err:
        return report_error(f"bort lra {GENERATE}", err)
    print(json.dumps({"out_dir": str(args.out_dir), **info}, sort_keys=True))
    return 0


def add_pathfinder_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `bort lra generate-pathfinder` / `python -m bort.lra.pathfinder_gen`."""
    a = parser.add_argument
    a("out_dir", metavar="OUT_DIR", help="directory to write <difficulty>/imgs and <difficulty>/metadata into "
                                         "(e.g. data/pathfinder32; `bort lra pathfinder32 --data` takes it)")
    a("--count", type=int, default=2000, help="number of images (half positive)")
    a("--difficulty", default=DIFFICULTIES["hard"],
      help=f"{', '.join(DIFFICULTY_PARAMS)} or easy/intermediate/hard (paths of 6, 9, 14 dashes)")
    a("--seed", type=int, default=0)
    a("--images-per-file", dest="images_per_file", type=int, default=1000, help="images per imgs/<k> folder")
    a("--overwrite", action="store_true", help="replace an existing difficulty directory")


def run_pathfinder_generator(args: argparse.Namespace) -> int:
    """Generate from parsed flags; print where the data went and the class balance (JSON). Bad settings
    print one line and return 2."""
    try:
        path = write_pathfinder(args.out_dir, args.count, args.difficulty, args.seed, args.images_per_file,
                                args.overwrite)
    except (ValueError, FileExistsError, RuntimeError) as err:
        return report_error(f"bort lra {GENERATE_PATHFINDER}", err)
    print(json.dumps({"path": str(path), "count": args.count, "positives": args.count // 2, "seed": args.seed}))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run from parsed flags; a data or setting error raises (the caller reports it in one line)."""
    import torch

    if args.task == GENERATE:
        return run_listops_generator(args)
    if args.task == GENERATE_PATHFINDER:
        return run_pathfinder_generator(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = LRARecipe(settings_from_args(args)).run()
    keys = ("task", "attention", "steps", "best_step", "dev_accuracy", "test_accuracy", "majority_accuracy",
            "ms_per_step", "train_seconds", "wall_seconds", "best_checkpoint")
    print(json.dumps({k: summary[k] for k in keys}, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = script_parser("run_lra.py", __doc__.splitlines()[0], add_args)
    return run_reporting(parser.prog, run, parser.parse_args(argv))


def main_pathfinder(argv: list[str] | None = None) -> int:
    """`python -m bort.lra.pathfinder_gen`: the flags of `bort lra generate-pathfinder`."""
    parser = script_parser("python -m bort.lra.pathfinder_gen", (pathfinder_gen.__doc__ or "").splitlines()[0],
                           add_pathfinder_args)
    return run_pathfinder_generator(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
