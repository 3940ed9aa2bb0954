"""Pretraining shards in the original Bort's `.npz` layout, read and written.

The original `create_pretraining_data.py` saves one `part-NNN.npz` per worker (`np.savez_compressed`) with
seven arrays, one entry per instance:

    input_ids, segment_ids, masked_lm_positions, masked_lm_ids   object arrays of int32 vectors
    masked_lm_weights                                              object array of float32 vectors (1.0 each)
    next_sentence_labels, valid_lengths                            int32 vectors

Its loader (`get_pretrain_data_npz`: GluonNLP's `NumpyDataset`, fields in sorted key order, padded per batch)
reads them with `allow_pickle=True`: the object arrays are pickles, and unpickling a file runs whatever code it
names. `NpzShard` never does that: it parses each member's `.npy` header with numpy, reads plain arrays
without pickle, and unpickles object arrays with `SafeArrayUnpickler`, which admits only the numpy globals such
files contain (array and scalar reconstruction, `ndarray`, `dtype`); a file naming anything else is refused
with a `PretrainingDataError` naming the file and the key, before any of it is called.

The vocabulary. The original's shards carry no header, so the vocabulary they were made with cannot be read
from them: pass it (`vocab=` a vocabulary file, directory or tokenizer), or keep it beside the shards, where
`load_tokenizer` finds it in their directory (vocab.json + merges.txt, vocab.txt, tokenizer.json, or one
GluonNLP `*.vocab`). The longest valid length in the shard stands for its `max_seq_length`. Shards written
here (`write_npz_shard`, `create_pretraining_data.py --output_format npz`) carry our JSON header in the zip
archive's comment, which numpy and the original loader ignore, so they need no vocabulary argument.

Field mapping: `input_ids` → `input_ids`, `valid_lengths` → `valid_length`, `masked_lm_positions` /
`masked_lm_ids` → `masked_positions` / `masked_ids` (predictions whose weight is 0 are padding and dropped;
weights other than 0 and 1 are refused, as the trainer weighs every prediction alike),
`next_sentence_labels` → `is_random_next`. `segment_ids` are checked (0/1, one per token) and dropped: Bort
has no token types. Written back, segment 0 runs up to the first separator, segment 1 after it.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..atomic import atomic_path
from .instance_format import FORMAT, FORMAT_VERSION, decode_header, encode_header, vocab_hash
from .pretraining_dataset import PretrainingDataError, instance_index

__all__ = ["NPZ_KEYS", "NpzShard", "SafeArrayUnpickler", "write_npz_shard", "rec_to_npz", "is_npz_path",
           "header_for_tokenizer"]

NPZ_KEYS = ("input_ids", "segment_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
            "next_sentence_labels", "valid_lengths")
_OBJECT_KEYS = NPZ_KEYS[:5]
_PLAIN_KEYS = NPZ_KEYS[5:]


def is_npz_path(path: str | os.PathLike[str]) -> bool:
    """Whether a shard path names an npz shard (by its suffix, as the original loader does)."""
    return os.fspath(path).lower().endswith(".npz")


# ------------------------------------------------------------------------------------------- safe reading
def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's `_reconstruct` as pickles call it: an empty ndarray that the pickle's BUILD then fills
    (`ndarray.__setstate__` checks the data against the shape). Anything else is refused: a large shape here
    would allocate before any data is read."""
    if subtype is not np.ndarray or shape != (0,):
        raise pickle.UnpicklingError(f"unexpected array reconstruction ({_short(subtype)}, {_short(shape)})")
    return np.empty(0, dtype=np.int8)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """`numpy.dtype` as pickles call it: from a type string only (never an arbitrary object)."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"unexpected dtype argument {_short(spec)}")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's `scalar` as pickles call it: a numeric scalar from its raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"unexpected scalar ({_short(dtype)}, {_short(data)})")
    return np.frombuffer(data, dtype=dtype)[0]


# The only globals an object array of numeric arrays pickles to; numpy 2 names its core `numpy._core`.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class SafeArrayUnpickler(pickle.Unpickler):
    """An unpickler for numpy object arrays of numeric arrays that admits no other global: a pickle naming
    any other function or class (`os.system`, `builtins.eval`, …) fails before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy array reconstruction is "
                                         "allowed in a pretraining shard)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."


