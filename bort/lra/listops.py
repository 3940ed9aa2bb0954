"""ListOps (Nangia & Bowman 2018; the Long Range Arena task): reader, tokenizer and exact evaluator.

An expression is a bracketed prefix formula over the digits 0-9 with four operators, e.g.
`( ( ( [MAX 2 ) 9 ) ] )` = MAX(2, 9) = 9. Operators (as LRA generates them):

    [MIN  smallest argument        [MED  median: the middle argument, or for an even count the mean of the
    [MAX  largest argument               two middle ones truncated to an integer (LRA's int(numpy.median))
                                   [SM   sum of the arguments modulo 10

`]` closes an operator; the parentheses only record the generator's binary-tree serialisation and carry no
information, so LRA deletes them before tokenising, and so do we. The model vocabulary is therefore the 15
symbols of `SYMBOLS` plus padding (LRA spells `]` as "X" because of its text tokeniser; the id is what matters).

Two file layouts exist and both are read:

- the original release: `label<TAB>expression`, no header (`nangia_bowman_*.tsv`);
- LRA's: a `Source<TAB>Target` header, then `expression<TAB>label` rows written by Python's csv module
  (tab dialect, `\\r\\n` line ends), e.g. `basic_train.tsv`.

Malformed rows are reported with file and line (`TaskDataError`), or skipped and listed in `.bad_rows` with
`skip_bad_rows=True`; `check_labels=True` also evaluates every expression and reports rows whose label differs.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..data.tasks.base import BadRowSink, RowError, iter_rows
from .rows import LabelledRows

__all__ = ["SYMBOLS", "VOCAB", "PAD_ID", "NUM_CLASSES", "ListOpsRow", "ListOpsData", "tokenize", "encode",
           "evaluate", "apply_operator", "read_listops", "LAYOUTS"]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))
SYMBOLS: tuple[str, ...] = DIGITS + OPERATORS + (CLOSE,)
VOCAB: tuple[str, ...] = ("<pad>",) + SYMBOLS
PAD_ID = 0
NUM_CLASSES = 10
_IDS = {symbol: i for i, symbol in enumerate(VOCAB)}
_DROPPED = frozenset(("(", ")"))
LRA_HEADER = ("Source", "Target")
LAYOUTS = ("label-first", "lra")


# --- tokens ------------------------------------------------------------------------------------------------
def tokenize(expression: str) -> list[str]:
    """The expression's symbols with the parentheses dropped (LRA's preprocessing). Unknown symbols raise
    `ValueError` naming them and the valid ones."""
    symbols = [t for t in expression.split() if t not in _DROPPED]
    unknown = sorted({t for t in symbols if t not in _IDS or t == VOCAB[PAD_ID]})
    if unknown:
        raise ValueError(f"unknown ListOps symbol(s) {', '.join(map(repr, unknown[:5]))}; valid symbols: "
                         f"{' '.join(SYMBOLS)} and parentheses")
    return symbols


def encode(expression: str) -> list[int]:
    """Token ids of `expression` in `VOCAB` (padding is id 0)."""
    return [_IDS[t] for t in tokenize(expression)]


# --- the evaluator -----------------------------------------------------------------------------------------
def apply_operator(operator: str, args: Sequence[int]) -> int:
    """The value of ListOps operator `operator` ([MIN, [MAX, [MED or [SM) over its argument values."""
    if operator == "[MIN":
        return min(args)
    if operator == "[MAX":
        return max(args)
    if operator == "[SM":
        return sum(args) % 10
    ordered = sorted(args)  # [MED: LRA's int(numpy.median(args)); the mean of two digits is >= 0, so // truncates
    k = len(ordered)
    return (ordered[(k - 1) // 2] + ordered[k // 2]) // 2


def evaluate(expression: str | Iterable[str]) -> int:
    """The value (0-9) of a ListOps expression, given as text or as symbols from `tokenize`.

    A stack machine over the prefix symbols, so arbitrarily deep expressions never recurse. Raises
    `ValueError` for an unknown symbol, an operator without arguments, a `]` with no open operator, an
    operator left open, or more than one top-level value.
    """
    symbols = tokenize(expression) if isinstance(expression, str) else list(expression)
    stack: list[tuple[str, list[int]]] = []  # open operators with the arguments read so far
    top: list[int] = []
    for position, symbol in enumerate(symbols):
        if symbol in OPERATORS:
            stack.append((symbol, []))
        elif symbol == CLOSE:
            if not stack:
                raise ValueError(f"']' at symbol {position} closes no open operator")
            operator, args = stack.pop()
            if not args:
                raise ValueError(f"{operator} closed at symbol {position} has no arguments")
            (stack[-1][1] if stack else top).append(apply_operator(operator, args))
        elif symbol in DIGITS:
            (stack[-1][1] if stack else top).append(int(symbol))
        else:
            raise ValueError(f"unknown ListOps symbol {symbol!r} at symbol {position}; valid symbols: "
                             f"{' '.join(SYMBOLS)}")
    if stack:
        raise ValueError(f"{len(stack)} operator(s) left open at the end ({', '.join(op for op, _ in stack)})")
    if len(top) != 1:
        raise ValueError(f"expected one value at the top level, found {len(top)}")
    return top[0]


# --- files -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListOpsRow:
    """One example: the expression as written, its label (0-9), and the 1-based line it came from."""

    expression: str
    label: int
    line: int


class ListOpsData(LabelledRows):
    """`ListOpsRow`s of one file; layout "label-first" or "lra"."""


def _parse_label(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or not 0 <= int(value) < NUM_CLASSES:
        raise RowError(f"label {text!r} is not an integer 0-9")
    return int(value)


def _parse_row(text: str, layout: str, check_labels: bool) -> tuple[str, int]:
    fields = next(csv.reader([text], delimiter="\t")) if layout == "lra" else text.split("\t")
    if len(fields) != 2:
        expected = "expression<TAB>label" if layout == "lra" else "label<TAB>expression"
        raise RowError(f"expected 2 tab-separated fields ({expected}), found {len(fields)}")
    expression, label_text = (fields[0], fields[1]) if layout == "lra" else (fields[1], fields[0])
    label = _parse_label(label_text)
    try:
        symbols = tokenize(expression)
        if not symbols:
            raise ValueError("empty expression")
        if check_labels:
            value = evaluate(symbols)
            if value != label:
                raise RowError(f"label {label} but the expression evaluates to {value}")
    except ValueError as err:
        raise RowError(str(err)) from None
    return expression, label


def read_listops(path: str | os.PathLike, skip_bad_rows: bool = False, check_labels: bool = False) -> ListOpsData:
    """Read a ListOps TSV file in either layout (detected from the first line: LRA's `Source<TAB>Target`
    header, else `label<TAB>expression` rows).

    A missing file raises `FileNotFoundError` saying what is expected. A malformed row (field count, a label
    outside 0-9, an unknown symbol, an empty expression, or with `check_labels` a malformed expression or a
    label the evaluator disagrees with) raises `TaskDataError` naming file and line, or with
    `skip_bad_rows=True` is recorded in `.bad_rows`. Blank lines are not rows and are ignored.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not found"
        raise FileNotFoundError(f"ListOps data file {path}: {what}; expected a TSV file of label<TAB>expression rows "
                                "(the original release) or LRA's Source<TAB>Target layout (basic_train.tsv, …)")
    sink = BadRowSink(skip_bad_rows)
    rows: list[ListOpsRow] = []
    layout = None
    for line, text in iter_rows(path, sink):
        if layout is None:
            layout = "lra" if tuple(text.split("\t")) == LRA_HEADER else "label-first"
            if layout == "lra":
                continue
        try:
            expression, label = _parse_row(text, layout, check_labels)
        except RowError as err:
            sink.report(path, line, str(err))
            continue
        rows.append(ListOpsRow(expression, label, line))
    if not rows and not sink.rows:
        raise ValueError(f"ListOps data file {path}: no rows")
    return ListOpsData(rows, path, layout or "label-first", sink.rows)
