"""LRA Image: CIFAR-10 as sequences of 1,024 grayscale pixels (10 classes), and scikit-learn's digits offline.

LRA turns each 32x32 colour image into grayscale with TensorFlow's `tf.image.rgb_to_grayscale` (weights
0.2989, 0.5870, 0.1140 on the channels scaled to [0, 1], then back to bytes by multiplying with 255.5 and
truncating: `convert_image_dtype`'s rule) and reads the 1,024 bytes row by row. Each byte is a token:

    id v          the pixel value v (0-255), as LRA's 256-entry input embedding
    id 256        <pad> (never needed: every image of a task has the same length)

Sources (`load_image`):

- the CIFAR-10 "python version" (`cifar-10-batches-py/` with `data_batch_1` … `data_batch_5` and `test_batch`,
  each a pickled dict with b"data", uint8 (N, 3072) channel-planar: 1,024 red, 1,024 green, 1,024 blue
  values, rows of 32, and b"labels", N ints 0-9), the directory itself, its parent, or the downloaded
  `cifar-10-python.tar.gz` read in place. Nothing is ever downloaded. LRA uses tfds's `train[:90%]` /
  `train[90%:]` / `test`; we keep the file order and hold out the last 10% of the training rows (the second
  half of data_batch_5: 45,000 / 5,000 / 10,000). Pickles are read with an unpickler that accepts only the
  plain containers and numpy's array reconstruction, so a hostile file cannot run code;
- `digits` (`DIGITS_ALIAS`): scikit-learn's bundled 1,797 8x8 handwritten digits (UCI optdigits test set),
  64-pixel sequences for a fast real-data run. Their values are counts 0-16 of set pixels in 4x4 blocks;
  they become bytes as round(v * 255 / 16) (0, 16, 32, …, 239, 255: 17 of the 256 tokens), then a seeded
  80/10/10 split (`split_seed`): 1,437 / 180 / 180.

A malformed file (not a pickle, not a dict, missing keys, wrong shape or dtype, count mismatch) raises
`TaskDataError` naming it and what was expected; a record whose label is not 0-9 raises `TaskDataError`
naming file and record, or with `skip_bad_rows` is skipped and listed in `bad_rows`.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data.tasks.base import BadRow, TaskDataError
from .splits import EncodedSplit, LRASplits

__all__ = ["PIXEL_VOCAB", "PIXEL_PAD_ID", "DIGITS_ALIAS", "CIFAR_CLASSES", "CIFAR_TRAIN_FILES", "CIFAR_TEST_FILE",
           "BadRecord", "rgb_to_gray", "read_cifar_batch", "read_cifar10", "load_cifar10", "digits_to_bytes",
           "load_digits", "load_image", "fraction_split"]

logger = logging.getLogger(__name__)

PIXEL_VOCAB: tuple[str, ...] = tuple(str(v) for v in range(256)) + ("<pad>",)
PIXEL_PAD_ID = 256
DIGITS_ALIAS = "digits"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_PIXELS = 32 * 32
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
DEV_FRACTION = 0.1


# --- pixels ------------------------------------------------------------------------------------------------
def rgb_to_gray(planar: np.ndarray) -> np.ndarray:
    """Grayscale bytes (N, 1024) of CIFAR rows (N, 3072) laid out channel-planar, computed as TensorFlow's
    `rgb_to_grayscale` on uint8 images does it (float32 throughout: x/255 · weights, then ·255.5 truncated)."""
    if planar.ndim != 2 or planar.shape[1] != 3 * CIFAR_PIXELS:
        raise ValueError(f"expected (N, {3 * CIFAR_PIXELS}) channel-planar rows, got shape {planar.shape}")
    rgb = planar.reshape(-1, 3, CIFAR_PIXELS).astype(np.float32) * np.float32(1.0 / 255.0)
    gray = np.einsum("ncp,c->np", rgb, GRAY_WEIGHTS)
    return np.clip(gray * np.float32(255.5), 0, 255).astype(np.uint8)


# --- CIFAR-10 pickles --------------------------------------------------------------------------------------
# The globals a CIFAR-10 batch needs: the numpy array it holds. Everything else is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle (str → latin-1 bytes; harmless)
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR-10 batch holds only a dict, "
                                         "lists and a numpy array)")
        return super().find_class(module, name)


def _unpickle(handle: io.BufferedIOBase, where: str) -> dict:
    try:
        # encoding="bytes" keeps the Python 2 pickles' strings (numpy's array payload) as bytes; keys are bytes.
        value = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any failure to unpickle is a malformed file
        raise TaskDataError(f"{where}: not a readable CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise TaskDataError(f"{where}: expected a pickled dict with b'data' and b'labels', got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class BadRecord(BadRow):
    """A skipped image of a pickled batch: its file, 0-based record index (stored in `line`) and the reason."""

    def __str__(self) -> str:
        return f"{self.path}, record {self.line}: {self.reason}"


def read_cifar_batch(handle: io.BufferedIOBase, where: str, skip_bad_rows: bool = False, bad: list | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(grayscale uint8 (N, 1024), labels int64 (N,)) of one pickled batch; `where` names it in errors.

    A record whose label is not an integer 0-9 raises `TaskDataError` naming the file and record, or with
    `skip_bad_rows` is left out and appended to `bad` as a `BadRecord`."""
    batch = _unpickle(handle, where)
    key = {k.decode("latin1") if isinstance(k, bytes) else k: k for k in batch}
    missing = [k for k in ("data", "labels") if k not in key]
    if missing:
        raise TaskDataError(f"{where}: the batch dict lacks {', '.join(repr(m) for m in missing)} (has "
                            f"{', '.join(sorted(key)) or 'nothing'}); expected b'data' (uint8, N x 3072) and "
                            "b'labels' (N ints 0-9)")
    data, labels = batch[key["data"]], batch[key["labels"]]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise TaskDataError(f"{where}: b'data' must be a uint8 array of shape (N, 3072) (channel-planar 32x32 RGB), "
                            f"got {got}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(data):
        n = len(labels) if hasattr(labels, "__len__") else type(labels).__name__
        raise TaskDataError(f"{where}: b'labels' must list one label per image ({len(data)}), got {n}")
    keep, values = [], []
    for record, label in enumerate(labels):
        ok = isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= int(label) < 10
        if not ok:
            row = BadRecord(Path(where), record, f"label {label!r} is not an integer 0-9")
            if not skip_bad_rows:
                raise TaskDataError(f"{row} (pass skip_bad_rows=True / --skip-bad-rows to skip such records)")
            if bad is not None:
                bad.append(row)
            continue
        keep.append(record)
        values.append(int(label))
    rows = data if len(keep) == len(data) else data[keep]
    return rgb_to_gray(rows), np.asarray(values, dtype=np.int64)


def _cifar_source(path: Path) -> tuple[str, Path]:
    """("dir", batches directory) or ("tar", tarball) for a path given as the batches directory, its
    parent, or the tarball."""
    if path.is_file():
        if tarfile.is_tarfile(path):
            return "tar", path
        raise TaskDataError(f"{path}: not a directory nor a tar archive; expected the CIFAR-10 python batches "
                            f"directory ({CIFAR_DIR}/), its parent, or {CIFAR_TARBALL}")
    for candidate in (path, path / CIFAR_DIR):
        if (candidate / CIFAR_TEST_FILE).is_file() or (candidate / CIFAR_TRAIN_FILES[0]).is_file():
            return "dir", candidate
    if (path / CIFAR_TARBALL).is_file():
        return "tar", path / CIFAR_TARBALL
    raise FileNotFoundError(f"no CIFAR-10 python batches in {path}: expected {CIFAR_DIR}/ with "
                            f"{', '.join(CIFAR_TRAIN_FILES)} and {CIFAR_TEST_FILE} (the 'python version' from "
                            f"https://www.cs.toronto.edu/~kriz/cifar.html, not downloaded here), or {CIFAR_TARBALL}")


def _iter_batches(kind: str, where: Path, names: tuple[str, ...]) -> Iterator[tuple[str, io.BufferedIOBase]]:
    if kind == "dir":
        missing = [str(where / n) for n in names if not (where / n).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 directory {where} lacks {', '.join(missing)}; expected "
                                    f"{', '.join(CIFAR_TRAIN_FILES)} and {CIFAR_TEST_FILE}")
        for name in names:
            with open(where / name, "rb") as handle:
                yield str(where / name), handle
        return
    with tarfile.open(where) as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        missing = [n for n in names if n not in members]
        if missing:
            raise FileNotFoundError(f"{where} lacks {', '.join(missing)}; expected the CIFAR-10 python version "
                                    f"({CIFAR_DIR}/{{{','.join(CIFAR_TRAIN_FILES)},{CIFAR_TEST_FILE}}})")
        for name in names:
            handle = archive.extractfile(members[name])
            yield f"{where}:{members[name].name}", handle  # type: ignore[misc]


def read_cifar10(path: str | os.PathLike, split: str = "train", skip_bad_rows: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, list[BadRow]]:
    """Grayscale pixels (N, 1024) uint8, labels (N,) and skipped records of CIFAR-10's "train" (the five
    data batches in order) or "test" split, from the batches directory, its parent or the tarball."""
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    kind, where = _cifar_source(Path(path))
    names = CIFAR_TRAIN_FILES if split == "train" else (CIFAR_TEST_FILE,)
    bad: list[BadRow] = []
    pixels, labels = [], []
    for name, handle in _iter_batches(kind, where, names):
        x, y = read_cifar_batch(handle, name, skip_bad_rows, bad)
        pixels.append(x)
        labels.append(y)
    return np.concatenate(pixels), np.concatenate(labels), bad


def _split(name: str, pixels: np.ndarray, labels: np.ndarray) -> EncodedSplit:
    # The ids stay a uint8 array (N, length): 1 byte a pixel rather than a Python list of ints (8 bytes a
    # pointer), which matters for CIFAR-10 and Pathfinder. Batching reads rows by index like lists.
    return EncodedSplit(name, pixels, [int(v) for v in labels])  # type: ignore[arg-type]


def load_cifar10(data: str | os.PathLike, max_length: int = 1024, skip_bad_rows: bool = False) -> LRASplits:
    """LRA Image from the CIFAR-10 python batches: train 45,000 / dev 5,000 (the last 10% of the training
    rows in file order) / test 10,000, grayscale bytes (module doc)."""
    if max_length < CIFAR_PIXELS:
        raise ValueError(f"LRA image needs max_length >= {CIFAR_PIXELS} (32x32 pixels), got {max_length}")
    train_x, train_y, bad = read_cifar10(data, "train", skip_bad_rows)
    test_x, test_y, bad_test = read_cifar10(data, "test", skip_bad_rows)
    n_dev = int(round(DEV_FRACTION * len(train_y)))
    cut = len(train_y) - n_dev
    kind, where = _cifar_source(Path(data))
    source = {"layout": f"CIFAR-10 python batches ({'tar archive' if kind == 'tar' else 'directory'})",
              "path": str(where), "dev": f"last {n_dev} training rows in file order",
              "tokens": "grayscale bytes as tf.image.rgb_to_grayscale"}
    splits = LRASplits(_split("train", train_x[:cut], train_y[:cut]), _split("dev", train_x[cut:], train_y[cut:]),
                       _split("test", test_x, test_y), PIXEL_VOCAB, PIXEL_PAD_ID, source, 0, bad + bad_test)
    source["sizes"] = {s: len(getattr(splits, s)) for s in ("train", "dev", "test")}
    return splits


# --- scikit-learn digits -----------------------------------------------------------------------------------
def digits_to_bytes(values: np.ndarray) -> np.ndarray:
    """Digits' 0-16 block counts as bytes: round(v * 255 / 16), half up (0→0, 1→16, 8→128, 16→255)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and (values.min() < 0 or values.max() > 16):
        raise ValueError(f"digit pixel values must be in 0..16, got {values.min()}..{values.max()}")
    return np.floor(values * 255.0 / 16.0 + 0.5).astype(np.uint8)


def fraction_split(n: int, dev_fraction: float, test_fraction: float, seed: int, where: object = "the data"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, dev, test) indices of `n` rows by a seeded permutation: the first round(test_fraction·n) rows
    of the shuffle are the test set, the next round(dev_fraction·n) the dev set, the rest training. `where`
    names the data in the error when the rows are too few."""
    n_test, n_dev = int(round(test_fraction * n)), int(round(dev_fraction * n))
    if n_test < 1 or n_dev < 1 or n_test + n_dev >= n:
        raise ValueError(f"{where}: {n} rows cannot give a dev set of {dev_fraction:.0%} and a test set of "
                         f"{test_fraction:.0%} (at least one row each) and leave training rows")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_test + n_dev:], order[n_test:n_test + n_dev], order[:n_test]


