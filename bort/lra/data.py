"""An LRA task's data as encoded train / dev / test splits.

ListOps comes either as LRA's three files (`basic_train.tsv`, `basic_val.tsv`, `basic_test.tsv` in one
directory) or as one file of labelled rows (the original release, e.g. the 8,000 rows in the shared data),
which is split by a seeded permutation: the first `test_size` rows of the shuffle are the test set, the
next `dev_size` the dev set (used to pick the best checkpoint), the rest training (8,000 → 6,400 / 800 / 800
with the defaults). Sequences longer than the model's positions are truncated, as LRA does, and counted.
Text (`text.py`) and Retrieval (`retrieval.py`) have their own readers and return the same `LRASplits`;
Retrieval's splits carry the second document of each pair in `EncodedSplit.pair_ids`.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import batching, listops
from .tasks import LRATask

logger = logging.getLogger(__name__)

LISTOPS_FILES = {"train": "basic_train.tsv", "dev": "basic_val.tsv", "test": "basic_test.tsv"}


@dataclass
class EncodedSplit:
    """Token ids and labels of one split. Pair tasks (Retrieval) also hold the second document of each row in
    `pair_ids`; their model inputs then carry both sides (`batch`)."""

    name: str
    ids: list[list[int]]
    labels: list[int]
    pair_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        if self.pair_ids is None:
            return [len(s) for s in self.ids]
        # Both sides of a batch share one padded width, so a pair costs what its longer side costs.
        return [max(len(a), len(b)) for a, b in zip(self.ids, self.pair_ids)]

    def batch(self, idx: Sequence[int], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
        """Model keyword inputs of rows `idx`: input_ids, attention_mask, labels, and for pairs input_ids2 and
        attention_mask2 (both sides padded to one width, so the encoder can run them as one batch)."""
        sequences = [self.ids[i] for i in idx]
        if self.pair_ids is not None:
            sequences += [self.pair_ids[i] for i in idx]
        ids, mask = batching.collate(sequences, pad_id, multiple)
        inputs = {"input_ids": ids[:len(idx)], "attention_mask": mask[:len(idx)],
                  "labels": torch.tensor([self.labels[i] for i in idx])}
        if self.pair_ids is not None:
            inputs.update(input_ids2=ids[len(idx):], attention_mask2=mask[len(idx):])
        return inputs


@dataclass
class LRASplits:
    """train / dev / test plus where they came from (`source`), truncation count and skipped rows.
    `num_classes` is set when the data decides the class count (a multiclass text file); None: the task's."""

    train: EncodedSplit
    dev: EncodedSplit
    test: EncodedSplit
    vocab: tuple[str, ...]
    pad_id: int
    source: dict[str, Any] = field(default_factory=dict)
    truncated: int = 0
    bad_rows: list[Any] = field(default_factory=list)
    num_classes: int | None = None

    @cached_property
    def digest(self) -> str:
        """SHA-256 of what a model is trained and scored on: the vocabulary and every split's token ids, pair
        ids and labels. Where the files lie is left out, so a moved copy of the data has the same digest and
        an edited file at the same path does not (what resuming a run checks). Computed once per splits
        object (a second or two for LRA-sized ListOps), however many trainers share it."""
        h = hashlib.sha256()
        h.update(repr((self.vocab, self.pad_id, self.num_classes)).encode())
        for split in (self.train, self.dev, self.test):
            h.update(f"{split.name}:{len(split)}:{split.pair_ids is not None}".encode())
            h.update(np.asarray(split.labels, dtype=np.int64).tobytes())
            for rows in (split.ids, split.pair_ids or []):
                # Lengths first, then the concatenated ids: rows stay delimited without one update per row.
                h.update(np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)).tobytes())
                h.update(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64).tobytes())
        return h.hexdigest()


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


def load_splits(task: LRATask, data: str | os.PathLike, **kwargs: Any) -> LRASplits:
    """The encoded splits of `task` read from `data` (a file or directory, as the task expects)."""
    path = Path(data)
    if task.name == "image" and str(data) == "digits":  # scikit-learn's bundled digits, not a path
        from .image import load_image

        return load_image(data, task.max_length, **kwargs)
    if not str(data) or not path.exists():
        raise FileNotFoundError(f"LRA {task.name} data not found: {path}; expected {task.data_help}")
    if task.name == "listops":
        return load_listops(path, task.max_length, **kwargs)
    if task.name == "text":
        from .text import load_text

        return load_text(path, task.max_length, **kwargs)
    if task.name == "retrieval":
        from .retrieval import load_retrieval

        return load_retrieval(path, task.max_length, **kwargs)
    if task.name == "image":
        from .image import load_image

        return load_image(path, task.max_length, **kwargs)
    if task.name == "pathfinder32":
        from .pathfinder import load_pathfinder

        return load_pathfinder(path, task.max_length, **kwargs)
    raise ValueError(f"LRA task {task.name!r} has no data reader yet")
