"""LRA Retrieval: do two documents match? Byte-level pairs for the dual encoder (LRA: AAN citation links).

Both documents of a pair become the ids of their UTF-8 bytes (`bort.lra.bytes`), each cut to the task's
maximum length (4,000 bytes a side in LRA); the model encodes each side with one shared encoder
(`model.LRADualClassifier`). Two file layouts are read:

- LRA's AAN files (`new_aan_pairs.{train,eval,test}.tsv`): no header, five tab-separated fields
  `label<TAB>id1<TAB>id2<TAB>text1<TAB>text2`, the label a number (1 = the pair matches), read without quote
  processing as LRA does (`make_csv_dataset(..., field_delim='\\t', use_quote_delim=False)`);
- a TSV file whose header names the label and the two text columns (GLUE's MRPC `Quality<TAB>#1 ID<TAB>#2 ID
  <TAB>#1 String<TAB>#2 String`, or `label`, `text1`/`text2`, `sentence1`/`sentence2`, …; see `PAIR_COLUMNS`).

The layout is detected from the first line (five fields starting with a number: LRA). Splits
(`load_retrieval`): a directory with LRA's three files or with `train.tsv`, `test.tsv` (and optionally
`dev.tsv`; the dev set otherwise comes from training rows), or one file split by a seeded permutation.
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

__all__ = ["LRA_FILES", "PAIR_COLUMNS", "LABEL_COLUMNS", "PairRow", "PairData", "read_pairs", "load_retrieval"]


LRA_FILES = {"train": "new_aan_pairs.train.tsv", "dev": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
LRA_LAYOUT = "label<TAB>id1<TAB>id2<TAB>text1<TAB>text2"
PAIR_COLUMNS = (("text1", "text2"), ("sentence1", "sentence2"), ("#1 String", "#2 String"),
                ("question1", "question2"), ("source1", "source2"))
LABEL_COLUMNS = ("label", "quality", "is_duplicate", "target")


@dataclass(frozen=True)
class PairRow:
    """One pair: both documents' bytes as in the file, the label (1 = match), and the 1-based line."""

    text1: bytes
    text2: bytes
    label: int
    line: int


class PairData(LabelledRows):
    """`PairRow`s of one file; layout "lra" or "header"."""


def _is_lra_row(fields: Sequence[str]) -> bool:
    if len(fields) != 5:
        return False
    try:
        parse_label(fields[0])
    except RowError:
        return False
    return True


def _header_columns(path: Path, header: list[str], columns: tuple[str, str, str] | None) -> tuple[int, int, int]:
    if columns is not None:
        label, first, second = columns
        return (locate_column(path, header, "label", LABEL_COLUMNS, label),
                locate_column(path, header, "first text", (), first),
                locate_column(path, header, "second text", (), second))
    label_at = locate_column(path, header, "label", LABEL_COLUMNS, None)
    lowered = [h.strip().lower() for h in header]
    for first, second in PAIR_COLUMNS:
        if first.lower() in lowered and second.lower() in lowered:
            return label_at, lowered.index(first.lower()), lowered.index(second.lower())
    raise ValueError(f"{path}, line 1: the header {'<TAB>'.join(header)!r} names no pair of text columns; expected "
                     f"one of {', '.join(f'{a}/{b}' for a, b in PAIR_COLUMNS)}, or LRA's headerless {LRA_LAYOUT} rows")


def read_pairs(path: str | os.PathLike, skip_bad_rows: bool = False,
               columns: tuple[str, str, str] | None = None) -> PairData:
    """Document pairs from LRA's headerless AAN layout or a header-named pair TSV (module doc).

    `columns` = (label, text1, text2) names the header's columns explicitly. Every row must have as many fields
    as the layout; labels are class indices (a float such as "1.0" is accepted); neither text may be empty.
    Malformed rows raise `TaskDataError` naming file and line, or are skipped with `skip_bad_rows`.
    """
    path = Path(path)
    require_file(path, "retrieval data file", f"LRA's {LRA_LAYOUT} rows (new_aan_pairs.*.tsv) or a TSV file whose "
                 "header names a label and two text columns (e.g. GLUE MRPC's dev.tsv)")
    sink = BadRowSink(skip_bad_rows)
    rows: list[PairRow] = []
    layout = None
    width, at = 5, (0, 3, 4)
    expected = LRA_LAYOUT
    for line, text in iter_rows(path, sink):
        if layout is None:
            fields = text.split("\t")
            if columns is None and _is_lra_row(fields):
                layout = "lra"
            else:
                layout = "header"
                at = _header_columns(path, fields, columns)
                width, expected = len(fields), "<TAB>".join(fields)
                continue
        try:
            fields = split_fields(text, width, expected)
            label = parse_label(fields[at[0]])
            for side, i in (("first", at[1]), ("second", at[2])):
                if not fields[i].strip():
                    raise RowError(f"empty {side} text")
        except RowError as err:
            sink.report(path, line, str(err))
            continue
        rows.append(PairRow(fields[at[1]].encode("utf-8"), fields[at[2]].encode("utf-8"), label, line))
    if layout is None:
        raise ValueError(f"retrieval data file {path}: empty; expected {LRA_LAYOUT} rows or a header naming a label "
                         "and two text columns")
    if not rows and not sink.rows:
        raise ValueError(f"retrieval data file {path}: no rows")
    return PairData(rows, path, layout, sink.rows)


def _encode(name: str, rows: Sequence[PairRow], max_length: int) -> tuple[EncodedSplit, int]:
    first, second, truncated = [], [], 0
    for row in rows:
        a, cut_a = byte_vocab.encode(row.text1, max_length)
        b, cut_b = byte_vocab.encode(row.text2, max_length)
        first.append(a)
        second.append(b)
        truncated += cut_a + cut_b
    return EncodedSplit(name, first, [row.label for row in rows], pair_ids=second), truncated


def load_retrieval(data: str | os.PathLike, max_length: int, dev_size: int = 800, test_size: int = 800,
                   split_seed: int = 0, skip_bad_rows: bool = False,
                   columns: tuple[str, str, str] | None = None) -> LRASplits:
    """Retrieval splits from LRA's directory of AAN files, a directory of train/[dev/]test TSVs, or one file
    split by `split_seed`. `max_length` applies to each side; truncated documents are counted and logged."""
    path = Path(data)
    read = lambda p: read_pairs(p, skip_bad_rows, columns)  # noqa: E731
    if path.is_dir():
        files = find_split_files(path, LRA_FILES)
        layout = "LRA directory (new_aan_pairs.*.tsv)"
        if files is None:
            files = find_split_files(path, SPLIT_FILES)
            layout = "directory of TSV files"
        if files is None:
            raise FileNotFoundError(f"retrieval data directory {path}: found neither LRA's "
                                    f"{', '.join(LRA_FILES.values())} nor {', '.join(SPLIT_FILES.values())}")
        loaded = {split: read(p) for split, p in files.items()}
        source: dict[str, Any] = {"layout": layout, "files": {k: str(p) for k, p in files.items()}}
        parts, bad = split_rows(loaded, None, dev_size, test_size, split_seed, source)
    else:
        rows = read(path)
        source = {"layout": f"one file ({rows.layout}), split by seeded permutation", "file": str(path),
                  "split_seed": split_seed, "rows": len(rows)}
        parts, bad = split_rows(None, rows, dev_size, test_size, split_seed, source)
    return byte_splits("retrieval", parts, _encode, max_length, source, bad)
