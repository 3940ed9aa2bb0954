"""The Long Range Arena tasks: model shape, training schedule preset and default attention settings per task.

Every LRA task uses the same small encoder (2 layers, width 64, FFN 128, 2 heads, pre-LN, mean pooling) and
differs in input length, class count and schedule. The schedules are those of the YOSO paper's LRA runs
(its repository's `LRA/models/*/config.json`): AdamW without weight decay, linear warmup then linear decay.
Every task has a reader (`data.READERS`, the same names); Text (`text.py`) and Retrieval (`retrieval.py`) read
UTF-8 bytes.

Two recipes train these presets (`RECIPES`, `bort lra --recipe`):

- "bort" (the default, this project's): linear warmup from ~0 then linear decay, Adam β1 fixed at 0.9, mean
  pooling over the real tokens only, no dropout between the FFN projections, a position table of the task's
  length;
- "paper" (the YOSO paper's LRA code): PyTorch's `OneCycleLR` over the same peak rate, warmup fraction and
  steps (lr starts at peak/25 — 4e-6 for ListOps — peaks at the end of warmup, decays linearly to peak/25e4;
  Adam's β1 cycles 0.95 → 0.85 at the peak → 0.95), dropout between the two FFN Linear layers, mean pooling
  that divides by every position of the original's fixed padded length (its position table), a position
  table rounded up to a power of two (2,048 rows for ListOps), and the original's attention settings per
  task (`PAPER_ATTENTION`: `yoso-v1-32`, `yoso-v2-16`, `yoso-e`). Both evaluate on the whole dev and test
  splits (the original's dev pass reads `num_eval_steps` full batches, its test pass drops the last partial
  batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainPreset:
    """A training schedule: batch size, peak learning rate, warmup and total optimiser steps, decoupled weight
    decay, and the number of steps between dev evaluations."""

    batch_size: int
    lr: float
    warmup_steps: int
    total_steps: int
    weight_decay: float = 0.0
    eval_interval: int = 50

    @property
    def warmup_ratio(self) -> float:
        """Warmup as a fraction of training, kept when a run is shortened or lengthened with max_steps."""
        return self.warmup_steps / self.total_steps


@dataclass(frozen=True)
class LRATask:
    """One LRA task: classes, the longest input the model takes, its schedule preset, attention parameters
    applied when the user gives none for that mechanism, and what its reader expects as data (`data_help`; the
    reader itself is `data.READERS[name]`)."""

    name: str
    num_classes: int
    max_length: int
    train: TrainPreset
    attention_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_help: str = ""


def _yoso(tau: int) -> dict[str, dict[str, Any]]:
    # The YOSO paper's hash length per task (longer inputs, more bits); 32 hashes everywhere.
    params = {"hash_code_len": tau, "num_hash": 32}
    return {"yoso": params, "yoso_e": {"hash_code_len": tau}}


@dataclass(frozen=True)
class Recipe:
    """How a task's preset is trained and what the model around the encoder looks like (module docstring).

    `schedule`: "linear" (`bort.train.schedule`, β1 fixed) or "one_cycle" (`torch.optim.lr_scheduler.OneCycleLR`
    with its defaults, which also cycles Adam's β1 between 0.95 and 0.85); `pooling`: an `LRAClassifier`
    pooling; `ffn_dropout`: dropout between the FFN projections (the hidden dropout's probability) or not;
    `pow2_positions`: the position table rounded up to a power of two; `paper_attention`: registry names
    (dense, yoso, yoso_e) take the `PAPER_ATTENTION` settings."""

    name: str
    schedule: str
    pooling: str
    ffn_dropout: bool
    pow2_positions: bool
    paper_attention: bool


RECIPES: dict[str, Recipe] = {
    "bort": Recipe("bort", "linear", "mean", False, False, False),
    "paper": Recipe("paper", "one_cycle", "mean_padded", True, True, True),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name lists the valid ones."""
    recipe = RECIPES.get(name) if isinstance(name, str) else None
    if recipe is None:
        raise ValueError(f"unknown LRA recipe {name!r}; valid: {', '.join(RECIPES)}")
    return recipe


def position_rows(max_length: int, recipe: Recipe) -> int:
    """Rows of the position table: the task's length, or (paper recipe) the next power of two, as the original
    sizes it (2000 → 2048, 4000 → 4096, 1024 → 1024)."""
    return 2 ** math.ceil(math.log2(max_length)) if recipe.pow2_positions else max_length


# The YOSO paper's LRA attention configurations, by the names of its `LRA/models/<name>/config.json`: name →
# (registered mechanism, parameters for a task's hash length τ). τ per task is the one in `TASKS` (ListOps
# 11, Text and Retrieval 12, Image and Pathfinder 10).
# - yoso-v1-32: 32 hashes of the original's fast Hadamard hash (`use_fast_hash: true`), the LSH backward
#   (`n2_backward: false`);
# - yoso-v2-16: 16 fast Hadamard hashes, with v2's backward: the exact derivative of the kernel summed over the
#   colliding pairs only (`backward: exact_colliding`);
# - yoso-e: the expectation, with the paper's τ/2 backward.
PAPER_ATTENTION: dict[str, tuple[str, dict[str, Any]]] = {
    "yoso-v1-32": ("yoso", {"num_hash": 32, "hashing": "fast_hadamard", "backward": "lsh"}),
    "yoso-v2-16": ("yoso", {"num_hash": 16, "hashing": "fast_hadamard", "backward": "exact_colliding"}),
    "yoso-e": ("yoso_e", {"backward": "lsh"}),
}
# A registry name under the paper recipe takes this configuration.
_PAPER_DEFAULT = {"yoso": "yoso-v1-32", "yoso_e": "yoso-e"}


TASKS: dict[str, LRATask] = {
    "listops": LRATask(
        "listops", 10, 2000, TrainPreset(32, 1e-4, 1000, 5000, 0.0, 50), _yoso(11),
        data_help="a TSV file of label<TAB>expression rows (the original ListOps release), LRA's "
                  "Source<TAB>Target layout, or a directory holding LRA's basic_train.tsv, basic_val.tsv and "
                  "basic_test.tsv"),
    "text": LRATask(
        "text", 2, 4000, TrainPreset(32, 1e-4, 8000, 20000, 0.0, 500), _yoso(12),
        data_help="a TSV file whose header names the text and label columns (e.g. GLUE SST-2's sentence<TAB>label) "
                  "split into train/dev/test, a directory holding train.tsv and test.tsv (dev.tsv optional), or "
                  "the aclImdb directory (train/pos, train/neg, test/pos, test/neg of .txt reviews)"),
    "retrieval": LRATask(
        "retrieval", 2, 4000, TrainPreset(32, 1e-4, 800, 30000, 0.0, 300), _yoso(12),
        data_help="LRA's AAN directory (new_aan_pairs.train.tsv, .eval.tsv, .test.tsv of label<TAB>id1<TAB>id2<TAB>"
                  "text1<TAB>text2 rows), one such file or a TSV whose header names a label and two text columns "
                  "(e.g. GLUE MRPC's dev.tsv) split into train/dev/test, or a directory holding train.tsv and "
                  "test.tsv (dev.tsv optional)"),
    "image": LRATask(
        "image", 10, 1024, TrainPreset(256, 1e-4, 175, 35000, 0.0, 175), _yoso(10),
        data_help="CIFAR-10's python batches (the cifar-10-batches-py directory with data_batch_1..5 and test_batch, "
                  "its parent, or cifar-10-python.tar.gz), or `digits` for scikit-learn's bundled 8x8 digits "
                  "(offline, 64 pixels)"),
    "pathfinder32": LRATask(
        "pathfinder32", 2, 1024, TrainPreset(256, 1e-4, 312, 62400, 0.0, 312), _yoso(10),
        data_help="a Pathfinder difficulty directory in LRA's layout (imgs/<k>/sample_<i>.png and metadata/<k>.npy, "
                  "e.g. lra_release/pathfinder32/curv_contour_length_14), or a directory holding pathfinder32/ or "
                  "curv_contour_length_14/ (written by `bort lra generate-pathfinder`)"),
}


def resolve_attention(task: LRATask, attention: str, recipe: Recipe
                      ) -> tuple[str, dict[str, Any] | None]:
    """(registered mechanism, default parameters or None) for `attention` on `task`: a `PAPER_ATTENTION` name
    under any recipe; a registry name takes the paper's settings under the paper recipe, else the task's
    `attention_defaults` (None: the mechanism's own defaults)."""
    label = attention if attention in PAPER_ATTENTION else (
        _PAPER_DEFAULT.get(attention) if recipe.paper_attention else None)
    if label is not None:
        mechanism, extra = PAPER_ATTENTION[label]
        tau = task.attention_defaults.get(mechanism, {}).get("hash_code_len")
        return mechanism, ({"hash_code_len": tau} if tau is not None else {}) | extra
    params = task.attention_defaults.get(attention)
    return attention, dict(params) if params is not None else None


def get_task(name: str) -> LRATask:
    """The task called `name`; an unknown name lists the known ones."""
    task = TASKS.get(name.lower())
    if task is None:
        raise ValueError(f"unknown LRA task {name!r}; known tasks: {', '.join(TASKS)}")
    return task
