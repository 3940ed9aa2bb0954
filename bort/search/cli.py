"""Command-line flags of `bort search` / `run_search.py`."""
from __future__ import annotations

import argparse
import json
import logging

from ..cli import add_alias, add_no_progress, run_reporting, script_parser
from .runner import SearchRecipe, SearchSettings


def add_args(parser: argparse.ArgumentParser) -> None:
    """Flags; those left unset take the space file's values (then the defaults in docs/search.md)."""
    a = parser.add_argument
    a("space", help="search space JSON (axes for layers/heads/hidden/intermediate, maximum point, options)")
    a("--teacher", default=None, help="teacher checkpoint for the truncated distillation runs (and the default "
                                      "maximum point)")
    a("--train", action="append", required=True, help="training shards: files or globs (repeat or comma-separate)")
    a("--test", action="append", required=True, help="held-out shards the error is measured on")
    a("--output-dir", dest="output_dir", default="search_output",
      help="reports, cache/ (one JSON per candidate) and search_log.jsonl; rerun with the same directory to resume")
    add_alias(parser, a("--fptas-epsilon", dest="epsilon", type=float, default=None,
                        help="FPTAS ε in (0, 1): the choice is within (1 − ε) of the optimum (default 0.5)"),
              "--epsilon")  # its earlier name
    a("--interval-steps", dest="interval_steps", type=int, default=None,
      help="optimiser steps per interval s of the truncated run; held-out evaluation after each (default 10)")
    a("--intervals", type=int, default=None, help="intervals per truncated run (default 2)")
    a("--eval-batches", dest="eval_batches", type=int, default=None, help="held-out batches per evaluation (default 4)")
    a("--error-metric", dest="error_metric", default=None, choices=("eval_mlm_loss", "eval_kd", "eval_hidden"),
      help="which held-out number is the error (default eval_mlm_loss)")
    a("--speed", dest="speed_mode", default=None, choices=("measured", "flops"),
      help="inference speed measured on this machine (median of repeats) or counted in FLOPs (default measured)")
    a("--params", dest="params_kind", default="encoder", choices=("encoder", "effective"),
      help="parameter size of the encoder, or without embeddings (the paper's effective size)")
    a("--exhaustive", action="store_true", help="evaluate every feasible candidate (reuses the cache)")
    a("--keep-runs", dest="keep_runs", action="store_true", help="keep each candidate's distillation directory")
    a("--overwrite", action="store_true", help="discard an earlier search's cache/, runs/, log and reports in "
                                               "--output-dir and start afresh (other files are kept)")
    a("--seed", type=int, default=None)
    a("--batch-size", dest="batch_size", type=int, default=None, help="distillation batch size of the truncated runs")
    a("--lr", type=float, default=None, help="distillation learning rate of the truncated runs")
    add_no_progress(parser)


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    distill = {k: getattr(args, k) for k in ("batch_size", "lr") if getattr(args, k) is not None}
    return SearchSettings(
        space=args.space, train=[p for item in args.train for p in item.split(",") if p],
        test=[p for item in args.test for p in item.split(",") if p], teacher=args.teacher,
        output_dir=args.output_dir, epsilon=args.epsilon, interval_steps=args.interval_steps,
        intervals=args.intervals, eval_batches=args.eval_batches, error_metric=args.error_metric,
        speed_mode=args.speed_mode, seed=args.seed, params_kind=args.params_kind, exhaustive=args.exhaustive,
        keep_runs=args.keep_runs, overwrite=args.overwrite, progress=args.progress, distill=distill)


def run(args: argparse.Namespace) -> int:
    result = SearchRecipe(settings_from_args(args)).run()
    print(json.dumps({k: result[k] for k in ("chosen", "w", "config", "mode", "feasible", "skipped", "evaluated",
                                              "reused_from_cache")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = script_parser("run_search.py", "FPTAS sub-architecture search over layers, heads, hidden and "
                                            "intermediate sizes.", add_args)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting(parser.prog, run, args)
