"""What every task reader shares: the example record, bad-row bookkeeping, file checks, and the `Task` base.

A task reads its files from its own directory (`<root>/glue/SST-2`, `<root>/superglue/BoolQ`, …) in the
original formats, turns each row into one or more `Example`s, scores predictions with the official metrics
(`bort.data.metrics`) and writes the leaderboard file. Malformed rows are never dropped silently: by default
the first one stops the read with a `TaskDataError` naming file and line; with `skip_bad_rows=True` each is
recorded in `ExampleList.bad_rows` (and logged) and the read goes on. A row is bad when it cannot be parsed
or a field has the wrong type (null, a number where text is expected, a list of the wrong length), a label
out of range, or text a tokenizer cannot encode. A split that yields no example at all (an empty or
header-only file, or every row bad) is a `TaskDataError` naming the files, for every split (see
`Task._no_examples_error`).
"""
from __future__ import annotations

import json
import logging
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ...atomic import atomic_write_text

__all__ = [
    "SPLITS",
    "KINDS",
    "Example",
    "BadRow",
    "ExampleList",
    "TaskDataError",
    "RowError",
    "BadRowSink",
    "check_text",
    "describe_value",
    "parse_json_row",
    "Task",
    "iter_lines",
    "iter_rows",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
KINDS = ("classification", "regression", "multiple_choice")


@dataclass
class Example:
    """One model input with its gold label.

    `text_a` is the first segment (sentence, premise, passage, article); `text_b` the second segment of pair
    tasks. Multiple-choice tasks leave `text_b` None and list the second segment of each choice in `choices`
    (the model scores `encode(text_a, choice)` for each). `label` is an index into `task.labels`
    (classification), a float (regression) or an index into `choices`, and None when unknown (test files).
    `meta` carries what submissions and metrics need (`idx`, question grouping, gold answer strings, …).
    """

    guid: str
    text_a: str
    text_b: str | None = None
    choices: list[str] | None = None
    label: int | float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BadRow:
    """A malformed row that was skipped: its file, 1-based line and what was wrong."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}, line {self.line}: {self.reason}"


class ExampleList(list):
    """A list of `Example`s plus `.bad_rows`, the rows skipped with `skip_bad_rows=True`."""

    def __init__(self, items: Iterable[Example] = (), bad_rows: Iterable[BadRow] = ()) -> None:
        super().__init__(items)
        self.bad_rows: list[BadRow] = list(bad_rows)


class TaskDataError(ValueError):
    """A task file is malformed; the message names the file, the 1-based line and what was expected."""


class RowError(Exception):
    """Raised by a row parser for one malformed row; the reader turns it into a `BadRow` or `TaskDataError`.
    `line`: the line within the row's text where the problem is, when known (multi-line JSON files)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.line = line


def parse_json_row(text: str) -> Any:
    """`json.loads(text)`, every failure a `RowError`: malformed JSON (with its line and column), numbers
    too long to convert, and nesting too deep for the decoder (which Python reports as a RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RowError(f"broken JSON ({err.msg} at column {err.colno})", line=err.lineno) from None
    except RecursionError:
        raise RowError("JSON nested too deeply to decode") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise RowError(f"bad JSON value ({err})") from None


def check_text(value: Any, name: str) -> str:
    """`value` as the text of field `name`: a string the tokenizer can encode. JSON may spell lone UTF-16
    surrogates (`"\\ud800"`), which Python keeps in a str but no tokenizer accepts; they are a bad row."""
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string, got {describe_value(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RowError(f"field {name!r} holds a lone surrogate {value[err.start]!r} at character "
                           f"{err.start}, which is not text") from None
    return value


def describe_value(value: Any) -> str:
    """A decoded JSON value's type and a short preview, for messages: `null`, `int '7'`, `list '[1, 2]'`."""
    return "null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"


class BadRowSink:
    """Collects bad rows (`skip=True`) or stops at the first one with a `TaskDataError` (`skip=False`)."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.rows: list[BadRow] = []

    def report(self, path: Path, line: int, reason: str) -> None:
        row = BadRow(Path(path), int(line), reason)
        if not self.skip:
            raise TaskDataError(f"{row} (pass skip_bad_rows=True / --skip-bad-rows to skip such rows)")
        self.rows.append(row)


def iter_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text) of a UTF-8 file, split on "\\n" only, without the line end.

    Splitting bytes on newline (not `str.splitlines`) keeps fields that hold U+2028, "\\x1c" or a lone "\\r"
    intact, as the original readers did. A leading UTF-8 BOM (MRPC) is removed. A line that is not valid
    UTF-8 yields None as its text so that the caller can report it.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            raw = raw.rstrip(b"\n")
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None



def iter_rows(path: Path, sink: BadRowSink) -> Iterator[tuple[int, str]]:
    """The non-blank lines of `iter_lines`; a line that is not valid UTF-8 is reported to `sink` (raised, or
    skipped and counted) instead of being yielded."""
    for line, text in iter_lines(path):
        if text is None:
            sink.report(path, line, "not valid UTF-8")
        elif text.strip():
            yield line, text

class Task:
    """A fine-tuning task: reader, official metrics and leaderboard writer (subclasses fill in the details).

    Attributes: `name` (canonical), `kind` ("classification" | "regression" | "multiple_choice"), `labels`
    (classification labels in the submission spelling, index order), `metrics` (keys `evaluate` returns),
    `main_metric` (what early stopping maximises), `default_subdir` (where the task's directory sits under a
    data root), `splits` (the splits this task has), `submission_name` (the leaderboard file name).
    """

    name: str = ""
    kind: str = "classification"
    labels: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("acc",)
    main_metric: str = "acc"
    default_subdir: str = ""
    splits: tuple[str, ...] = SPLITS
    submission_name: str = ""

    # ------------------------------------------------------------------------------------------ files
    def check_split(self, split: str) -> None:
        """Raise ValueError unless `split` is one of `self.splits`."""
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; valid splits: {', '.join(self.splits)}")

    def files(self, data_dir: str | Path, split: str) -> list[Path]:
        """The paths read for `split` in the task directory `data_dir` (they need not exist)."""
        self.check_split(split)
        return self._files(Path(data_dir), split)

    def _files(self, data_dir: Path, split: str) -> list[Path]:
        raise NotImplementedError

    def _expected_paths(self, data_dir: Path, split: str) -> list[str]:
        """What `read` looks for, spelled out for the missing-file message."""
        return [str(p) for p in self._files(data_dir, split)]

    def _missing_files_error(self, data_dir: Path, split: str) -> FileNotFoundError:
        expected = self._expected_paths(data_dir, split)
        message = (f"{self.name} {split} split: expected file(s) not found in {data_dir}:\n  "
                   + "\n  ".join(expected))
        nested = data_dir / self.default_subdir
        if self.default_subdir and nested.is_dir():
            message += f"\n(data_dir should be the task's own directory; did you mean {nested}?)"
        return FileNotFoundError(message)

    # ------------------------------------------------------------------------------------------ reading
    def read(self, data_dir: str | Path, split: str, skip_bad_rows: bool = False) -> ExampleList:
        """The examples of `split` read from the task directory `data_dir`.

        Missing files raise FileNotFoundError listing every expected path. A malformed row raises
        `TaskDataError` (file, line, reason) or, with `skip_bad_rows=True`, is recorded in `.bad_rows`.
        """
        self.check_split(split)
        data_dir = Path(data_dir)
        paths = self._files(data_dir, split)
        if not paths or not all(p.is_file() for p in paths):
            raise self._missing_files_error(data_dir, split)
        sink = BadRowSink(skip_bad_rows)
        examples = ExampleList()
        seen: dict[str, tuple[Path, int]] = {}
        for path in paths:
            for line, example in self._read_file(path, split, sink):
                if example.guid in seen:
                    first = seen[example.guid]
                    sink.report(path, line, f"duplicate id {example.guid!r} (first at {first[0]}, line {first[1]})")
                    continue
                seen[example.guid] = (path, line)
                examples.append(example)
        examples.bad_rows = sink.rows
        if not examples:
            raise self._no_examples_error(paths, split, sink.rows)
        if sink.rows:
            shown = "; ".join(str(r) for r in sink.rows[:3])
            more = f" (and {len(sink.rows) - 3} more)" if len(sink.rows) > 3 else ""
            logger.warning("%s %s: skipped %d bad row(s): %s%s", self.name, split, len(sink.rows), shown, more)
        return examples

    def _read_file(self, path: Path, split: str, sink: BadRowSink) -> Iterator[tuple[int, Example]]:
        """Yield (line, example) for each good row of `path`; report bad rows to `sink`."""
        raise NotImplementedError

    def _no_examples_error(self, paths: list[Path], split: str, bad_rows: list[BadRow]) -> TaskDataError:
        """A split without a single example is an error whatever the split: training needs examples, scoring
        needs them, and an empty leaderboard file is rejected. Failing here, before any training, beats a
        run that trains for hours and then crashes or writes an empty submission."""
        files = ", ".join(map(str, paths[:3])) + (f" (and {len(paths) - 3} more files)" if len(paths) > 3 else "")
        if bad_rows:
            return TaskDataError(f"{self.name} {split} split: no usable example in {files}: all {len(bad_rows)} "
                                 f"row(s) are bad, the first: {bad_rows[0]}")
        hint = "; remove the file to fine-tune without a test submission" if split == "test" else ""
        return TaskDataError(f"{self.name} {split} split: {files} holds no examples (the file is empty or has "
                             f"only a header or blank lines); expected at least one row{hint}")

    # ------------------------------------------------------------------------------------------ labels
    def label_index(self, value: str) -> int:
        """Index of a label spelled as in the files (raises RowError for an unknown label)."""
        assert self.labels is not None
        try:
            return self.labels.index(value)
        except ValueError:
            raise RowError(f"bad label {value!r}; expected one of {', '.join(map(repr, self.labels))}") from None

    # ------------------------------------------------------------------------------------------ scoring
    def evaluate(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        """The official metrics (keys `self.metrics`, values in [0, 1] or correlations) of `predictions`.

        `predictions` are in the space of `Example.label` (class index, float, or choice index), one per
        example. Raises ValueError when the lengths differ, a prediction is out of range, or a label is
        unknown (test files have none).
        """
        preds = self.check_predictions(predictions, examples)
        missing = [ex.guid for ex in examples if ex.label is None]
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} example(s) have no gold label (e.g. {missing[0]!r}); "
                             "test files are scored by the leaderboard")
        return self._evaluate(preds, list(examples))

    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    def check_predictions(self, predictions: Sequence, examples: Sequence[Example]) -> list:
        """Predictions as plain ints (class / choice index) or floats, checked against the examples."""
        preds = list(predictions.tolist() if hasattr(predictions, "tolist") else predictions)
        if len(preds) != len(examples):
            raise ValueError(f"{self.name}: {len(preds)} predictions for {len(examples)} examples")
        if not examples:
            raise ValueError(f"{self.name}: no examples to score")
        if self.kind == "regression":
            return [float(p) for p in preds]
        out = []
        for p, ex in zip(preds, examples):
            try:
                k = operator.index(p)
            except TypeError:
                raise ValueError(f"{self.name}: prediction {p!r} for {ex.guid!r} is not an integer index") from None
            n = len(ex.choices) if self.kind == "multiple_choice" and ex.choices is not None else len(self.labels or ())
            if not 0 <= k < n:
                raise ValueError(f"{self.name}: prediction {k} for {ex.guid!r} is outside 0..{n - 1}")
            out.append(k)
        return out

    # ------------------------------------------------------------------------------------------ submission
    def write_submission(self, predictions: Sequence, examples: Sequence[Example], out_dir: str | Path) -> Path:
        """Write the leaderboard file `out_dir/<submission_name>` atomically and return its path."""
        preds = self.check_predictions(predictions, examples)
        path = Path(out_dir) / self.submission_name
        atomic_write_text(path, self._submission_text(preds, list(examples)))
        return path

    def _submission_text(self, preds: list, examples: list[Example]) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, splits={self.splits})"


def metric_table() -> dict[str, Callable[[Sequence, Sequence], float]]:
    """Plain (labels, predictions) metrics by the names tasks use in `metrics`."""
    from .. import metrics as m

    return {"acc": m.accuracy, "mcc": m.mcc, "f1": m.f1, "macro_f1": m.macro_f1,
            "pearson": m.pearson, "spearman": m.spearman}
