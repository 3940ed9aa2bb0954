"""Command-line flags of `run_pretraining_distillation.py` / `bort distill`, including the original
script's names (`--data`, `--data_eval`, `--teacher_model`, `--model`, `--num_steps`, `--ckpt_interval`,
`--ckpt_dir`, `--teacher_ce_weight`, `--dtype` …) as aliases."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..atomic import WriteError
from ..train.resume import parse_allowed
from .recipe import DistillSettings, NonFiniteLossError, run_distillation


def add_args(parser: argparse.ArgumentParser) -> None:
    d = DistillSettings(train=[])
    a = parser.add_argument
    a("--train", "--data", dest="train", action="append", required=True,
      help="training shards: files or globs (repeat or comma-separate)")
    a("--test", "--data_eval", dest="test", action="append", default=[], help="evaluation shards (test.rec)")
    a("--teacher", "--teacher_model", dest="teacher", default=None,
      help="teacher checkpoint: anything load_pretrained reads (native/HF directory, Gluon .params)")
    a("--teacher-config", dest="teacher_config", default=None, help="config for a .params teacher (preset or JSON)")
    a("--student", "--model", dest="student", default=d.student, help="student preset name or JSON config")
    a("--student-init", dest="student_init", choices=("random", "teacher"), default=d.student_init,
      help="random initialisation, or copy the teacher's embeddings and mapped layers (same width)")
    a("--output-dir", "--ckpt_dir", dest="output_dir", default=d.output_dir)
    a("--batch-size", "--batch_size", dest="batch_size", type=int, default=d.batch_size,
      help="records per rank per micro-step (global batch = this × ranks × accumulation)")
    a("--accumulate", type=int, default=d.accumulate, help="gradient accumulation micro-steps")
    a("--max-steps", "--num_steps", dest="max_steps", type=int, default=None,
      help="optimiser steps (default: --num-epochs over the training data)")
    a("--num-epochs", dest="num_epochs", type=float, default=d.num_epochs)
    a("--lr", type=float, default=d.lr)
    a("--optimizer", choices=("bertadam", "adamw"), default=d.optimizer)
    a("--weight-decay", dest="weight_decay", type=float, default=d.weight_decay)
    a("--eps", type=float, default=d.eps)
    a("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=float, default=d.warmup_ratio)
    a("--schedule", choices=("linear", "poly", "constant", "bort_linear"), default=d.schedule)
    a("--clip-norm", dest="clip_norm", type=float, default=d.clip_norm, help="global gradient norm clip (0: off)")
    a("--mlm-weight", "--mlm_weight", dest="mlm_weight", type=float, default=d.mlm_weight)
    a("--kd-weight", "--teacher_ce_weight", dest="kd_weight", type=float, default=None,
      help="logit KD weight (default 0.5 with a teacher MLM head, else 0)")
    a("--hidden-weight", dest="hidden_weight", type=float, default=None,
      help="hidden-state matching weight (default 1 for a teacher without MLM head, else 0)")
    a("--attention-weight", dest="attention_weight", type=float, default=None,
      help="attention matching weight (default 1 for a teacher without MLM head, else 0)")
    a("--temperature", type=float, default=d.temperature)
    a("--bort-compat-kd", dest="bort_compat_kd", action="store_true",
      help="the original MXNet KD term (double softmax, vocabulary mean) instead of T²·KL")
    a("--precision", "--dtype", dest="precision", default=d.precision,
      choices=("fp32", "bf16", "fp16", "float32", "bfloat16", "float16"))
    a("--log-interval", "--log_interval", dest="log_interval", type=int, default=d.log_interval)
    a("--eval-interval", "--eval_interval", dest="eval_interval", type=int, default=d.eval_interval)
    a("--eval-batches", dest="eval_batches", type=int, default=d.eval_batches)
    a("--checkpoint-interval", "--ckpt_interval", dest="checkpoint_interval", type=int, default=d.checkpoint_interval)
    a("--keep-checkpoints", dest="keep_checkpoints", type=int, default=d.keep_checkpoints)
    a("--resume", action="store_true", help="continue from the newest checkpoint in OUTPUT_DIR/checkpoints (the "
                                           "settings that shape the run must match the checkpoint's)")
    a("--overwrite", action="store_true",
      help="start afresh in an OUTPUT_DIR that holds an earlier run: its checkpoints/, final/, metrics.jsonl, "
           "settings.json, summary.json, loss.png and .push-staging/ are deleted (other files are kept)")
    a("--allow-setting-change", dest="allow_setting_change", action="append", default=[], metavar="NAME[,NAME]",
      help="with --resume, accept these settings differing from the checkpoint's (e.g. max_steps to extend a "
           "run; the new values apply from the resumed step on)")
    a("--seed", type=int, default=d.seed)
    a("--max-bad-steps", dest="max_bad_steps", type=int, default=d.max_bad_steps,
      help="stop after this many steps with NaN/inf losses (each is skipped and counted)")
    a("--launcher", choices=("auto", "torchrun", "mpi", "none"), default=d.launcher)
    a("--allow-truncated-data", dest="allow_truncated_data", action="store_true",
      help="use the intact records of a truncated shard (the damaged tail is counted) instead of stopping")
    a("--no-progress", dest="progress", action="store_false")
    a("--no-plot", dest="plot", action="store_false", help="do not draw loss.png at the end")
    a("--dam-lambda", dest="dam_lambda", type=float, default=d.dam_lambda,
      help="DAM mask search: add λ·Σ|M| to the loss (student attention dam_s or dam_u; SparseBERT used "
           "1e-4 to 1e-1; default 0: no penalty)")
    a("--push-to", dest="push_to", default=None, metavar="s3://BUCKET/PREFIX",
      help="upload each checkpoint (and final/) to PREFIX/<name>/ in the background; failures are retried and "
           "reported in summary.json, never stop training (endpoint: AWS_ENDPOINT_URL_S3)")


_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def settings_from_args(args: argparse.Namespace) -> DistillSettings:
    values = {f: getattr(args, f) for f in DistillSettings.__dataclass_fields__ if hasattr(args, f)}
    values["train"] = [p for item in args.train for p in item.split(",") if p]
    values["test"] = [p for item in args.test for p in item.split(",") if p]
    values["precision"] = _PRECISION.get(args.precision, args.precision)
    values["allow_setting_change"] = parse_allowed(args.allow_setting_change)
    return DistillSettings(**values)


def run(args: argparse.Namespace) -> int:
    summary = run_distillation(settings_from_args(args))
    if summary.get("rank", 0) == 0:
        print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None, launcher: str | None = None) -> int:
    parser = argparse.ArgumentParser(description="Distil a student BERT from a teacher on pretraining shards.")
    add_args(parser)
    args = parser.parse_args(argv)
    if launcher is not None and args.launcher == "auto":
        args.launcher = launcher
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (NonFiniteLossError, ValueError, FileNotFoundError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
