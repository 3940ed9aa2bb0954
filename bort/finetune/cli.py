"""Command-line flags of `run_finetune.py` / `bort finetune`. Every flag of the original `finetune_bort.py` is
accepted too, with its meaning (`--task_name`, `--pretrained_parameters`, `--ramp_up_epochs`, `--gpu`, …); the
table in docs/original_commands.md says what each one becomes here."""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..cli import add_alias, add_no_progress, run_reporting, script_parser
from ..train.metrics import REPORT_TO
from .runner import FinetuneRecipe, FinetuneSettings, resolve_task_dir
from .trainer import HParams

logger = logging.getLogger(__name__)

# The original's `--dataset` choices: the vocabulary GluonNLP downloads. Nothing downloads here; the vocabulary
# comes from the model's directory or --tokenizer.
ORIGINAL_DATASETS = ("book_corpus_wiki_en_uncased", "book_corpus_wiki_en_cased",
                     "openwebtext_book_corpus_wiki_en_uncased", "wiki_multilingual_uncased",
                     "wiki_multilingual_cased", "wiki_cn_cased", "openwebtext_ccnews_stories_books_cased")
FETCH_BORT = "bort fetch s3://alexa-saif-bort/bort.params model/"


def _original_bool(text: str) -> bool:
    """The original declares `--no_distributed` and `--use_scheduler` with `type=bool`: any non-empty string
    (even "False") is true. Kept, so that a command line means what it meant there."""
    return bool(text)


def add_args(parser: argparse.ArgumentParser) -> None:
    h, s = HParams(), FinetuneSettings(task="", model="")
    a = parser.add_argument
    a("--task", "--task_name", dest="task", required=True,
      help="GLUE/SuperGLUE/RACE task name (case-insensitive), e.g. SST-2, MNLI-mm, BoolQ, ReCoRD, RACE-high; "
           "the original's (SST, SuperGLUERTE, AXb, RACE-H, …) and Hugging Face datasets' (sst2, "
           "super_glue/boolq, …) names too")
    a("--model", "--pretrained_parameters", dest="model", default=None,
      help="pretrained checkpoint: anything load_pretrained reads (native/HF directory, Gluon .params, s3://…)")
    a("--model_parameters", dest="model_parameters", default=None,
      help="the original's fine-tuned model to start from (any load_pretrained path); wins over --model")
    a("--data-dir", "--data_dir", dest="data_dir", default=s.data_dir,
      help="the task's directory, or a root holding glue/<Task>, superglue/<Task>, race/RACE; the original's "
           "locations ($MXNET_HOME or ~/.mxnet)/datasets/race and …/superglue_<task> are searched after it")
    a("--tokenizer", default=None, help="vocabulary file or directory (default: the model directory, or the "
                                        "directory of a .params file)")
    a("--output-dir", "--output_dir", dest="output_dir", default=s.output_dir)
    add_alias(parser, a("--model-config", dest="config", default=None, metavar="JSON",
                        help="JSON object of config fields overriding the checkpoint's, e.g. "
                             "'{\"attention\": \"bigbird\"}'"), "--config")
    a("--lr", type=float, default=h.lr)
    a("--batch-size", "--batch_size", dest="batch_size", type=int, default=h.batch_size)
    a("--epochs", type=float, default=h.epochs)
    a("--warmup-ratio", "--warmup_ratio", dest="warmup_ratio", type=float, default=h.warmup_ratio)
    a("--weight-decay", "--weight_decay", "--wd", dest="weight_decay", type=float, default=h.weight_decay,
      help="decoupled weight decay (the original's default 110 is multiplied by the learning rate)")
    a("--optimizer", choices=("bertadam", "adamw"), default=h.optimizer)
    add_alias(parser, a("--adam-epsilon", dest="eps", type=float, default=h.eps, help="Adam's ε"),
              "--eps", "--epsilon")  # --epsilon: the original finetune_bort.py's name
    a("--clip-norm", dest="clip_norm", type=float, default=h.clip_norm, help="gradient norm clip (0: off)")
    a("--seed", type=int, default=h.seed)
    a("--max-length", "--max_len", dest="max_length", type=int, default=s.max_length)
    a("--max-steps", "--training_steps", dest="max_steps", type=int, default=None,
      help="train this many steps (the schedule spans them; epochs are then ignored, as in the original)")
    a("--eval-interval", dest="eval_interval", type=int, default=0, help="steps between dev evaluations "
      "(0: once an epoch)")
    a("--eval-batch-size", "--dev_batch_size", dest="eval_batch_size", type=int, default=s.eval_batch_size)
    a("--log-interval", "--log_interval", dest="log_interval", type=int, default=s.log_interval)
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
    a("--report-to", dest="report_to", choices=REPORT_TO, default="none",
      help="also write the metrics as TensorBoard events in OUTPUT_DIR/tensorboard (needs pip install tensorboard)")
    add_no_progress(parser)
    add_original_args(parser)