def _read_member(path: Path, archive: zipfile.ZipFile, key: str) -> np.ndarray:
    """One `.npy` member: header by numpy, plain data by count, object data by the safe unpickler."""
    where = f"{path}: key {key!r}"
    try:
        with archive.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"npy format version {version} (expected 1.0 or 2.0)")
            if dtype.hasobject:
                if dtype != np.dtype(object):
                    raise ValueError(f"structured dtype with objects {dtype} (expected a plain object array)")
                try:
                    array = SafeArrayUnpickler(fh).load()
                except pickle.UnpicklingError as err:
                    raise PretrainingDataError(f"{where}: refused to unpickle: {err}") from None
                except Exception as err:  # any malformed stream: EOFError, TypeError, ValueError, MemoryError…
                    raise PretrainingDataError(f"{where}: not a pickled numpy object array "
                                               f"({type(err).__name__}: {_short(str(err), 200)})") from None
                if not isinstance(array, np.ndarray) or array.shape != tuple(shape) or array.dtype != dtype:
                    raise ValueError(f"the pickle holds {_short(array)}, not the object array of shape {shape} "
                                     "its header announces")
                return array
            count = math.prod(shape)
            data = fh.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise ValueError(f"{len(data)} data bytes, its header (shape {shape}, {dtype}) needs "
                                 f"{count * dtype.itemsize}")
            return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except PretrainingDataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, RecursionError) as err:
        raise PretrainingDataError(f"{where}: {_short(str(err), 300)}") from None


def _integer_vector(value: Any) -> np.ndarray | None:
    """A 1-D int64 vector from one instance's entry (an int array, or an object row of Python/numpy ints
    from an all-equal-length shard), or None when it is not one."""
    arr = np.asarray(value) if isinstance(value, np.ndarray) else None
    if arr is None or arr.ndim != 1:
        return None
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                   for v in arr):
        try:
            return np.array([int(v) for v in arr], dtype=np.int64)
        except OverflowError:
            return None
    return None


def _float_vector(value: Any) -> np.ndarray | None:
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        return None
    if value.dtype.kind in "iuf":
        return value.astype(np.float64)
    if value.dtype == object and all(isinstance(v, (int, float, np.integer, np.floating))
                                     and not isinstance(v, (bool, np.bool_)) for v in value):
        return np.array([float(v) for v in value], dtype=np.float64)
    return None