def load_digits(max_length: int = 1024, split_seed: int = 0) -> LRASplits:
    """scikit-learn's bundled 8x8 digits as 64-byte sequences, split 80/10/10 by `split_seed` (module doc)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = digits_to_bytes(bunch.data)
    if pixels.shape[1] > max_length:
        raise ValueError(f"digits are {pixels.shape[1]} pixels, above max_length {max_length}")
    train, dev, test = fraction_split(len(pixels), DEV_FRACTION, DEV_FRACTION, split_seed)
    labels = np.asarray(bunch.target)
    source = {"layout": "scikit-learn load_digits (8x8, values 0-16 scaled to bytes by round(v*255/16))",
              "split_seed": split_seed, "rows": len(pixels)}
    splits = LRASplits(_split("train", pixels[train], labels[train]), _split("dev", pixels[dev], labels[dev]),
                       _split("test", pixels[test], labels[test]), PIXEL_VOCAB, PIXEL_PAD_ID, source)
    source["sizes"] = {s: len(getattr(splits, s)) for s in ("train", "dev", "test")}
    return splits


def load_image(data: str | os.PathLike, max_length: int = 1024, split_seed: int = 0, skip_bad_rows: bool = False,
               **_ignored: Any) -> LRASplits:
    """LRA Image splits from `data`: "digits" (scikit-learn, offline) or CIFAR-10's python batches (a
    directory, its parent, or the tarball). `dev_size` / `test_size` do not apply (the splits are fixed)."""
    if str(data) == DIGITS_ALIAS:
        return load_digits(max_length, split_seed)
    return load_cifar10(data, max_length, skip_bad_rows)
