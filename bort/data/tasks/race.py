"""RACE readers: the original release, one JSON object per `.txt` file.

Layout (the task directory is the `RACE` folder): `<dir>/{train,dev,test}/{high,middle}/*.txt`, each file
`{"id", "article", "questions": [...], "options": [[...], ...], "answers": ["A", ...]}` (the test set has
answers too). "RACE-high" and "RACE-middle" read one level, "RACE" both (high first), files in name order.

Each question is one multiple-choice example: text_a is the article; the choices are the question followed by
each option, or, for a cloze question (one with a "_" blank), the question with the blank filled by the
option. The label is the answer letter's index (A = 0). `meta` holds the file id, the question's position
and the level. The submission (`RACE-high.jsonl`, …) has one line per question:
`{"id": "high123.txt", "question": 0, "label": "C"}`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .. import metrics as M
from .base import BadRowSink, Example, RowError, Task, check_text, describe_value, parse_json_row

__all__ = ["RaceTask", "RACE_TASKS"]

_LETTERS = "ABCDEFGHIJ"


def choice_text(question: str, option: str) -> str:
    """The second segment of one choice: fill the cloze blank, or append the option to the question."""
    if "_" in question:
        return question.replace("_", option)
    return f"{question} {option}"


class RaceTask(Task):
    """RACE at one or both levels (see the module docstring)."""

    kind = "multiple_choice"
    labels = None
    metrics = ("acc",)
    main_metric = "acc"
    default_subdir = "race/RACE"

    def __init__(self, name: str, levels: tuple[str, ...]) -> None:
        self.name = name
        self.levels = levels
        self.submission_name = f"{name}.jsonl"

    def _files(self, data_dir: Path, split: str) -> list[Path]:
        found: list[Path] = []
        for level in self.levels:
            level_files = sorted((data_dir / split / level).glob("*.txt"))
            # A level without files stands for itself with a pattern path that does not exist, so that callers
            # checking `all(p.exists() for p in files)` see the split as absent.
            found += level_files or [data_dir / split / level / "*.txt"]
        return found

    def _expected_paths(self, data_dir: Path, split: str) -> list[str]:
        return [str(data_dir / split / level / "*.txt") for level in self.levels]

    def _read_file(self, path: Path, split: str, sink: BadRowSink) -> Iterator[tuple[int, Example]]:
        level = path.parent.name
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            sink.report(path, 1, f"not valid UTF-8 ({err.reason} at byte {err.start})")
            return
        try:
            article, questions, options, answers, file_id = _fields(parse_json_row(text), path)
            if answers is None and split != "test":
                raise RowError("missing field 'answers'")
        except RowError as err:
            sink.report(path, err.line or 1, str(err))
            return
        for q, question in enumerate(questions):
            try:
                opts = options[q]
                if not isinstance(opts, list) or not 2 <= len(opts) <= len(_LETTERS):
                    raise RowError(f"question {q}: options must be a list of 2 to {len(_LETTERS)} strings, got "
                                   f"{describe_value(opts)}")
                for k, option in enumerate(opts):
                    check_text(option, f"options[{q}][{k}]")
                check_text(question, f"questions[{q}]")
                label = None
                if answers is not None:
                    letter = answers[q]
                    # One letter: `"" in "ABCD"` and `"AB" in "ABCD"` hold too.
                    if not isinstance(letter, str) or len(letter) != 1 or letter not in _LETTERS[:len(opts)]:
                        raise RowError(f"question {q}: bad answer {letter!r}; expected one of "
                                       f"{', '.join(_LETTERS[:len(opts)])}")
                    label = _LETTERS.index(letter)
            except RowError as err:
                sink.report(path, 1, str(err))
                continue
            yield 1, Example(
                guid=f"{split}-{file_id}-{q}", text_a=article, choices=[choice_text(question, o) for o in opts],
                label=label, meta={"id": file_id, "question": q, "level": level})

    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        return {"acc": M.accuracy([ex.label for ex in examples], preds)}

    def _submission_text(self, preds: list, examples: list[Example]) -> str:
        lines = [json.dumps({"id": ex.meta["id"], "question": ex.meta["question"], "label": _LETTERS[p]})
                 for p, ex in zip(preds, examples)]
        return "\n".join(lines) + "\n"


def _fields(row: object, path: Path) -> tuple[str, list, list, list | None, str]:
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {describe_value(row)}")
    missing = [k for k in ("article", "questions", "options") if k not in row]
    if missing:
        raise RowError(f"missing field(s) {', '.join(map(repr, missing))}")
    article = check_text(row["article"], "article")
    questions, options = row["questions"], row["options"]
    answers = row.get("answers")
    # "answers" may be absent (an unlabelled copy of the test set); when present it must be a list too.
    for key, value in (("questions", questions), ("options", options), ("answers", answers)):
        if not isinstance(value, list) and not (key == "answers" and "answers" not in row):
            raise RowError(f"field {key!r} must be a list, got {describe_value(value)}")
    if len(options) != len(questions) or (answers is not None and len(answers) != len(questions)):
        raise RowError(f"{len(questions)} questions, {len(options)} option lists and "
                       f"{'no' if answers is None else len(answers)} answers do not line up")
    file_id = row.get("id")
    if file_id is None:
        file_id = f"{path.parent.name}{path.name}"  # the release's ids read "high123.txt"
    elif not isinstance(file_id, str) or not file_id:
        raise RowError(f"field 'id' must be a non-empty string, got {describe_value(file_id)}")
    return article, questions, options, answers, check_text(file_id, "id")


RACE_TASKS = {t.name: t for t in (RaceTask("RACE-high", ("high",)), RaceTask("RACE-middle", ("middle",)),
                                  RaceTask("RACE", ("high", "middle")))}