def add_original_args(parser: argparse.ArgumentParser) -> None:
    """The original `finetune_bort.py` flags that have no counterpart above (see docs/original_commands.md)."""
    g = parser.add_argument_group("flags of the original finetune_bort.py")
    a = g.add_argument
    a("--ramp_up_epochs", type=int, default=None,
      help="epochs the learning-rate schedule spans; must equal --epochs here")
    a("--init", choices=("gaussian", "uniform", "orthogonal", "xavier"), default=None,
      help="the original's classifier initialisation; the head here is normal(0, initializer_range)")
    a("--prob", type=float, default=None, help="scale of --init (with --init gaussian: the head's std)")
    a("--dropout", type=float, default=None, help="dropout before the classifier (config classifier_dropout)")
    a("--momentum", type=float, default=None, help="unused, as in the original (BERTAdam has no momentum)")
    a("--gpu", type=int, default=None, help="the original's device; None or 999 mean the CPU, as there")
    a("--use_scheduler", type=_original_bool, default=True,
      help="warmup + linear decay (the original's type=bool: any non-empty value is true)")
    a("--accumulate", type=int, default=None,
      help="gradient accumulation: the effective batch --batch_size × N is used as the batch")
    a("--no_distributed", type=_original_bool, default=False, help="accepted: fine-tuning runs one process")
    a("--dataset", choices=ORIGINAL_DATASETS, default=None,
      help="the original's vocabulary name; the vocabulary comes from the model directory or --tokenizer")
    a("--only_inference", action="store_true",
      help="no training: predict the dev split (metrics) and the test split (submission/) with the fine-tuned "
           "--model, as `bort predict` does, with --precision/--backend/--threads and --batch-size")
    from ..cli import add_predict_options

    add_predict_options(g)
    a("--dtype", choices=("float32", "float16"), default="float32",
      help="float32 (float16 is refused: fine-tuning runs in float32)")
    a("--multirc_test_location", default=None, help="the MultiRC test.jsonl; its directory is searched for data")
    a("--record_test_location", default=None, help="the ReCoRD test.jsonl; its directory is searched for data")
    a("--record_dev_location", default=None, help="the ReCoRD val.jsonl; its directory is searched for data")
    a("--race_dataset_location", default=None, help="the RACE directory (train/dev/test/{high,middle})")


def apply_original_args(args: argparse.Namespace) -> list[str]:
    """Fold the original's flags into ours. Raises ValueError, saying what to pass instead, for those that cannot
    apply; returns the notes to log for those accepted without an effect here."""
    notes: list[str] = []
    if args.model_parameters:
        args.model = args.model_parameters
    if not args.model:
        raise ValueError("no model: pass --model (or the original's --pretrained_parameters) with a checkpoint; "
                         f"the released Bort weights are fetched by `{FETCH_BORT}` (or `aws s3 cp "
                         "s3://alexa-saif-bort/bort.params model/`)")
    if args.gpu is not None and args.gpu != 999:
        raise ValueError(f"--gpu {args.gpu}: fine-tuning here runs on the CPU; drop --gpu or pass --gpu 999 (the "
                         "original's value for the CPU)")
    if args.dtype == "float16":
        raise ValueError("--dtype float16: fine-tuning here runs in float32; drop --dtype (or pass float32)")
    if not args.use_scheduler:
        raise ValueError("--use_scheduler '' (a constant learning rate) is not available here: the schedule is "
                         "warmup then linear decay; pass --warmup_ratio 0 for no warmup")
    if args.ramp_up_epochs is not None and args.ramp_up_epochs != args.epochs and args.max_steps is None:
        raise ValueError(f"--ramp_up_epochs {args.ramp_up_epochs} differs from --epochs {args.epochs:g}: the "
                         "schedule here spans the whole run; pass --epochs equal to --ramp_up_epochs (and "
                         "--max-steps to stop earlier), or --training_steps")
    if args.accumulate and args.accumulate > 1:
        notes.append(f"--accumulate {args.accumulate}: training with batches of --batch_size {args.batch_size} "
                     f"× {args.accumulate} = {args.batch_size * args.accumulate} (the same effective batch)")
        args.batch_size *= args.accumulate
    if args.dropout is not None:
        config = json.loads(args.config) if args.config else {}
        if isinstance(config, dict):
            args.config = json.dumps({**config, "classifier_dropout": args.dropout})
    if args.init is not None or args.prob is not None:
        notes.append("--init/--prob: the new classifier head is initialised normal(0, initializer_range) here")
    if args.momentum is not None:
        notes.append("--momentum: unused, as in the original (BERTAdam has no momentum)")
    if args.no_distributed:
        notes.append("--no_distributed: fine-tuning runs in one process here anyway")
    if args.dataset is not None:
        notes.append(f"--dataset {args.dataset}: the vocabulary is the model directory's (or --tokenizer's)")
    if args.tokenizer is None and str(args.model).endswith(".params") and Path(args.model).is_file():
        args.tokenizer = _vocabulary_beside(Path(args.model))
    return notes


_VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "encoder.json", "vocab.txt")


def _vocabulary_beside(params: Path) -> str:
    """A Gluon `.params` file holds weights only: its vocabulary is the one in the same directory, else the
    released Bort's (shipped with the package; a model of another vocabulary size is refused by the runner,
    which compares the two before training)."""
    if any((params.parent / name).is_file() for name in _VOCABULARY_FILES):
        return str(params.parent)
    from ..tokenization import BORT_VOCABULARY

    logger.info("%s: no vocabulary beside it (%s); using the released Bort's, %s", params,
                ", ".join(_VOCABULARY_FILES), BORT_VOCABULARY)
    return str(BORT_VOCABULARY)


def original_data_dirs(task_name: str, args: argparse.Namespace) -> list[Path]:
    """Where the original looked for the task's data, in its order after --data-dir: the locations given by its
    flags, then GluonNLP's dataset directory ($MXNET_HOME, default ~/.mxnet, /datasets/…)."""
    from ..data.tasks import get_task
    from ..data.tasks.race import RACE_TASKS
    from ..data.tasks.superglue import SUPERGLUE_TASKS

    task = get_task(task_name)
    found: list[Path] = []
    if args.race_dataset_location and task.name in RACE_TASKS:
        found.append(Path(args.race_dataset_location).expanduser())
    for location in (args.multirc_test_location, args.record_dev_location, args.record_test_location):
        if location:
            found.append(Path(location).expanduser().parent)
    datasets = Path(os.environ.get("MXNET_HOME", "~/.mxnet")).expanduser() / "datasets"
    if task.name in RACE_TASKS:
        found.append(datasets / "race")
    elif task.name in SUPERGLUE_TASKS:
        found.append(datasets / f"superglue_{SUPERGLUE_TASKS[task.name].subdir.lower()}")
    return found


def _has_task_data(task_name: str, directory: str | Path) -> bool:
    from ..data.tasks import get_task

    task = get_task(task_name)
    return any(p.exists() for p in task.files(resolve_task_dir(task, directory), "dev"))


def _choose_data_dir(args: argparse.Namespace) -> None:
    """Keep --data-dir when it holds the task; otherwise the first of the original's locations that does."""
    if _has_task_data(args.task, args.data_dir):
        return
    for candidate in original_data_dirs(args.task, args):
        if _has_task_data(args.task, candidate):
            logger.info("no %s data under %s; using %s (the original's location)", args.task, args.data_dir,
                        candidate)
            args.data_dir = str(candidate)
            return


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
                            eval_batch_size=args.eval_batch_size, dev_split=args.dev_split,
                            split_seed=args.split_seed, skip_bad_rows=args.skip_bad_rows,
                            dam_lambda=args.dam_lambda, config=config, progress=args.progress,
                            log_interval=args.log_interval, overwrite=args.overwrite, report_to=args.report_to)


def run(args: argparse.Namespace) -> int:
    for note in apply_original_args(args):
        logger.info("%s", note)
    _choose_data_dir(args)
    if args.only_inference:
        return run_inference(args)
    summary = FinetuneRecipe(settings_from_args(args)).run()
    print(json.dumps({k: summary[k] for k in ("task", "dev", "best_step", "steps", "train_seconds",
                                              "submission")}, sort_keys=True))
    return 0


