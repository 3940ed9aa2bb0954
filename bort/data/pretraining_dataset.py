"""Read pretraining shards (`part-NNN.rec` + `.idx`, or the original Bort's `part-NNN.npz`, see
`bort.data.npz_shards`) back: random access by index, header checks, batching.

    ds = PretrainingDataset("data/train/part-*.rec", expected_vocab_hash=header_of_my_tokenizer)
    batch = collate([ds[i] for i in range(8)], pad_id=ds.header["special_ids"]["pad"])

A shard made with another vocabulary is refused (both hashes named); a truncated shard raises an error
naming the file and byte offset, or with `allow_truncated=True` its intact records are used and the damaged
tail counted in `num_damaged`.

What is checked, and when: the header (record 0) when a shard opens, every field the readers rely on
(`vocab_hash`, `vocab_size`, `special_ids.pad`, `settings.max_seq_length`); each instance when it is read, its
framing, its layout, and that every id is below the header's `vocab_size` and its length at most the header's
`max_seq_length` (a max and a compare per record). Only a damaged *tail* is ever skipped and counted (with
`allow_truncated`): that is what an interrupted copy or a full disk leaves, and the records before it are
sound. Anything else, bad framing inside the file or an id out of the vocabulary's range, is a
`RecordIOError` / `PretrainingDataError` naming the shard, the record and the value: such a record means a
shard made with another vocabulary or corrupted in place, and training on silently thinned data would hide it.
"""
from __future__ import annotations

import bisect
import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

from .instance_format import decode_header, decode_instance
from .recordio import RecordIOError, RecordIOReader, index_path_for, read_index

__all__ = ["PretrainingDataError", "PretrainingShard", "PretrainingDataset", "open_shard", "collate",
           "IGNORE_INDEX"]

IGNORE_INDEX = -100  # the label of padded masked positions (torch's cross-entropy ignore_index)


class PretrainingDataError(ValueError):
    """A shard that is not usable as asked: wrong format or vocabulary, or damaged records."""


def instance_index(path: Path, i: int, n: int) -> int:
    """`i` as a 0-based index into a shard of `n` instances (negative counts from the end, as for a list);
    IndexError naming the shard when it is outside."""
    if not -n <= i < n:
        raise IndexError(f"{path}: instance {i} out of range ({n} instances)")
    return i + n if i < 0 else i


class PretrainingShard:
    """One shard: `header` (record 0, a dict), `len(shard)` instances, `shard[i]` → dict of numpy arrays
    (`input_ids`, `masked_positions`, `masked_ids` int32; `valid_length`, `is_random_next` 0-d).

    `expected_vocab_hash`: refuse a shard made with another vocabulary. `allow_truncated`: use the intact
    records of a damaged shard instead of raising; `num_damaged` says how many index entries were lost.
    """

    def __init__(self, path: str | os.PathLike[str], expected_vocab_hash: str | None = None,
                 allow_truncated: bool = False) -> None:
        self.path = Path(path)
        self.num_damaged = 0
        self._reader, self._offsets = self._open(allow_truncated)
        try:
            if not self._offsets:
                raise PretrainingDataError(f"{self.path}: no intact header record (empty or damaged from the start)")
            try:
                self.header: dict[str, Any] = decode_header(self._reader.read_at(self._offsets[0], 0))
            except RecordIOError:
                raise
            except ValueError as err:
                raise PretrainingDataError(f"{self.path}: header (record 0, byte offset {self._offsets[0]}): "
                                           f"{err}") from None
        except BaseException:
            self._reader.close()
            raise
        # Checked by `decode_header`: present, integers, in range.
        self.vocab_size: int = self.header["vocab_size"]
        self.pad_id: int = self.header["special_ids"]["pad"]
        self.max_seq_length: int = self.header["settings"]["max_seq_length"]
        if expected_vocab_hash is not None and self.header.get("vocab_hash") != expected_vocab_hash:
            raise PretrainingDataError(
                f"{self.path} was made with another vocabulary: its vocab hash is {self.header.get('vocab_hash')}, "
                f"expected {expected_vocab_hash} (tokenizer kind {self.header.get('tokenizer_kind')}, "
                f"{self.header.get('vocab_size')} ids)")

    @property
    def vocab_hash(self) -> str:
        """SHA-256 of the vocabulary the shard was made with (see `instance_format.vocab_hash`)."""
        return self.header["vocab_hash"]

    def _open(self, allow_truncated: bool) -> tuple[RecordIOReader, list[int]]:
        if not self.path.is_file():
            raise FileNotFoundError(f"pretraining shard not found: {self.path}")
        idx = index_path_for(self.path)
        if not allow_truncated:
            try:
                reader = RecordIOReader(self.path, index=True)
            except RecordIOError as err:
                raise RecordIOError(err.path, err.what + " (the shard is damaged or truncated; "
                                    "allow_truncated=True uses its intact records)", err.offset, err.record) from None
            if reader.index is not None:
                return reader, list(reader.index.values())
            return reader, [off for off, _ in reader.records()]  # no .idx: one scan builds the offsets
        reader = RecordIOReader(self.path, index=False)
        if idx.exists():
            offsets = sorted(read_index(idx).values())
            # Damage from a truncation sits at the end: walk back to the last record that reads whole.
            good = len(offsets)
            while good > 0:
                off = offsets[good - 1]
                try:
                    if off < reader.size:
                        reader.read_at(off)
                        break
                except RecordIOError:
                    pass
                good -= 1
            self.num_damaged = len(offsets) - good
            return reader, offsets[:good]
        offsets = []
        try:
            for off, _ in reader.records():
                offsets.append(off)
        except RecordIOError:
            self.num_damaged = 1  # without an index only the partial record itself is known to be lost
        return reader, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = instance_index(self.path, i, len(self))
        payload = self._reader.read_at(self._offsets[i + 1], i + 1)
        try:
            return decode_instance(payload, self.vocab_size, self.max_seq_length)
        except ValueError as err:
            raise PretrainingDataError(f"{self.path}: record {i + 1} at byte offset {self._offsets[i + 1]}: "
                                       f"{err}") from None

    def __repr__(self) -> str:
        return f"PretrainingShard({str(self.path)!r}, {len(self)} instances)"

    def close(self) -> None:
        """Close the file (the shard is unusable afterwards)."""
        self._reader.close()


