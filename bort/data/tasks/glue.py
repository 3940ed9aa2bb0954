"""GLUE readers: the benchmark's TSV files as `download_glue_data.py` lays them out.

Files are tab-separated with no quoting (a field may hold `"`), UTF-8, one row a line; MRPC's files start with
a BOM. Columns are found by their header names, so MNLI's 12-column train and 16-column dev files read the
same way; CoLA's train/dev files have no header (source, label, original mark, sentence). Test files carry an
`index` column (QQP: `id`) and no label; the submission is `<Name>.tsv` with `index<TAB>prediction` rows,
labels spelled as in the files (STS-B: the score).

Splits and files (in the task directory, e.g. `<root>/glue/MNLI`):

| task | train | dev | test |
|---|---|---|---|
| CoLA, SST-2, MRPC, STS-B, QQP, QNLI, RTE, WNLI | train.tsv | dev.tsv | test.tsv |
| MNLI (= MNLI-m) | train.tsv | dev_matched.tsv | test_matched.tsv |
| MNLI-mm | train.tsv | dev_mismatched.tsv | test_mismatched.tsv |
| AX (diagnostic, test only, scored with an MNLI model) | | | ax.tsv (or AX.tsv, diagnostic.tsv) |

Inputs: single sentences are `text_a`; pairs are (`text_a`, `text_b`) in the files' order (QNLI: question,
sentence). Label orders follow the original Bort/GluonNLP task definitions.

STS-B scores are means of 0-5 similarity ratings, so a score outside [0, 5] is a bad row like an unknown
label (stopped at, or skipped and counted with `skip_bad_rows`), not a warning: such a value comes from a
shifted column or a rescaled copy of the data, and a regression head trained on it learns the wrong scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .base import BadRowSink, Example, RowError, Task, TaskDataError, iter_lines, metric_table

__all__ = ["GlueTask", "GLUE_TASKS"]

_NLI3 = ("neutral", "entailment", "contradiction")  # Bort/GluonNLP's MNLI order
_NLI2 = ("not_entailment", "entailment")
_BINARY = ("0", "1")


@dataclass(frozen=True)
class TsvLayout:
    """Where the fields of one GLUE file are: header names, or positions for a headerless file."""

    text_a: str | int
    text_b: str | int | None = None
    label: str | int | None = None  # None: the file has no label column
    idx: str | None = None  # column holding the submission index
    columns: int | None = None  # headerless files: the exact column count

    @property
    def has_header(self) -> bool:
        return self.columns is None


class GlueTask(Task):
    """One GLUE task (see the module docstring for files and layouts)."""

    def __init__(self, name: str, subdir: str, kind: str, labels: tuple[str, ...] | None,
                 metrics: tuple[str, ...], main_metric: str, files: dict[str, tuple[str, ...]],
                 layouts: dict[str, TsvLayout], submission_name: str,
                 score_range: tuple[float, float] = (-math.inf, math.inf)) -> None:
        self.name = name
        self.score_range = score_range
        self.default_subdir = f"glue/{subdir}"
        self.kind = kind
        self.labels = labels
        self.metrics = metrics
        self.main_metric = main_metric
        self.splits = tuple(s for s in ("train", "dev", "test") if s in files)
        self.submission_name = submission_name
        self._names = files
        self._layouts = layouts

    # ------------------------------------------------------------------------------------------ files
    def _files(self, data_dir: Path, split: str) -> list[Path]:
        names = self._names[split]
        # Several spellings exist for some files (the diagnostic set): the first one present is read.
        for name in names:
            if (data_dir / name).is_file():
                return [data_dir / name]
        return [data_dir / names[0]]

    def _expected_paths(self, data_dir: Path, split: str) -> list[str]:
        names = self._names[split]
        return [" or ".join(str(data_dir / n) for n in names)]

    # ------------------------------------------------------------------------------------------ reading
    def _read_file(self, path: Path, split: str, sink: BadRowSink) -> Iterator[tuple[int, Example]]:
        layout = self._layouts[split]
        lines = iter_lines(path)
        columns: dict[str, int] | None = None
        width = layout.columns
        if layout.has_header:
            first = next(lines, None)
            if first is None:
                return  # an empty file: no rows (`Task.read` reports a split without examples)
            if first[1] is None or not first[1].strip():
                raise _header_error(path, "a header line of tab-separated column names, found "
                                          + ("a line that is not valid UTF-8" if first[1] is None else "a blank line"))
            header = first[1].split("\t")
            columns = {name: i for i, name in enumerate(header)}
            needed = [c for c in (layout.text_a, layout.text_b) if c is not None]
            if split != "test" and layout.label is not None:
                needed.append(layout.label)
            missing = [c for c in needed if c not in columns]
            if missing:
                raise _header_error(path, f"columns {', '.join(map(repr, missing))} in the header "
                                          f"(found {', '.join(map(repr, header))})")
            width = len(header)

        def col(key: str | int | None) -> int | None:
            if key is None:
                return None
            if isinstance(key, int):
                return key
            assert columns is not None
            return columns.get(key)

        a_col, b_col = col(layout.text_a), col(layout.text_b)
        label_col, idx_col = col(layout.label), col(layout.idx)
        # A dict lookup first: the readers spend most of their time per row on MNLI/QQP-sized files.
        label_map = {name: i for i, name in enumerate(self.labels)} if self.labels else None
        row_number = 0
        for line, text in lines:
            if text is None:
                sink.report(path, line, "not valid UTF-8")
                continue
            if not text:
                continue  # an empty line holds no row (a line of blanks is checked like any other)
            fields = text.split("\t")
            if len(fields) != width:
                sink.report(path, line, f"expected {width} tab-separated columns, found {len(fields)}")
                continue
            label = None
            if label_col is not None:
                value = fields[label_col]
                label = label_map.get(value) if label_map is not None else None
                if label is None:  # a regression score, or a label needing a closer look
                    try:
                        label = self._parse_label(value)
                    except RowError as err:
                        sink.report(path, line, str(err))
                        continue
            idx: int | str = row_number if idx_col is None else _as_index(fields[idx_col])
            row_number += 1
            yield line, Example(
                guid=f"{split}-{idx}",
                text_a=fields[a_col],
                text_b=None if b_col is None else fields[b_col],
                label=label,
                meta={"idx": idx},
            )

    def _parse_label(self, value: str) -> int | float:
        value = value.strip()
        if self.kind == "regression":
            try:
                score = float(value)
            except ValueError:
                raise RowError(f"bad score {value!r}; expected a number") from None
            if not math.isfinite(score):
                raise RowError(f"bad score {value!r}; expected a finite number")
            low, high = self.score_range
            if not low <= score <= high:
                raise RowError(f"score {value} is outside [{low:g}, {high:g}], the range of {self.name}'s scores")
            return score
        return self.label_index(value)

    # ------------------------------------------------------------------------------------------ scoring
    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        labels = [ex.label for ex in examples]
        table = metric_table()
        return {name: table[name](labels, preds) for name in self.metrics}

    def _submission_text(self, preds: list, examples: list[Example]) -> str:
        rows = ["index\tprediction"]
        for p, ex in zip(preds, examples):
            value = f"{p:.3f}" if self.kind == "regression" else self.labels[p]  # type: ignore[index]
            rows.append(f"{ex.meta.get('idx', ex.guid)}\t{value}")
        return "\n".join(rows) + "\n"


def _header_error(path: Path, what: str) -> TaskDataError:
    return TaskDataError(f"{path}, line 1: expected {what}")


def _as_index(value: str) -> int | str:
    value = value.strip()
    # ASCII digits only: str.isdigit() also holds for "²" and other characters int() refuses.
    return int(value) if value.isascii() and value.isdigit() else value


def _standard(split_names: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[str, ...]]:
    return split_names or {"train": ("train.tsv",), "dev": ("dev.tsv",), "test": ("test.tsv",)}


def _pair_layouts(a: str, b: str, label: str, idx: str = "index") -> dict[str, TsvLayout]:
    # Test files lack the label column; the reader requires it only for train and dev.
    layout = TsvLayout(text_a=a, text_b=b, label=label, idx=idx)
    return {"train": layout, "dev": layout, "test": layout}


def _build() -> dict[str, GlueTask]:
    cola = {
        # in_domain_train/dev: source, label, original author's mark, sentence; no header.
        "train": TsvLayout(text_a=3, label=1, columns=4),
        "dev": TsvLayout(text_a=3, label=1, columns=4),
        "test": TsvLayout(text_a="sentence", idx="index"),
    }
    sst = {s: TsvLayout(text_a="sentence", label="label", idx="index") for s in ("train", "dev", "test")}
    mnli_files = {"train": ("train.tsv",), "dev": ("dev_matched.tsv",), "test": ("test_matched.tsv",)}
    mnli_mm_files = {"train": ("train.tsv",), "dev": ("dev_mismatched.tsv",), "test": ("test_mismatched.tsv",)}
    mnli_layouts = _pair_layouts("sentence1", "sentence2", "gold_label")
    tasks = [
        GlueTask("CoLA", "CoLA", "classification", _BINARY, ("mcc",), "mcc", _standard(), cola, "CoLA.tsv"),
        GlueTask("SST-2", "SST-2", "classification", _BINARY, ("acc",), "acc", _standard(), sst, "SST-2.tsv"),
        GlueTask("MRPC", "MRPC", "classification", _BINARY, ("f1", "acc"), "f1", _standard(),
                 _pair_layouts("#1 String", "#2 String", "Quality"), "MRPC.tsv"),
        GlueTask("STS-B", "STS-B", "regression", None, ("pearson", "spearman"), "pearson", _standard(),
                 _pair_layouts("sentence1", "sentence2", "score"), "STS-B.tsv", score_range=(0.0, 5.0)),
        GlueTask("QQP", "QQP", "classification", _BINARY, ("f1", "acc"), "f1", _standard(),
                 _pair_layouts("question1", "question2", "is_duplicate", idx="id"), "QQP.tsv"),
        GlueTask("MNLI", "MNLI", "classification", _NLI3, ("acc",), "acc", mnli_files, mnli_layouts, "MNLI-m.tsv"),
        GlueTask("MNLI-mm", "MNLI", "classification", _NLI3, ("acc",), "acc", mnli_mm_files, mnli_layouts,
                 "MNLI-mm.tsv"),
        GlueTask("QNLI", "QNLI", "classification", _NLI2, ("acc",), "acc", _standard(),
                 _pair_layouts("question", "sentence", "label"), "QNLI.tsv"),
        GlueTask("RTE", "RTE", "classification", _NLI2, ("acc",), "acc", _standard(),
                 _pair_layouts("sentence1", "sentence2", "label"), "RTE.tsv"),
        GlueTask("WNLI", "WNLI", "classification", _BINARY, ("acc",), "acc", _standard(),
                 _pair_layouts("sentence1", "sentence2", "label"), "WNLI.tsv"),
        # The diagnostic set has no public labels; a file with a `label` column (e.g. a labelled copy) is read.
        GlueTask("AX", "AX", "classification", _NLI3, ("mcc",), "mcc",
                 {"test": ("ax.tsv", "AX.tsv", "diagnostic.tsv")},
                 {"test": TsvLayout(text_a="sentence1", text_b="sentence2", label="label", idx="index")}, "AX.tsv"),
    ]
    return {t.name: t for t in tasks}


GLUE_TASKS = _build()