def run_inference(args: argparse.Namespace) -> int:
    """`--only_inference`: `bort predict` on the dev split, then on the test split when the task directory has
    one (its leaderboard file in OUTPUT/submission/), with the model's own tokenizer unless --tokenizer."""
    from ..data.tasks import get_task
    from ..predict import predict_task, report

    task = get_task(args.task)
    task_dir = resolve_task_dir(task, args.data_dir)
    splits = [split for split in ("dev", "test")
              if split in task.splits and all(p.exists() for p in task.files(task_dir, split))]
    if not splits:
        raise FileNotFoundError(f"--only_inference: no dev or test file of {task.name} under {args.data_dir}")
    for split in splits:
        summary = predict_task(args.model, args.task, args.data_dir, split, precision=args.precision,
                               backend=args.backend, batch_size=args.batch_size, threads=args.threads,
                               tokenizer=args.tokenizer, skip_bad_rows=args.skip_bad_rows, progress=args.progress,
                               output_dir=str(Path(args.output_dir) / "submission") if split == "test" else None)
        report(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = script_parser("run_finetune.py", __doc__, add_args)
    return run_reporting(parser.prog, run, parser.parse_args(argv))


# --- bort grid ------------------------------------------------------------------------------------------------
def add_grid_args(parser: argparse.ArgumentParser) -> None:
    from .grid import BACKENDS, GridSettings

    s = GridSettings(grid="")
    parser.add_argument("grid", help="grid file (JSON; see bort.finetune.grid)")
    parser.add_argument("--output-dir", default=s.output_dir)
    parser.add_argument("--workers", type=int, default=s.workers, help=s.help_of("workers"))
    parser.add_argument("--backend", choices=BACKENDS, default=s.backend)
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's best/ checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the finished trials and results of an earlier grid in --output-dir (a rerun "
                             "of the same grid resumes without it; one with other settings is refused)")
    add_no_progress(parser)


def run_grid_cli(args: argparse.Namespace) -> int:
    from .grid import GridRecipe, GridSettings

    settings = GridSettings(grid=args.grid, output_dir=args.output_dir, workers=args.workers, backend=args.backend,
                            progress=args.progress, overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints)
    summary = GridRecipe(settings).run()
    print(json.dumps({"trials": summary["trials"], "best": summary["best"]}, sort_keys=True))
    return 0


# --- bort agora -----------------------------------------------------------------------------------------------
def add_agora_args(parser: argparse.ArgumentParser) -> None:
    from .agora_recipe import GENERATORS, AgoraSettings

    s = AgoraSettings(grid="grid.json", reference="reference")  # its defaults and help are what --help shows
    parser.add_argument("grid", help=s.help_of("grid"))
    parser.add_argument("--reference", required=True,
                        help="fine-tuned reference model that labels generated points (any load_pretrained path)")
    parser.add_argument("--reference-tokenizer", default=None, help=s.help_of("reference_tokenizer"))
    parser.add_argument("--generator", choices=GENERATORS, default=s.generator,
                        help="token-level perturbations, or infilling by --mlm-teacher's masked-LM head")
    parser.add_argument("--mlm-teacher", default=None, help="checkpoint with an MLM head for --generator mlm")
    parser.add_argument("--per-error", type=int, default=s.per_error, help=s.help_of("per_error"))
    parser.add_argument("--max-new-per-round", type=int, default=s.max_new_per_round)
    parser.add_argument("--replay", type=int, default=s.replay, help=s.help_of("replay"))
    parser.add_argument("--holdout", type=int, default=s.holdout, help=s.help_of("holdout"))
    parser.add_argument("--output-dir", default=s.output_dir)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run's outputs in --output-dir (rounds.jsonl, agora.json, "
                             "generated.jsonl, agora.png, best/; other files are kept) instead of refusing it")


def agora_settings_from_args(args: argparse.Namespace):
    from .agora_recipe import AgoraSettings

    return AgoraSettings(grid=args.grid, reference=args.reference, reference_tokenizer=args.reference_tokenizer,
                         generator=args.generator, mlm_teacher=args.mlm_teacher, per_error=args.per_error,
                         max_new_per_round=args.max_new_per_round, replay=args.replay, holdout=args.holdout,
                         output_dir=args.output_dir, overwrite=args.overwrite)


def run_agora_cli(args: argparse.Namespace) -> int:
    from .agora_recipe import AgoraRecipe

    summary = AgoraRecipe(agora_settings_from_args(args)).run()
    print(json.dumps({k: summary[k] for k in ("task", "hparams", "dev", "holdout", "trainings", "added")},
                     sort_keys=True))
    return 0
