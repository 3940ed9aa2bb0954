"""An LRA task's data as encoded train / dev / test splits.

ListOps comes either as LRA's three files (`basic_train.tsv`, `basic_val.tsv`, `basic_test.tsv` in one
directory) or as one file of labelled rows (the original release, e.g. the 8,000 rows in the shared data),
which is split by a seeded permutation: the first `test_size` rows of the shuffle are the test set, the
next `dev_size` the dev set (used to pick the best checkpoint), the rest training (8,000 → 6,400 / 800 / 800
with the defaults). Sequences longer than the model's positions are truncated, as LRA does, and counted.
Text (`text.py`), Retrieval (`retrieval.py`), Image (`image.py`) and Pathfinder (`pathfinder.py`) have their
own readers and return the same `LRASplits` (`splits.py`); Retrieval's splits carry the second document of each
pair in `EncodedSplit.pair_ids`. `READERS` maps each task of `tasks.TASKS` to its reader, and `load_splits`
looks a task's reader up there.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import listops
from .image import load_image
from .pathfinder import load_pathfinder
from .retrieval import load_retrieval
from .splits import EncodedSplit, LRASplits
from .tasks import LRATask
from .text import load_text

__all__ = ["EncodedSplit", "LRASplits", "READERS", "load_listops", "load_splits"]

logger = logging.getLogger(__name__)

LISTOPS_FILES = {"train": "basic_train.tsv", "dev": "basic_val.tsv", "test": "basic_test.tsv"}


def _encode(name: str, rows: Sequence[listops.ListOpsRow], max_length: int) -> tuple[EncodedSplit, int]:
    ids, truncated = [], 0
    for row in rows:
        seq = listops.encode(row.expression)
        if len(seq) > max_length:
            seq, truncated = seq[:max_length], truncated + 1
        ids.append(seq)
    return EncodedSplit(name, ids, [row.label for row in rows]), truncated


def load_listops(data: str | os.PathLike, max_length: int, dev_size: int = 800, test_size: int = 800,
                 split_seed: int = 0, skip_bad_rows: bool = False) -> LRASplits:
    """ListOps from LRA's directory of three files or from one file split by `split_seed` (module doc)."""
    path = Path(data)
    if path.is_dir():
        missing = [str(path / f) for f in LISTOPS_FILES.values() if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"ListOps data directory {path} lacks " + ", ".join(missing) + "; expected "
                                    "LRA's basic_train.tsv, basic_val.tsv and basic_test.tsv, or pass one TSV file "
                                    "to split")
        parts = {name: listops.read_listops(path / f, skip_bad_rows) for name, f in LISTOPS_FILES.items()}
        source = {"layout": "lra-directory", "files": {k: str(path / f) for k, f in LISTOPS_FILES.items()}}
    else:
        rows = listops.read_listops(path, skip_bad_rows)  # names the path and the layouts when missing
        if dev_size < 1 or test_size < 1 or dev_size + test_size >= len(rows):
            raise ValueError(f"{path}: {len(rows)} rows cannot give dev_size {dev_size} and test_size {test_size} "
                             "and leave training rows (both must be >= 1)")
        order = np.random.default_rng(split_seed).permutation(len(rows))
        pick = lambda idx: listops.ListOpsData([rows[i] for i in idx], path, rows.layout)  # noqa: E731
        parts = {"test": pick(order[:test_size]), "dev": pick(order[test_size:test_size + dev_size]),
                 "train": pick(order[test_size + dev_size:])}
        parts["train"].bad_rows = rows.bad_rows
        source = {"layout": f"one file ({rows.layout}), split by seeded permutation", "file": str(path),
                  "split_seed": split_seed, "rows": len(rows)}
    encoded, truncated = {}, 0
    for name in ("train", "dev", "test"):
        encoded[name], cut = _encode(name, parts[name], max_length)
        truncated += cut
    if truncated:
        logger.warning("ListOps: %d sequence(s) longer than %d symbols were truncated", truncated, max_length)
    source["sizes"] = {name: len(split) for name, split in encoded.items()}
    bad = [row for part in parts.values() for row in part.bad_rows]
    return LRASplits(encoded["train"], encoded["dev"], encoded["test"], listops.VOCAB, listops.PAD_ID,
                     source, truncated, bad)


# Task name → reader(data, max_length, **options) → LRASplits: one entry per task of `tasks.TASKS`
# (tests/test_lra_tasks.py checks that the two tables name the same tasks).
READERS: dict[str, Callable[..., LRASplits]] = {
    "listops": load_listops,
    "text": load_text,
    "retrieval": load_retrieval,
    "image": load_image,
    "pathfinder32": load_pathfinder,
}


def load_splits(task: LRATask, data: str | os.PathLike, **kwargs: Any) -> LRASplits:
    """The encoded splits of `task` read from `data` (a file or directory, as the task expects)."""
    reader = READERS.get(task.name)
    if reader is None:
        raise ValueError(f"LRA task {task.name!r} has no data reader; readers exist for {', '.join(READERS)}")
    if task.name == "image" and str(data) == "digits":  # scikit-learn's bundled digits, not a path
        return reader(data, task.max_length, **kwargs)
    path = Path(data)
    if not str(data) or not path.exists():
        raise FileNotFoundError(f"LRA {task.name} data not found: {path}; expected {task.data_help}")
    return reader(path, task.max_length, **kwargs)
