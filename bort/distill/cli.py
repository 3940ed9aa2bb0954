"""Command-line flags of `run_pretraining_distillation.py` / `bort distill`. Every flag of the original
`run_pretraining_distillation_hvd.py` (`get_argparser`) is accepted too, with its meaning (`--data`, `--data_eval`,
`--teacher_model`, `--teacher_ckpt_dir`, `--distillation_temperature`, `--start_step`, `--cpu_only`, …); the
table in docs/original_commands.md says what each one becomes here."""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..cli import add_alias, add_no_progress, run_reporting, script_parser
from ..train.metrics import REPORT_TO
from ..train.resume import parse_allowed
from .recipe import DistillationRecipe, DistillSettings, NonFiniteLossError


def add_args(parser: argparse.ArgumentParser) -> None:
    d = DistillSettings(train=[])
    a = parser.add_argument
    a("--train", "--data", dest="train", action="append", required=True,
      help="training shards: files or globs (repeat or comma-separate)")
    a("--test", "--data_eval", dest="test", action="append", default=[], help="evaluation shards (test.rec)")
    a("--teacher", dest="teacher", default=None,
      help="teacher checkpoint: anything load_pretrained reads (native/HF directory, Gluon .params)")
    a("--teacher-config", dest="teacher_config", default=None, help="config for a .params teacher (preset or JSON)")
    a("--student", "--model", dest="student", default=d.student, help="student preset name or JSON config")
    a("--student-init", dest="student_init", choices=("random", "teacher", "extract"),
      default=d.student_init,
      help="random initialisation; 'teacher': copy the teacher's embeddings and mapped layers (same width); "
           "'extract': a narrower student takes the teacher's largest residual dimensions, heads and FFN neurons "
           "of the mapped layers (same head size)")
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
    add_alias(parser, a("--adam-epsilon", dest="eps", type=float, default=d.eps, help="Adam's ε"), "--eps")
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
    a("--temperature", "--distillation_temperature", dest="temperature", type=float, default=d.temperature)
    a("--bort-compat-kd", dest="bort_compat_kd", action="store_true",
      help="the original MXNet KD term (double softmax, vocabulary mean) instead of T²·KL")
    a("--precision", "--dtype", dest="precision", default=d.precision,
      choices=("fp32", "bf16", "fp16", "float32", "bfloat16", "float16"))
    a("--log-interval", "--log_interval", dest="log_interval", type=int, default=d.log_interval)
    a("--eval-interval", "--eval_interval", dest="eval_interval", type=int, default=d.eval_interval)
    a("--eval-batches", "--num_eval_steps", dest="eval_batches", type=int, default=d.eval_batches)
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
    add_no_progress(parser)
    a("--no-plot", dest="plot", action="store_false", help="do not draw loss.png at the end")
    a("--report-to", dest="report_to", choices=REPORT_TO, default="none",
      help="also write the metrics as TensorBoard events in OUTPUT_DIR/tensorboard (needs pip install tensorboard)")
    a("--dam-lambda", dest="dam_lambda", type=float, default=d.dam_lambda,
      help="DAM mask search: add λ·Σ|M| to the loss (student attention dam_s or dam_u; SparseBERT used "
           "1e-4 to 1e-1; default 0: no penalty)")
    a("--push-to", dest="push_to", default=None, metavar="s3://BUCKET/PREFIX",
      help="upload each checkpoint (and final/) to PREFIX/<name>/ in the background; failures are retried and "
           "reported in summary.json, never stop training (endpoint: AWS_ENDPOINT_URL_S3)")
    add_original_args(parser)


# GluonNLP model-zoo teachers the original names, and the architecture each is (its weights must be on disk).
ZOO_TEACHERS = {"roberta_24_1024_16": "roberta-large", "roberta_12_768_12": "roberta-base",
                "bert_24_1024_16": "bert-large", "bert_12_768_12": "bert-base"}
ORIGINAL_DATASETS = ("book_corpus_wiki_en_uncased", "book_corpus_wiki_en_cased", "wiki_multilingual_uncased",
                     "wiki_multilingual_cased", "wiki_cn_cased", "openwebtext_ccnews_stories_books_cased")


def add_original_args(parser: argparse.ArgumentParser) -> None:
    """The original `get_argparser` flags that have no counterpart above (see docs/original_commands.md)."""
    g = parser.add_argument_group("flags of the original run_pretraining_distillation_hvd.py")
    a = g.add_argument
    a("--teacher_model", default=None,
      help="a checkpoint path, or a GluonNLP model-zoo name (roberta_24_1024_16, …) whose weights "
           "--teacher_ckpt_dir holds")
    a("--teacher_ckpt_dir", default=None, help="directory holding the teacher's .params (the first one is read)")
    a("--num_buckets", type=int, default=None, help="accepted: batches here are padded to their longest record")
    a("--use_avg_len", action="store_true",
      help="accepted: --batch_size stays a number of records here (not of tokens)")
    a("--batch_size_eval", type=int, default=None, help="accepted: evaluation uses --batch_size here")
    a("--dataset_name", choices=ORIGINAL_DATASETS, default=None,
      help="the original's vocabulary name; the shards already hold token ids")
    a("--pretrained", action="store_true", help="refused: no model-zoo download; see the message")
    a("--start_step", type=int, default=0,
      help="resume from the checkpoint of this step (the newest in --ckpt_dir's checkpoints/)")
    a("--verbose", action="store_true", help="debug logging")
    a("--profile", default=None, help="refused (MXNet's profiler); see the message")
    a("--cpu_only", action="store_true", help="compute on the CPU even when a GPU is visible")