# --------------------------------------------------------------------------------------------- the header
def header_for_tokenizer(tokenizer: Any, max_seq_length: int) -> dict[str, Any]:
    """A shard header (the fields the readers rely on) for shards made with `tokenizer`'s vocabulary."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tokenizer_kind": tokenizer.kind,
        "lowercase": bool(tokenizer.lowercase), "vocab_hash": vocab_hash(tokenizer.get_vocab()),
        "vocab_size": tokenizer.vocab_size,
        "special_ids": {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id,
                        "pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
                        "mask": tokenizer.mask_token_id},
        "settings": {"max_seq_length": int(max_seq_length)},
    }


def _load_vocabulary(path: Path, vocab: Any) -> Any:
    from ..tokenization import load_tokenizer

    if vocab is not None and not isinstance(vocab, (str, os.PathLike)):
        return vocab  # a tokenizer already loaded
    source = Path(vocab) if vocab is not None else path.parent
    try:
        return load_tokenizer(source)
    except (ValueError, OSError) as err:
        if vocab is not None:
            raise PretrainingDataError(f"{path}: the vocabulary given for it cannot be loaded: {err}") from None
        raise PretrainingDataError(
            f"{path} is an npz shard without a header (written by the original create_pretraining_data.py?), so "
            f"the vocabulary it was made with must be given: pass vocab=<vocabulary file or directory> or put "
            f"that vocabulary beside the shard (vocab.json + merges.txt, vocab.txt, tokenizer.json or one "
            f"GluonNLP *.vocab); looking in {source}: {err}") from None


# ---------------------------------------------------------------------------------------------- the shard
class NpzShard:
    """One `.npz` shard with the interface of `PretrainingShard`: `header`, `vocab_size`, `pad_id`,
    `max_seq_length`, `vocab_hash`, `len(shard)`, `shard[i]` → the dict `decode_instance` returns.

    The arrays are read (and checked for keys, dtypes and counts) when the shard opens; each instance's
    lengths, ranges and order are checked when it is read, and a bad one raises `PretrainingDataError`
    naming the file, the key and the record. `vocab`: see the module docstring (ignored when the shard has
    our header). A zip archive cannot be read past damage, so `allow_truncated` cannot rescue one: a
    damaged npz shard is always an error (`num_damaged` stays 0).
    """

    def __init__(self, path: str | os.PathLike[str], expected_vocab_hash: str | None = None,
                 allow_truncated: bool = False, vocab: Any = None) -> None:
        self.path = Path(path)
        self.num_damaged = 0
        if not self.path.is_file():
            raise FileNotFoundError(f"pretraining shard not found: {self.path}")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = set(archive.namelist())
                missing = [k for k in NPZ_KEYS if f"{k}.npy" not in names]
                if missing:
                    raise PretrainingDataError(
                        f"{self.path}: missing key(s) {', '.join(missing)} (an original Bort npz shard holds "
                        f"{', '.join(NPZ_KEYS)}; found {', '.join(sorted(n[:-4] for n in names)) or 'none'})")
                arrays = {k: _read_member(self.path, archive, k) for k in NPZ_KEYS}
                comment = archive.comment
        except zipfile.BadZipFile as err:
            raise PretrainingDataError(f"{self.path}: not an npz (zip) archive, or a damaged one: {err}") from None
        self._check_arrays(arrays)
        self._fields = arrays
        stored = self._stored_header(comment)
        if stored is not None:
            self.header: dict[str, Any] = stored
        else:
            longest = int(arrays["valid_lengths"].max()) if len(self) else 1
            self.header = {**header_for_tokenizer(_load_vocabulary(self.path, vocab), max(1, longest)),
                           "source": "npz shard without a header"}
        self.vocab_size: int = self.header["vocab_size"]
        self.pad_id: int = self.header["special_ids"]["pad"]
        self.max_seq_length: int = self.header["settings"]["max_seq_length"]
        if expected_vocab_hash is not None and self.vocab_hash != expected_vocab_hash:
            raise PretrainingDataError(
                f"{self.path} was made with another vocabulary: its vocab hash is {self.vocab_hash}, "
                f"expected {expected_vocab_hash} ({self.vocab_size} ids)")

    @property
    def vocab_hash(self) -> str:
        return self.header["vocab_hash"]

    def _stored_header(self, comment: bytes) -> dict[str, Any] | None:
        if not comment.lstrip().startswith(b"{"):
            return None  # the original writer leaves no comment
        try:
            return decode_header(comment)
        except ValueError as err:
            raise PretrainingDataError(f"{self.path}: header (zip archive comment): {err}") from None

    def _check_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for key in _PLAIN_KEYS:
            arr = arrays[key]
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise PretrainingDataError(f"{self.path}: key {key!r} must be a 1-D integer array (int32 in the "
                                           f"original), got {arr.dtype} of shape {arr.shape}")
        n = len(arrays["valid_lengths"])
        for key in NPZ_KEYS:
            arr = arrays[key]
            if key in _OBJECT_KEYS and (arr.ndim not in (1, 2) or arr.dtype.kind not in "iufO"):
                raise PretrainingDataError(f"{self.path}: key {key!r} must be an object array of per-instance "
                                           f"arrays, got {arr.dtype} of shape {arr.shape}")
            if len(arr) != n:
                raise PretrainingDataError(f"{self.path}: key {key!r} has {len(arr)} entries but "
                                           f"'valid_lengths' has {n}: the fields disagree on the instance count")

    def __len__(self) -> int:
        return len(self._fields["valid_lengths"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = instance_index(self.path, i, len(self))
        f = self._fields

        def fail(key: str, what: str) -> PretrainingDataError:
            return PretrainingDataError(f"{self.path}: key {key!r}, record {i}: {what}")

        vectors: dict[str, np.ndarray] = {}
        for key in ("input_ids", "segment_ids", "masked_lm_positions", "masked_lm_ids"):
            vec = _integer_vector(f[key][i])
            if vec is None:
                raise fail(key, f"expected a 1-D integer array, got {_short(f[key][i])}")
            vectors[key] = vec
        weights = _float_vector(f["masked_lm_weights"][i])
        if weights is None:
            raise fail("masked_lm_weights", f"expected a 1-D float array, got {_short(f['masked_lm_weights'][i])}")
        length = int(f["valid_lengths"][i])
        ids = vectors["input_ids"]
        if length < 1 or length != len(ids):
            raise fail("valid_lengths", f"valid length {length} but 'input_ids' holds {len(ids)} tokens")
        if length > self.max_seq_length:
            raise fail("valid_lengths", f"valid length {length} exceeds the shard's max_seq_length "
                                        f"{self.max_seq_length}")
        if len(vectors["segment_ids"]) != length:
            raise fail("segment_ids", f"{len(vectors['segment_ids'])} segment ids for {length} tokens")
        if np.any((vectors["segment_ids"] != 0) & (vectors["segment_ids"] != 1)):
            raise fail("segment_ids", f"segment ids must be 0 or 1, got {_short(vectors['segment_ids'].tolist())}")
        positions, masked = vectors["masked_lm_positions"], vectors["masked_lm_ids"]
        if not len(positions) == len(masked) == len(weights):
            raise fail("masked_lm_positions", f"{len(positions)} positions, {len(masked)} masked ids and "
                                              f"{len(weights)} weights: the masked fields disagree in length")
        if np.any((weights != 0.0) & (weights != 1.0)):
            raise fail("masked_lm_weights", f"weights must be 1.0 (a prediction) or 0.0 (padding), got "
                                            f"{_short(weights.tolist())}")
        keep = weights == 1.0
        positions, masked = positions[keep], masked[keep]
        if len(positions) and (positions.min() < 0 or positions.max() >= length or np.any(np.diff(positions) <= 0)):
            raise fail("masked_lm_positions", f"positions must be strictly increasing and in 0..{length - 1}, "
                                              f"got {_short(positions.tolist())}")
        for key, values in (("input_ids", ids), ("masked_lm_ids", masked)):
            if len(values) and (values.min() < 0 or values.max() >= self.vocab_size):
                bad = int(np.argmax((values < 0) | (values >= self.vocab_size)))
                raise fail(key, f"id {int(values[bad])} at index {bad} is out of range for the vocabulary of "
                                f"{self.vocab_size} ids (expected 0..{self.vocab_size - 1}; was the shard made "
                                "with another vocabulary?)")
        label = int(f["next_sentence_labels"][i])
        if label not in (0, 1):
            raise fail("next_sentence_labels", f"label must be 0 or 1, got {label}")
        return {"input_ids": ids.astype(np.int32), "masked_positions": positions.astype(np.int32),
                "masked_ids": masked.astype(np.int32), "valid_length": np.array(length, dtype=np.int32),
                "is_random_next": np.array(bool(label))}

    def __repr__(self) -> str:
        return f"NpzShard({str(self.path)!r}, {len(self)} instances)"

    def close(self) -> None:
        """Nothing to close: the arrays were read when the shard opened."""


# -------------------------------------------------------------------------------------------------- writing
class _Numpy1Pickler(pickle._Pickler):  # the pure-Python pickler: its save_global can be overridden
    """Pickles numpy arrays under the names numpy 1.x knows (`numpy.core.multiarray._reconstruct`): numpy 2
    writes `numpy._core…`, which the original's numpy (1.x before 1.26) cannot import."""

    _RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is self._RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _object_array(rows: list[np.ndarray]) -> np.ndarray:
    # np.array(rows, dtype=object) would make a 2-D array when all rows are equally long; keep one row each.
    out = np.empty(len(rows), dtype=object)
    for k, row in enumerate(rows):
        out[k] = row
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    if array.dtype.hasobject:
        _Numpy1Pickler(buffer, protocol=3).dump(array)
    else:
        buffer.write(np.ascontiguousarray(array).tobytes())
    return buffer.getvalue()


