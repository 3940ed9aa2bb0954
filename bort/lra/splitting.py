"""Train / dev / test row indices for LRA data that does not come pre-split.

One file is split by a seeded permutation as ListOps' single file is: the first `test_size` rows of the
shuffle are the test set, the next `dev_size` the dev set, the rest training. Data that has a train and a test
set but no dev set (aclImdb, a directory without dev.tsv) gets its dev set carved from training the same way.
The result depends only on the row count and the seed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import bytes as byte_vocab
from .splits import LRASplits

__all__ = ["seeded_split", "carve_dev", "find_split_files", "split_rows", "byte_splits"]

logger = logging.getLogger(__name__)


def seeded_split(n: int, dev_size: int, test_size: int, seed: int, where: object
                 ) -> tuple[list[int], list[int], list[int]]:
    """(train, dev, test) indices of `n` rows; `where` names the data in the error when they do not fit."""
    if dev_size < 1 or test_size < 1 or dev_size + test_size >= n:
        raise ValueError(f"{where}: {n} rows cannot give dev_size {dev_size} and test_size {test_size} and leave "
                         "training rows (both must be >= 1; set --dev-size / --test-size)")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return order[test_size + dev_size:], order[test_size:test_size + dev_size], order[:test_size]


def carve_dev(n: int, dev_size: int, seed: int, where: object) -> tuple[list[int], list[int]]:
    """(train, dev) indices: `dev_size` of `n` training rows, chosen by a seeded permutation, become the dev set."""
    if dev_size < 1 or dev_size >= n:
        raise ValueError(f"{where}: {n} training rows cannot give a dev set of {dev_size} and leave training rows "
                         "(set --dev-size)")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return order[dev_size:], order[:dev_size]


def find_split_files(directory: Path, names: dict[str, str]) -> dict[str, Path] | None:
    """The split files named in `names` ({"train": ..., "dev": ..., "test": ...}) that exist in `directory`;
    None when neither the train nor the test file is there (not this layout). A layout that is only partly
    present raises FileNotFoundError naming what is missing; the dev file alone is optional."""
    found = {split: directory / name for split, name in names.items() if (directory / name).is_file()}
    if "train" not in found and "test" not in found:
        return None
    missing = [str(directory / names[s]) for s in ("train", "test") if s not in found]
    if missing:
        raise FileNotFoundError(f"{directory}: has {', '.join(p.name for p in found.values())} but lacks "
                                f"{', '.join(missing)}; a data directory needs the train and test files "
                                f"({', '.join(names.values())}; the dev file is optional)")
    return found


def split_rows(loaded: Mapping[str, Any] | None, rows: Any, dev_size: int, test_size: int, seed: int,
               source: dict[str, Any]) -> tuple[dict[str, list], list]:
    """(train/dev/test row lists, skipped rows) of data read either as split files (`loaded`: split name →
    `LabelledRows`; a missing dev set is carved from train, noted in `source`) or as one file (`rows`, split
    by `seeded_split`)."""
    if loaded is not None:
        parts = {name: list(part) for name, part in loaded.items()}
        bad = [b for part in loaded.values() for b in part.bad_rows]
        if "dev" not in parts:
            train_idx, dev_idx = carve_dev(len(parts["train"]), dev_size, seed, loaded["train"].path)
            parts["train"], parts["dev"] = [parts["train"][i] for i in train_idx], [parts["train"][i] for i in dev_idx]
            source["dev"] = f"{dev_size} training rows chosen by split_seed {seed}"
        return parts, bad
    train_idx, dev_idx, test_idx = seeded_split(len(rows), dev_size, test_size, seed, rows.path)
    parts = {"train": [rows[i] for i in train_idx], "dev": [rows[i] for i in dev_idx],
             "test": [rows[i] for i in test_idx]}
    return parts, rows.bad_rows


def byte_splits(task: str, parts: Mapping[str, Sequence[Any]], encode: Callable[[str, Sequence[Any], int], Any],
                max_length: int, source: dict[str, Any], bad: list) -> LRASplits:
    """The `LRASplits` of a byte-level task: every split through `encode(name, rows, max_length) → (split,
    truncated count)`, truncation counted and logged, the class count taken from the labels."""
    encoded, truncated = {}, 0
    for name in ("train", "dev", "test"):
        encoded[name], cut = encode(name, parts[name], max_length)
        truncated += cut
    if truncated:
        logger.warning("LRA %s: %d document(s) longer than %d bytes were truncated", task, truncated, max_length)
    source["sizes"] = {name: len(split) for name, split in encoded.items()}
    source["vocabulary"] = "UTF-8 bytes (id = byte + 1, padding 0)"
    labels = [y for split in encoded.values() for y in split.labels]
    return LRASplits(encoded["train"], encoded["dev"], encoded["test"], byte_vocab.VOCAB, byte_vocab.PAD_ID,
                     source, truncated, bad, num_classes=max(2, max(labels) + 1))
