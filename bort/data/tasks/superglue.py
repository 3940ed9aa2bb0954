"""SuperGLUE readers: the benchmark's JSON-lines files, one object a line.

Files in the task directory (e.g. `<root>/superglue/BoolQ`): `train.jsonl`, `val.jsonl` (the "dev" split),
`test.jsonl` (no labels, scored by the leaderboard); the FewGLUE 32-example dev files (`dev32.jsonl`) read as
the extra split "dev32". The diagnostics are test-only: `AX-b/AX-b.jsonl` and `AX-g/AX-g.jsonl` (with labels,
evaluated like RTE by a model trained on RTE). Submissions are `<Name>.jsonl` with `{"idx", "label"}` lines
in the leaderboard's spelling: BoolQ and WiC `"true"/"false"`, WSC `"True"/"False"`, CB/RTE/AX the NLI label,
COPA the choice index 0/1, MultiRC nested per passage and question with 0/1 answer labels, ReCoRD the
predicted entity text.

Input construction (conventions of the original Bort/GluonNLP readers and the SuperGLUE baselines):

- BoolQ: (passage, question). CB, RTE, AX-b, AX-g: (premise, hypothesis).
- COPA: multiple choice over (premise, "because <choice>") for a cause question and (premise, "so <choice>")
  for an effect question, Bort's connectives, so the question is part of each choice (the choice's first
  letter lower-cased unless it starts with "I" or an acronym).
- MultiRC: one binary example per answer option, (passage, "question answer"); `meta` has the passage,
  question and answer idx for F1a/EM and the nested submission.
- ReCoRD: one multiple-choice example per query; text_a is the passage with each "@highlight\\n" turned into
  "- " (as jiant does); the choices are the query with "@placeholder" replaced by each distinct candidate
  entity (in order of first mention). `meta["entities"]` lists those entity strings, `meta["answers"]` the
  gold answer texts (the label is the first candidate among them; the metric takes the max over all).
- WiC: ("word: sentence1", "sentence2") with the target word's occurrence in each sentence wrapped in
  asterisks (from the start/end character offsets).
- WSC: (text with the candidate noun phrase in [brackets] and the pronoun in *asterisks*,
  "pronoun refers to noun phrase"). Spans are located from their word indices; a span whose words do not
  match the text (case-insensitively) is left unmarked.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .. import metrics as M
from .base import (SPLITS, BadRowSink, Example, RowError, Task, check_text, describe_value, iter_rows,
                   metric_table, parse_json_row)

__all__ = ["SuperGlueTask", "SUPERGLUE_TASKS"]

_FILES = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl", "dev32": "dev32.jsonl"}
_NLI2 = ("not_entailment", "entailment")


# ---------------------------------------------------------------------------------------------- field checks
def _get(row: dict, key: str, kind: type | tuple[type, ...] = str, where: str = "") -> Any:
    """row[key], checked to be of `kind` (bool is not an int here); RowError otherwise."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object at {where.rstrip('.') or 'the top level'}, got {describe_value(row)}")
    if key not in row:
        raise RowError(f"missing field {where}{key!r}")
    value = row[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise RowError(f"field {where}{key!r} must be {names}, got {describe_value(value)}")
    if isinstance(value, str):
        check_text(value, f"{where}{key}")
    return value


def _has_label(row: dict, split: str) -> bool:
    """Labels are required outside test files and read in test files that carry them (the diagnostics)."""
    return split != "test" or "label" in row


class SuperGlueTask(Task):
    """Base of the SuperGLUE tasks: JSONL reading with per-line error reports; subclasses parse one object."""

    splits = SPLITS + ("dev32",)

    def __init__(self) -> None:
        self.default_subdir = f"superglue/{self.subdir}"

    subdir: str = ""

    def _files(self, data_dir: Path, split: str) -> list[Path]:
        return [data_dir / _FILES[split]]

    def _read_file(self, path: Path, split: str, sink: BadRowSink) -> Iterator[tuple[int, Example]]:
        for line, text in iter_rows(path, sink):
            try:
                row = parse_json_row(text)
                if not isinstance(row, dict):
                    raise RowError(f"expected a JSON object, got {type(row).__name__}")
                examples = self.parse(row, split)
            except RowError as err:
                sink.report(path, line, str(err))
                continue
            for example in examples:
                yield line, example

    def parse(self, row: dict, split: str) -> list[Example]:
        """The examples of one JSON object (raise RowError when it is malformed)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ default: pairs
    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        labels = [ex.label for ex in examples]
        table = metric_table()
        return {name: table[name](labels, preds) for name in self.metrics}

    def _submission_label(self, pred: int, example: Example) -> Any:
        return self.labels[pred]  # type: ignore[index]

    def _submission_text(self, preds: list, examples: list[Example]) -> str:
        lines = [json.dumps({"idx": ex.meta["idx"], "label": self._submission_label(p, ex)})
                 for p, ex in zip(preds, examples)]
        return "\n".join(lines) + "\n"


class _PairTask(SuperGlueTask):
    """Sentence-pair classification with string or boolean labels."""

    text_a_key = "premise"
    text_b_key = "hypothesis"
    bool_labels = False  # labels are JSON booleans (False → index 0, True → index 1)

    def parse(self, row: dict, split: str) -> list[Example]:
        idx = _get(row, "idx", int)
        label = self._label(row) if _has_label(row, split) else None
        a, b = self.texts(row)
        return [Example(guid=f"{split}-{idx}", text_a=a, text_b=b, label=label, meta={"idx": idx})]

    def texts(self, row: dict) -> tuple[str, str]:
        return _get(row, self.text_a_key), _get(row, self.text_b_key)

    def _label(self, row: dict) -> int:
        if self.bool_labels:
            return int(_get(row, "label", bool))
        return self.label_index(_get(row, "label"))


class BoolQ(_PairTask):
    name, subdir, submission_name = "BoolQ", "BoolQ", "BoolQ.jsonl"
    labels = ("false", "true")
    text_a_key, text_b_key, bool_labels = "passage", "question", True


class CB(_PairTask):
    name, subdir, submission_name = "CB", "CB", "CB.jsonl"
    labels = ("neutral", "entailment", "contradiction")  # Bort's order
    metrics, main_metric = ("acc", "macro_f1"), "macro_f1"


class RTE(_PairTask):
    name, subdir, submission_name = "SuperGLUE-RTE", "RTE", "RTE.jsonl"
    labels = _NLI2


class AXb(_PairTask):
    name, subdir, submission_name = "AX-b", "AX-b", "AX-b.jsonl"
    labels = _NLI2
    metrics, main_metric = ("mcc",), "mcc"
    splits = ("test",)
    text_a_key, text_b_key = "sentence1", "sentence2"

    def _files(self, data_dir: Path, split: str) -> list[Path]:
        return [data_dir / "AX-b.jsonl"]


class AXg(_PairTask):
    """Winogender diagnostics. Consecutive rows of the file form the pronoun-swapped pairs (as the official
    scorer reads it), so `meta["parity_pair"]` is the row's position // 2; evaluation checks that both members
    of a pair share the hypothesis."""

    name, subdir, submission_name = "AX-g", "AX-g", "AX-g.jsonl"
    labels = _NLI2
    metrics, main_metric = ("acc", "gender_parity"), "acc"
    splits = ("test",)

    def _files(self, data_dir: Path, split: str) -> list[Path]:
        return [data_dir / "AX-g.jsonl"]

    def _read_file(self, path: Path, split: str, sink: BadRowSink) -> Iterator[tuple[int, Example]]:
        for position, (line, example) in enumerate(super()._read_file(path, split, sink)):
            example.meta["parity_pair"] = position // 2
            yield line, example

    def parse(self, row: dict, split: str) -> list[Example]:
        (example,) = super().parse(row, split)
        if "pair_id" in row:
            example.meta["pair_id"] = row["pair_id"]
        return [example]

    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        pairs: dict[Any, str] = {}
        for ex in examples:
            key = ex.meta.get("parity_pair")
            if key is None:
                raise ValueError(f"AX-g: example {ex.guid!r} has no meta['parity_pair']")
            if pairs.setdefault(key, ex.text_b or "") != (ex.text_b or ""):
                raise ValueError(f"AX-g: the pair {key} ({ex.guid!r}) joins two different hypotheses; "
                                 "the file's rows must come in pronoun-swapped pairs")
        labels = [ex.label for ex in examples]
        return {"acc": M.accuracy(labels, preds),
                "gender_parity": M.gender_parity(preds, [ex.meta["parity_pair"] for ex in examples])}


class WiC(_PairTask):
    name, subdir, submission_name = "WiC", "WiC", "WiC.jsonl"
    labels = ("false", "true")
    bool_labels = True

    def texts(self, row: dict) -> tuple[str, str]:
        word = _get(row, "word")
        first = _mark(_get(row, "sentence1"), row, "1")
        second = _mark(_get(row, "sentence2"), row, "2")
        return f"{word}: {first}", second


def _mark(sentence: str, row: dict, k: str) -> str:
    """`sentence` with [start_k, end_k) wrapped in asterisks; unchanged when the offsets are absent."""
    if f"start{k}" not in row and f"end{k}" not in row:
        return sentence
    start, end = _get(row, f"start{k}", int), _get(row, f"end{k}", int)
    if not 0 <= start < end <= len(sentence):
        raise RowError(f"target span start{k}={start}, end{k}={end} lies outside sentence{k} "
                       f"({len(sentence)} characters)")
    return f"{sentence[:start]}*{sentence[start:end]}*{sentence[end:]}"


class WSC(_PairTask):
    name, subdir, submission_name = "WSC", "WSC", "WSC.jsonl"
    labels = ("False", "True")
    bool_labels = True

    def parse(self, row: dict, split: str) -> list[Example]:
        (example,) = super().parse(row, split)
        target = _get(row, "target", dict)
        example.meta.update(span1_text=target["span1_text"], span2_text=target["span2_text"])
        return [example]

    def texts(self, row: dict) -> tuple[str, str]:
        text = _get(row, "text")
        target = _get(row, "target", dict)
        where = "target."
        noun = _get(target, "span1_text", where=where)
        pronoun = _get(target, "span2_text", where=where)
        spans = []
        for index_key, span, left, right in (("span1_index", noun, "[", "]"), ("span2_index", pronoun, "*", "*")):
            start = _word_offset(text, _get(target, index_key, int, where=where))
            if start is not None and text[start:start + len(span)].lower() == span.lower():
                spans.append((start, start + len(span), left, right))
        spans.sort()
        if len(spans) == 2 and spans[0][1] > spans[1][0]:
            spans = spans[1:]  # overlapping spans: mark only the later one
        for start, end, left, right in reversed(spans):
            text = f"{text[:start]}{left}{text[start:end]}{right}{text[end:]}"
        return text, f"{pronoun} refers to {noun}"


def _word_offset(text: str, index: int) -> int | None:
    """Character offset of the `index`-th whitespace-separated word of `text` (None when out of range)."""
    position = 0
    for i, word in enumerate(text.split()):
        position = text.index(word, position)
        if i == index:
            return position
        position += len(word)
    return None


class COPA(SuperGlueTask):
    name, subdir, submission_name = "COPA", "COPA", "COPA.jsonl"
    kind, labels = "multiple_choice", None
    _CONNECTIVE = {"cause": "because", "effect": "so"}

    def parse(self, row: dict, split: str) -> list[Example]:
        idx = _get(row, "idx", int)
        question = _get(row, "question")
        if question not in self._CONNECTIVE:
            raise RowError(f"bad question {question!r}; expected 'cause' or 'effect'")
        connective = self._CONNECTIVE[question]
        choices = [f"{connective} {_lower_first(_get(row, key))}" for key in ("choice1", "choice2")]
        label = None
        if _has_label(row, split):
            label = _get(row, "label", int)
            if label not in (0, 1):
                raise RowError(f"bad label {label!r}; expected 0 or 1")
        return [Example(guid=f"{split}-{idx}", text_a=_get(row, "premise"), choices=choices, label=label,
                        meta={"idx": idx, "question": question})]

    def _submission_label(self, pred: int, example: Example) -> Any:
        return pred


def _lower_first(sentence: str) -> str:
    """`sentence` continuing another one: its first letter lower-cased, except for "I" ("I", "I'm", …) and
    words with capitals inside (acronyms), which keep their case."""
    first = sentence.split(" ", 1)[0]
    if not first or first == "I" or first.startswith("I'") or any(c.isupper() for c in first[1:]):
        return sentence
    return sentence[0].lower() + sentence[1:]


class MultiRC(SuperGlueTask):
    name, subdir, submission_name = "MultiRC", "MultiRC", "MultiRC.jsonl"
    labels = ("0", "1")
    metrics, main_metric = ("f1a", "em"), "f1a"

    def parse(self, row: dict, split: str) -> list[Example]:
        passage_idx = _get(row, "idx", int)
        passage = _get(row, "passage", dict)
        text = _get(passage, "text", where="passage.")
        out = []
        for q in _get(passage, "questions", list, where="passage."):
            q_idx = _get(q, "idx", int, where="question.")
            question = _get(q, "question", where="question.")
            for a in _get(q, "answers", list, where="question."):
                a_idx = _get(a, "idx", int, where="answer.")
                label = None
                if split != "test" or "label" in a:
                    label = _get(a, "label", (int, bool), where="answer.")
                    if label not in (0, 1):
                        raise RowError(f"bad answer label {label!r}; expected 0 or 1")
                    label = int(label)
                out.append(Example(
                    guid=f"{split}-{passage_idx}-{q_idx}-{a_idx}", text_a=text,
                    text_b=f"{question} {_get(a, 'text', where='answer.')}", label=label,
                    meta={"idx": a_idx, "passage_idx": passage_idx, "question_idx": q_idx}))
        return out

    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        questions = [(ex.meta["passage_idx"], ex.meta["question_idx"]) for ex in examples]
        return M.multirc_f1a_em([ex.label for ex in examples], preds, questions)

    def _submission_text(self, preds: list, examples: list[Example]) -> str:
        # {"idx": passage, "passage": {"questions": [{"idx": question, "answers": [{"idx", "label"}]}]}}
        passages: dict[int, dict[int, list[dict]]] = {}
        for p, ex in zip(preds, examples):
            questions = passages.setdefault(ex.meta["passage_idx"], {})
            questions.setdefault(ex.meta["question_idx"], []).append({"idx": ex.meta["idx"], "label": int(p)})
        lines = [json.dumps({"idx": p_idx, "passage": {"questions": [
            {"idx": q_idx, "answers": answers} for q_idx, answers in questions.items()]}})
            for p_idx, questions in passages.items()]
        return "\n".join(lines) + "\n"


class ReCoRD(SuperGlueTask):
    name, subdir, submission_name = "ReCoRD", "ReCoRD", "ReCoRD.jsonl"
    kind, labels = "multiple_choice", None
    metrics, main_metric = ("f1", "em"), "f1"

    def parse(self, row: dict, split: str) -> list[Example]:
        passage_idx = _get(row, "idx", int)
        passage = _get(row, "passage", dict)
        text = _get(passage, "text", where="passage.")
        entities: list[str] = []
        for e in _get(passage, "entities", list, where="passage."):
            start, end = _get(e, "start", int, where="entity."), _get(e, "end", int, where="entity.")
            if not 0 <= start <= end < len(text):  # ReCoRD's end offsets are inclusive
                raise RowError(f"entity span {start}..{end} lies outside the passage ({len(text)} characters)")
            entity = text[start:end + 1]
            if entity not in entities:
                entities.append(entity)
        if not entities:
            raise RowError("passage has no candidate entities")
        context = text.replace("@highlight\n", "- ")
        out = []
        for q in _get(row, "qas", list):
            q_idx = _get(q, "idx", int, where="qas.")
            query = _get(q, "query", where="qas.")
            if "@placeholder" not in query:
                raise RowError(f"query {q_idx} has no @placeholder")
            answers: list[str] = []
            label = None
            if split != "test" or "answers" in q:
                for a in _get(q, "answers", list, where="qas."):
                    answer = _get(a, "text", where="answer.")
                    if answer not in answers:
                        answers.append(answer)
                matches = [i for i, e in enumerate(entities) if e in answers]
                if not matches:
                    raise RowError(f"query {q_idx}: no candidate entity equals a gold answer {answers!r}")
                label = matches[0]
            out.append(Example(
                guid=f"{split}-{q_idx}", text_a=context,
                choices=[query.replace("@placeholder", e) for e in entities], label=label,
                meta={"idx": q_idx, "passage_idx": passage_idx, "entities": list(entities), "answers": answers}))
        return out

    def _evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        texts = [ex.meta["entities"][p] for p, ex in zip(preds, examples)]
        return M.record_f1_em(texts, [ex.meta["answers"] for ex in examples])

    def _submission_label(self, pred: int, example: Example) -> Any:
        return example.meta["entities"][pred]


SUPERGLUE_TASKS: dict[str, SuperGlueTask] = {
    t.name: t for t in (BoolQ(), CB(), COPA(), MultiRC(), ReCoRD(), RTE(), WiC(), WSC(), AXb(), AXg())
}