def open_shard(path: str | os.PathLike[str], expected_vocab_hash: str | None = None, allow_truncated: bool = False,
               vocab: Any = None) -> PretrainingShard:
    """A `.npz` path opens as the original Bort's npz shard (`NpzShard`, the same interface), anything else
    as a `.rec` shard."""
    from .npz_shards import NpzShard, is_npz_path  # here: npz_shards imports this module

    if is_npz_path(path):
        return NpzShard(path, expected_vocab_hash, allow_truncated, vocab)  # type: ignore[return-value]
    return PretrainingShard(path, expected_vocab_hash, allow_truncated)


def _expand(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        for pattern in (os.fspath(item).split(",") if isinstance(item, str) else [os.fspath(item)]):
            pattern = os.path.expanduser(pattern.strip())
            if glob.has_magic(pattern):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    raise FileNotFoundError(f"no pretraining shard matches {pattern!r}")
                out.extend(Path(m) for m in matches)
            elif pattern:
                out.append(Path(pattern))
    if not out:
        raise FileNotFoundError("no pretraining shards given")
    return out


class PretrainingDataset:
    """Several shards as one indexable dataset (a valid `torch.utils.data.Dataset`).

    `paths`: a list of files or globs, or one string (a glob, or comma-separated paths/globs); `.rec` shards
    (ours) and the original Bort's `.npz` shards may be mixed. All shards must share one vocabulary hash, and
    `expected_vocab_hash` when given. `vocab`: the vocabulary of `.npz` shards without a header (see
    `bort.data.npz_shards`); `.rec` shards ignore it.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
                 expected_vocab_hash: str | None = None, allow_truncated: bool = False, vocab: Any = None) -> None:
        self.shards = [open_shard(p, expected_vocab_hash, allow_truncated, vocab) for p in _expand(paths)]
        first = self.shards[0]
        for shard in self.shards[1:]:
            if shard.vocab_hash != first.vocab_hash:
                raise PretrainingDataError(
                    f"shards made with different vocabularies: {first.path} has vocab hash {first.vocab_hash}, "
                    f"{shard.path} has {shard.vocab_hash}")
            # Batches mix shards: the model is built from the first header, so the others must agree with it.
            for attr in ("vocab_size", "pad_id"):
                if getattr(shard, attr) != getattr(first, attr):
                    raise PretrainingDataError(
                        f"shards disagree on {attr}: {first.path} has {getattr(first, attr)}, "
                        f"{shard.path} has {getattr(shard, attr)}")
        self._ends = np.cumsum([len(s) for s in self.shards]).tolist()

    @property
    def header(self) -> dict[str, Any]:
        """The first shard's header."""
        return self.shards[0].header

    @property
    def num_damaged(self) -> int:
        """Records lost to damaged tails (only with `allow_truncated`)."""
        return sum(s.num_damaged for s in self.shards)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"instance {i} out of range ({n} instances)")
        k = bisect.bisect_right(self._ends, i)
        return self.shards[k][i - (self._ends[k - 1] if k else 0)]


def collate(instances: Sequence[dict[str, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch instances, padding only to this batch's longest sequence and largest number of predictions.

    Returns `input_ids` and `attention_mask` (batch, length), `valid_length` (batch,), and
    `masked_positions` (padded with 0), `masked_ids` (padded with -100, torch's ignore index) and
    `masked_weights` (1.0 real, 0.0 padding), each (batch, predictions). All integer tensors are int64.
    """
    b = len(instances)
    lengths = np.array([int(x["valid_length"]) for x in instances], dtype=np.int64)
    width = int(lengths.max()) if b else 0
    preds = max((len(x["masked_positions"]) for x in instances), default=0)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    positions = np.zeros((b, preds), dtype=np.int64)
    labels = np.full((b, preds), IGNORE_INDEX, dtype=np.int64)
    weights = np.zeros((b, preds), dtype=np.float32)
    for r, x in enumerate(instances):
        n, p = lengths[r], len(x["masked_positions"])
        ids[r, :n] = x["input_ids"][:n]
        positions[r, :p] = x["masked_positions"]
        labels[r, :p] = x["masked_ids"]
        weights[r, :p] = 1.0
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    import torch  # here, not at the top: data-creation workers import this module and never batch

    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "valid_length": torch.from_numpy(lengths), "masked_positions": torch.from_numpy(positions),
            "masked_ids": torch.from_numpy(labels), "masked_weights": torch.from_numpy(weights)}
