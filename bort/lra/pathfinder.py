"""LRA Pathfinder (pathfinder32): are the two marker dots joined by one dashed path? 32x32 = 1,024 pixels.

The data is the LRA release's layout (`lra_release/pathfinder32/`, made with Linsley et al.'s generator),
read from local files only:

    <difficulty>/imgs/<k>/sample_<i>.png      grayscale PNG, 32x32
    <difficulty>/metadata/<k>.npy             despite the name, text: one image a line, fields separated by
                                              spaces: `imgs/<k> sample_<i>.png <i> <label> …`

Field 1 is the image's folder under the difficulty directory, field 2 its file name, field 4 the label
(1: the dots are connected); LRA's builder reads exactly these (further fields record generator settings).
A metadata file saved with `numpy.save` (an array of strings, one row a line) is read as well.
The difficulties are `curv_baseline` (easy), `curv_contour_length_9` and `curv_contour_length_14` (hard, the
one LRA results and the YOSO paper use, and the default here). `--data` may name the difficulty directory
itself, `pathfinder32/` (then the hard set), or the release root that holds `pathfinder32/`.

Pixels are tokens exactly as for LRA Image (`image.PIXEL_VOCAB`: id = byte value). LRA splits each
difficulty 80/10/10 in tfds's order; we split the rows of all metadata files (in numeric file order) by a
seeded permutation (`split_seed`) into the same fractions.

A metadata row with too few fields, a label other than 0/1, or an image that is missing, empty, not a PNG
or not 32x32 raises `TaskDataError` naming the metadata file and line, or with `skip_bad_rows` is skipped and
reported (LRA itself drops empty images).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data.tasks.base import BadRow, BadRowSink, RowError
from .splits import EncodedSplit, LRASplits
from .image import DEV_FRACTION, PIXEL_PAD_ID, PIXEL_VOCAB, fraction_split

__all__ = ["DIFFICULTIES", "DEFAULT_DIFFICULTY", "PathfinderRow", "PathfinderData", "find_difficulty_dir",
           "read_metadata", "read_png", "read_pathfinder", "load_pathfinder"]

logger = logging.getLogger(__name__)

DIFFICULTIES = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}
DEFAULT_DIFFICULTY = DIFFICULTIES["hard"]
RELEASE_DIR = "pathfinder32"
METADATA_DIR = "metadata"
LABEL_FIELD = 3  # 0-based: folder, file name, image number, label, …


@dataclass(frozen=True)
class PathfinderRow:
    """One metadata row: the image path (relative to the difficulty directory), its label, and where the row
    was (metadata file, 1-based line)."""

    image: str
    label: int
    metadata: Path
    line: int


@dataclass
class PathfinderData:
    """Pixels (uint8 (N, side²)), labels (N,) of one difficulty directory `root`, and the rows skipped."""

    pixels: np.ndarray
    labels: np.ndarray
    root: Path
    bad_rows: list[BadRow]

    def __len__(self) -> int:
        return len(self.labels)


def find_difficulty_dir(path: str | os.PathLike) -> Path:
    """The difficulty directory (the one holding `metadata/`) that `path` names: itself, or the hard set
    under it or under its `pathfinder32/`. Raises FileNotFoundError saying what was expected."""
    path = Path(path)
    for candidate in (path, path / DEFAULT_DIFFICULTY, path / RELEASE_DIR / DEFAULT_DIFFICULTY):
        if (candidate / METADATA_DIR).is_dir():
            return candidate
    raise FileNotFoundError(
        f"no Pathfinder data in {path}: expected a difficulty directory with {METADATA_DIR}/<k>.npy and "
        f"imgs/<k>/sample_<i>.png (e.g. {RELEASE_DIR}/{DEFAULT_DIFFICULTY} of LRA's lra_release, or one written "
        "by `bort lra generate-pathfinder`), or a directory holding one of those")


def _metadata_files(root: Path) -> list[Path]:
    files = [p for p in (root / METADATA_DIR).iterdir() if p.is_file() and p.suffix == ".npy"]
    if not files:
        raise FileNotFoundError(f"{root / METADATA_DIR}: no <k>.npy metadata files (one line per image: "
                                "imgs/<k> sample_<i>.png <i> <label> …)")
    # Numeric order (0, 1, …, 10 rather than 0, 1, 10), names that are not numbers after those.
    return sorted(files, key=lambda p: (0, int(p.stem), "") if re.fullmatch(r"\d+", p.stem) else (1, 0, p.stem))


def _metadata_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise RowError(f"a numpy file that cannot be read without pickles ({err})") from None
        rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        for number, row in enumerate(rows, 1):
            yield number, " ".join(str(v) for v in row)
        return
    for number, line in enumerate(raw.split(b"\n"), 1):
        try:
            yield number, line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            yield number, None


def read_metadata(root: Path, skip_bad_rows: bool = False) -> tuple[list[PathfinderRow], list[BadRow]]:
    """Rows of every metadata file of the difficulty directory `root`, in numeric file order; malformed rows
    raise `TaskDataError` (file and line) or are skipped and returned with `skip_bad_rows`."""
    sink = BadRowSink(skip_bad_rows)
    rows: list[PathfinderRow] = []
    for meta in _metadata_files(root):
        try:
            lines = list(_metadata_lines(meta))
        except RowError as err:
            sink.report(meta, 1, str(err))
            continue
        for line, text in lines:
            if text is None:
                sink.report(meta, line, "not valid UTF-8")
                continue
            fields = text.split()
            if not fields:
                continue
            if len(fields) <= LABEL_FIELD:
                sink.report(meta, line, f"expected at least {LABEL_FIELD + 1} space-separated fields (folder, "
                                        f"file name, image number, label), found {len(fields)}")
                continue
            if fields[LABEL_FIELD] not in ("0", "1"):
                sink.report(meta, line, f"label (field {LABEL_FIELD + 1}) {fields[LABEL_FIELD]!r} is not 0 or 1")
                continue
            image = f"{fields[0]}/{fields[1]}"
            if Path(image).is_absolute() or ".." in Path(image).parts:
                sink.report(meta, line, f"image path {image!r} leaves the difficulty directory")
                continue
            rows.append(PathfinderRow(image, int(fields[LABEL_FIELD]), meta, line))
    return rows, sink.rows


def read_png(path: Path, side: int) -> np.ndarray:
    """The grayscale pixels (side·side,) uint8 of a PNG, row by row; `RowError` saying what is wrong if the
    file is missing, empty, not a PNG or not side x side. Colour images are converted with Pillow's luma."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise RowError(f"image {path} not found")
    if path.stat().st_size == 0:
        raise RowError(f"image {path} is empty")
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise RowError(f"image {path} is {img.format}, expected PNG")
            if img.size != (side, side):
                raise RowError(f"image {path} is {img.size[0]}x{img.size[1]}, expected {side}x{side}")
            gray = img if img.mode == "L" else img.convert("L")
            return np.asarray(gray, dtype=np.uint8).reshape(-1)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise RowError(f"image {path} cannot be decoded ({err})") from None


