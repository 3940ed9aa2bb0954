"""LRA Text: byte-level document classification (LRA uses IMDB reviews, binary sentiment, 4,000 bytes).

Each document becomes the ids of its UTF-8 bytes (`bort.lra.bytes`: padding 0, byte b → b + 1, 257 ids), cut
to the task's maximum length, as LRA does; cut documents are counted and logged. Two sources are read:

- a TSV file whose header names the text and label columns (GLUE's SST-2 `sentence<TAB>label`; usual names
  are listed in `TEXT_COLUMNS` / `LABEL_COLUMNS`, others are passed by name). Labels are class indices
  0..k-1, so multiclass files work too (the model gets as many classes as the largest label needs);
- the aclImdb directory (Maas et al. 2011): `train/{neg,pos}/*.txt` and `test/{neg,pos}/*.txt`, one review
  a file, neg = 0 and pos = 1 (`unsup/` is ignored).

Splits (`load_text`): a directory with `train.tsv` and `test.tsv` (and optionally `dev.tsv`), or aclImdb,
gives train and test; the dev set, when no file gives it, is `dev_size` training rows chosen by `split_seed`.
One file is split by the seeded permutation ListOps uses (test, then dev, then the rest for training).

Malformed rows (field count, a label that is not a class index, an empty text, invalid UTF-8 in a TSV) raise
`TaskDataError` naming the file and line, or with `skip_bad_rows` are skipped and reported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data.tasks.base import BadRowSink, RowError, iter_rows
from .rows import LabelledRows
from . import bytes as byte_vocab
from .splits import EncodedSplit, LRASplits
from .splitting import byte_splits, find_split_files, split_rows
from .tsv import locate_column, parse_label, require_file, split_fields

__all__ = ["TEXT_COLUMNS", "LABEL_COLUMNS", "TextRow", "TextData", "read_text_tsv", "read_imdb", "load_text"]


TEXT_COLUMNS = ("sentence", "text", "review", "document", "content")
LABEL_COLUMNS = ("label", "sentiment", "class", "target")
SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
IMDB_CLASSES = ("neg", "pos")  # label = index


@dataclass(frozen=True)
class TextRow:
    """One document: its bytes as in the file, its class index, and where it came from (file, 1-based line;
    an aclImdb review is line 1 of its own file)."""

    text: bytes
    label: int
    path: Path
    line: int


class TextData(LabelledRows):
    """`TextRow`s of one file; layout "tsv" or "aclimdb"."""


def read_text_tsv(path: str | os.PathLike, skip_bad_rows: bool = False, text_column: str | None = None,
                  label_column: str | None = None) -> TextData:
    """Labelled documents from a TSV file with a header line naming its columns (module doc).

    The text column is `text_column` or the first of `TEXT_COLUMNS` in the header, the label column likewise
    (`LABEL_COLUMNS`). Every row must have as many fields as the header. Blank lines are ignored.
    """
    path = Path(path)
    require_file(path, "text data file", "a TSV file with a header naming its text and label columns (e.g. "
                 "GLUE SST-2's sentence<TAB>label), a directory with train.tsv and test.tsv, or aclImdb")
    sink = BadRowSink(skip_bad_rows)
    rows: list[TextRow] = []
    header: list[str] | None = None
    layout = ""
    for line, text in iter_rows(path, sink):
        if header is None:
            header = text.split("\t")
            text_at = locate_column(path, header, "text", TEXT_COLUMNS, text_column)
            label_at = locate_column(path, header, "label", LABEL_COLUMNS, label_column)
            layout = "<TAB>".join(header)
            continue
        try:
            fields = split_fields(text, len(header), layout)
            label = parse_label(fields[label_at])
            if not fields[text_at].strip():
                raise RowError("empty text")
        except RowError as err:
            sink.report(path, line, str(err))
            continue
        rows.append(TextRow(fields[text_at].encode("utf-8"), label, path, line))
    if header is None:
        raise ValueError(f"text data file {path}: empty; expected a header line naming the text and label columns")
    if not rows and not sink.rows:
        raise ValueError(f"text data file {path}: a header but no rows")
    return TextData(rows, path, "tsv", sink.rows)


def read_imdb(root: str | os.PathLike, split: str, skip_bad_rows: bool = False) -> TextData:
    """The reviews of `root/<split>/{neg,pos}/*.txt` (aclImdb), files in name order, neg before pos.

    A missing class directory raises FileNotFoundError naming it; an empty review raises `TaskDataError`
    naming its file (or is skipped with `skip_bad_rows`).
    """
    root = Path(root)
    sink = BadRowSink(skip_bad_rows)
    rows: list[TextRow] = []
    for label, name in enumerate(IMDB_CLASSES):
        folder = root / split / name
        if not folder.is_dir():
            raise FileNotFoundError(f"aclImdb directory {root}: {folder} not found; expected "
                                    "train/neg, train/pos, test/neg and test/pos holding one review a .txt file")
        for file in sorted(folder.glob("*.txt")):
            data = file.read_bytes()
            if not data.strip():
                sink.report(file, 1, "empty review")
                continue
            rows.append(TextRow(data, label, file, 1))
    if not rows and not sink.rows:
        raise ValueError(f"aclImdb directory {root}: no reviews (*.txt) under {root / split}/neg or /pos")
    return TextData(rows, root / split, "aclimdb", sink.rows)


def _imdb_root(path: Path) -> Path | None:
    for candidate in (path, path / "aclImdb"):
        if (candidate / "train").is_dir() and any((candidate / "train" / c).is_dir() for c in IMDB_CLASSES):
            return candidate
    return None


def _encode(name: str, rows: Sequence[TextRow], max_length: int) -> tuple[EncodedSplit, int]:
    ids, truncated = [], 0
    for row in rows:
        seq, cut = byte_vocab.encode(row.text, max_length)
        ids.append(seq)
        truncated += cut
    return EncodedSplit(name, ids, [row.label for row in rows]), truncated


def load_text(data: str | os.PathLike, max_length: int, dev_size: int = 800, test_size: int = 800,
              split_seed: int = 0, skip_bad_rows: bool = False, text_column: str | None = None,
              label_column: str | None = None) -> LRASplits:
    """Text splits from aclImdb, a directory of train/[dev/]test TSVs, or one TSV split by `split_seed`."""
    path = Path(data)
    read = lambda p: read_text_tsv(p, skip_bad_rows, text_column, label_column)  # noqa: E731
    parts: dict[str, list[TextRow]]
    if path.is_dir():
        imdb = _imdb_root(path)
        files = None if imdb is not None else find_split_files(path, SPLIT_FILES)
        if imdb is not None:
            loaded = {"train": read_imdb(imdb, "train", skip_bad_rows), "test": read_imdb(imdb, "test", skip_bad_rows)}
            source: dict[str, Any] = {"layout": "aclImdb directory", "directory": str(imdb)}
        elif files is not None:
            loaded = {split: read(p) for split, p in files.items()}
            source = {"layout": "directory of TSV files", "files": {k: str(p) for k, p in files.items()}}
        else:
            raise FileNotFoundError(f"text data directory {path}: neither aclImdb (train/pos, train/neg, test/…) nor "
                                    f"{', '.join(SPLIT_FILES.values())} (dev optional) found in it")
        parts, bad = split_rows(loaded, None, dev_size, test_size, split_seed, source)
    else:
        rows = read(path)  # names the path and the layouts when missing
        source = {"layout": "one TSV file, split by seeded permutation", "file": str(path), "split_seed": split_seed,
                  "rows": len(rows)}
        parts, bad = split_rows(None, rows, dev_size, test_size, split_seed, source)
    return byte_splits("text", parts, _encode, max_length, source, bad)