def _segment_ids(ids: np.ndarray, sep_id: int | None) -> np.ndarray:
    """0 up to and including the first separator after the start token, 1 after it (the original's layout:
    `<s> A </s>` is segment 0, `B </s>` segment 1)."""
    seg = np.zeros(len(ids), dtype=np.int32)
    if sep_id is not None:
        hits = np.flatnonzero(ids[1:] == sep_id)
        if len(hits):
            seg[hits[0] + 2:] = 1
    return seg


def write_npz_shard(path: str | os.PathLike[str], instances: Iterable[Mapping[str, Any]],
                    header: Mapping[str, Any]) -> int:
    """Write instances (dicts as `decode_instance` returns) as an npz shard in the original layout, with
    `header` in the archive comment; atomically (a temporary file renamed when complete). Returns the count."""
    sep_id = header.get("special_ids", {}).get("sep")
    fields: dict[str, list[Any]] = {k: [] for k in NPZ_KEYS}
    for inst in instances:
        n = int(inst["valid_length"])
        ids = np.asarray(inst["input_ids"][:n], dtype=np.int32)
        positions = np.asarray(inst["masked_positions"], dtype=np.int32)
        fields["input_ids"].append(ids)
        fields["segment_ids"].append(_segment_ids(ids, sep_id))
        fields["masked_lm_positions"].append(positions)
        fields["masked_lm_ids"].append(np.asarray(inst["masked_ids"], dtype=np.int32))
        fields["masked_lm_weights"].append(np.ones(len(positions), dtype=np.float32))
        fields["next_sentence_labels"].append(int(bool(inst["is_random_next"])))
        fields["valid_lengths"].append(n)
    arrays = {k: _object_array(fields[k]) for k in _OBJECT_KEYS}
    arrays.update({k: np.array(fields[k], dtype=np.int32) for k in _PLAIN_KEYS})
    comment = encode_header(header)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key in NPZ_KEYS:  # the original's key order (np.savez keeps its keyword order)
                archive.writestr(f"{key}.npy", _npy_bytes(arrays[key]))
            archive.comment = comment
    return len(fields["valid_lengths"])


def rec_to_npz(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> int:
    """Convert one `.rec` shard (ours) to an `.npz` shard the original loader reads; returns the count."""
    from .pretraining_dataset import PretrainingShard

    shard = PretrainingShard(src)
    try:
        return write_npz_shard(dest, (shard[i] for i in range(len(shard))), shard.header)
    finally:
        shard.close()