def read_pathfinder(path: str | os.PathLike, side: int = 32, skip_bad_rows: bool = False) -> PathfinderData:
    """All images and labels of a Pathfinder difficulty directory (or a directory above one, see
    `find_difficulty_dir`), in metadata order."""
    root = find_difficulty_dir(path)
    rows, bad = read_metadata(root, skip_bad_rows)
    sink = BadRowSink(skip_bad_rows)
    pixels = np.empty((len(rows), side * side), dtype=np.uint8)
    labels = np.empty(len(rows), dtype=np.int64)
    n = 0
    for row in rows:
        try:
            pixels[n] = read_png(root / row.image, side)
        except RowError as err:
            sink.report(row.metadata, row.line, str(err))
            continue
        labels[n] = row.label
        n += 1
    if n == 0:
        raise ValueError(f"Pathfinder data in {root}: no usable images"
                         + (f" ({len(bad) + len(sink.rows)} bad rows skipped)" if bad or sink.rows else ""))
    return PathfinderData(pixels[:n], labels[:n], root, bad + sink.rows)


def load_pathfinder(data: str | os.PathLike, max_length: int = 1024, split_seed: int = 0,
                    skip_bad_rows: bool = False, **_ignored: Any) -> LRASplits:
    """pathfinder32 splits from local files: 80/10/10 of all rows by `split_seed` (module doc).
    `dev_size` / `test_size` do not apply."""
    side = int(round(max_length ** 0.5))
    if side * side != max_length:
        raise ValueError(f"Pathfinder images are square: max_length {max_length} is not a square number")
    found = read_pathfinder(data, side, skip_bad_rows)
    train, dev, test = fraction_split(len(found.labels), DEV_FRACTION, DEV_FRACTION, split_seed,
                                      f"Pathfinder data in {found.root}")
    split = lambda name, idx: EncodedSplit(name, found.pixels[idx], found.labels[idx].tolist())  # noqa: E731
    source = {"layout": "LRA pathfinder (imgs/<k>/*.png + metadata/<k>.npy)", "path": str(found.root),
              "split_seed": split_seed, "rows": len(found.labels),
              "positive_fraction": float(found.labels.mean())}
    splits = LRASplits(split("train", train), split("dev", dev), split("test", test), PIXEL_VOCAB, PIXEL_PAD_ID,
                       source, 0, found.bad_rows)
    source["sizes"] = {s: len(getattr(splits, s)) for s in ("train", "dev", "test")}
    return splits
