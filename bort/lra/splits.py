"""The shape every LRA reader returns: encoded train / dev / test splits (`LRASplits`) of token ids and labels
(`EncodedSplit`).

Kept apart from the readers (`data.py` for ListOps, `text.py`, `retrieval.py`, `image.py`, `pathfinder.py`)
so that they depend on these types and `data.py` depends on them, never the other way round.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

from . import batching

__all__ = ["EncodedSplit", "LRASplits"]


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