def apply_original_args(args: argparse.Namespace) -> list[str]:
    """Fold the original's flags into ours. Raises ValueError, saying what to pass instead, for those that cannot
    apply; returns the notes to log for those accepted without an effect here."""
    notes: list[str] = []
    if args.pretrained:
        raise ValueError("--pretrained: the original downloads the student's weights from GluonNLP's model zoo and "
                         "nothing downloads here; the released Bort is fetched by `bort fetch "
                         "s3://alexa-saif-bort/bort.params model/`, and the student starts from a random "
                         "initialisation (--student-init teacher copies the teacher's layers)")
    if args.profile is not None:
        raise ValueError(f"--profile {args.profile}: MXNet's profiler does not exist here; profile with "
                         f"`python -m cProfile -o {args.profile} run_pretraining_distillation.py …` instead")
    if args.teacher_model is not None or args.teacher_ckpt_dir is not None:
        if args.teacher is not None:
            raise ValueError("give the teacher once: --teacher, or the original's --teacher_model/--teacher_ckpt_dir")
        _apply_original_teacher(args, notes)
    if args.start_step:
        args.resume = True
        notes.append(f"--start_step {args.start_step}: resuming from the newest checkpoint in "
                     f"{args.output_dir}/checkpoints")
    if args.cpu_only:
        # Hides the GPUs from torch before anything asks for CUDA (the device is chosen at launch).
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    if args.num_buckets is not None:
        notes.append("--num_buckets: no length buckets here; each batch is padded to its longest record")
    if args.use_avg_len:
        notes.append(f"--use_avg_len: --batch_size {args.batch_size} is a number of records per rank here, not "
                     "of tokens; divide the original's value by the average record length to match it")
    if args.batch_size_eval is not None and args.batch_size_eval != args.batch_size:
        notes.append(f"--batch_size_eval {args.batch_size_eval}: evaluation uses --batch_size "
                     f"{args.batch_size} here (it changes no result, only memory)")
    if args.dataset_name is not None:
        notes.append(f"--dataset_name {args.dataset_name}: the shards already hold token ids; nothing is loaded")
    return notes


def _apply_original_teacher(args: argparse.Namespace, notes: list[str]) -> None:
    """--teacher_model NAME [--teacher_ckpt_dir DIR] as the original reads them: a zoo name is an architecture
    whose weights are the first .params file in DIR; a path is a checkpoint."""
    name = args.teacher_model
    if name is not None and name not in ZOO_TEACHERS:
        if args.teacher_ckpt_dir is not None or not Path(name).exists():
            raise ValueError(f"--teacher_model {name!r} is neither a checkpoint on disk nor a GluonNLP model-zoo "
                             f"name known here ({', '.join(ZOO_TEACHERS)})")
        args.teacher = name
        return
    if args.teacher_ckpt_dir is None:
        raise ValueError(f"--teacher_model {name} is a GluonNLP model-zoo name and nothing downloads here: pass "
                         f"--teacher_ckpt_dir DIR holding its .params (as the original accepts), or --teacher with "
                         f"a {ZOO_TEACHERS[name]} checkpoint (a Hugging Face or native directory, a .params file; "
                         f"`bort fetch s3://BUCKET/KEY DIR` gets one from S3)")
    directory = Path(args.teacher_ckpt_dir)
    params = sorted(directory.glob("*.params")) if directory.is_dir() else []
    if not params:
        raise ValueError(f"--teacher_ckpt_dir {directory}: no .params file in it (the original reads the first "
                         f"one); pass the directory of the teacher's Gluon .params, or --teacher with any checkpoint")
    args.teacher = str(params[0])
    if args.teacher_config is None:
        args.teacher_config = ZOO_TEACHERS.get(name or "roberta_24_1024_16")
    notes.append(f"teacher: {args.teacher} as {args.teacher_config}")


_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def settings_from_args(args: argparse.Namespace) -> DistillSettings:
    """The flags as settings; ranges and cross-field rules are checked there (`DistillSettings`), once for the
    command line and for Python callers."""
    values = {f: getattr(args, f) for f in DistillSettings.__dataclass_fields__ if hasattr(args, f)}
    values["train"] = [p for item in args.train for p in item.split(",") if p]
    values["test"] = [p for item in args.test for p in item.split(",") if p]
    values["precision"] = _PRECISION.get(args.precision, args.precision)
    values["allow_setting_change"] = parse_allowed(args.allow_setting_change)
    return DistillSettings(**values)


def run(args: argparse.Namespace) -> int:
    for note in apply_original_args(args):
        logging.getLogger(__name__).info("%s", note)
    summary = DistillationRecipe(settings_from_args(args)).run()
    if summary.get("rank", 0) == 0:
        print(json.dumps(summary))
    return 0


# Reported in one line, as a bad setting is (besides bort.cli.USER_ERRORS).
USER_ERRORS = (NonFiniteLossError,)


def main(argv: list[str] | None = None, launcher: str | None = None) -> int:
    parser = script_parser(None, "Distil a student BERT from a teacher on pretraining shards.", add_args)
    args = parser.parse_args(argv)
    if launcher is not None and args.launcher == "auto":
        args.launcher = launcher
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting(parser.prog, run, args, USER_ERRORS)
