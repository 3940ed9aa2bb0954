"""Task readers on the real GLUE / SuperGLUE / RACE files: row counts, label sets, input construction,
bad input, and the leaderboard files.

The expected counts were tallied from the files independently (`cut`/`sort | uniq -c` on the TSVs, `json`
on the JSONL and RACE files) and are checked again here by a plain parse written in this test.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bort.data.tasks import TaskDataError, available_tasks, get_task
from conftest import shared_path

# task, directory under ../shared/data, split, rows, label counts in the submission spelling (None: not checked)
REAL_FILES = [
    ("CoLA", "glue/CoLA", "dev", 40, {"0": 11, "1": 29}),
    ("SST-2", "glue/SST-2", "dev", 872, {"0": 428, "1": 444}),
    ("MRPC", "glue/MRPC", "dev", 408, {"0": 129, "1": 279}),
    ("STS-B", "glue/STS-B", "dev", 40, None),
    ("QQP", "glue/QQP", "train", 3, {"0": 2, "1": 1}),
    ("QQP", "glue/QQP", "dev", 2, {"0": 2}),
    ("QQP", "glue/QQP", "test", 1, None),
    ("MNLI", "glue/MNLI", "train", 3, {"neutral": 1, "entailment": 2}),
    ("MNLI", "glue/MNLI", "dev", 2, {"neutral": 1, "contradiction": 1}),
    ("MNLI", "glue/MNLI", "test", 1, None),
    ("MNLI-mm", "glue/MNLI", "dev", 2, {"contradiction": 2}),
    ("MNLI-mm", "glue/MNLI", "test", 1, None),
    ("QNLI", "glue/QNLI", "dev", 40, {"entailment": 22, "not_entailment": 18}),
    ("RTE", "glue/RTE", "dev", 277, {"entailment": 146, "not_entailment": 131}),
    ("WNLI", "glue/WNLI", "train", 3, {"1": 3}),
    ("WNLI", "glue/WNLI", "dev", 2, {"0": 1, "1": 1}),
    ("WNLI", "glue/WNLI", "test", 1, None),
    ("AX", "glue/AX", "test", 3, None),
    ("BoolQ", "superglue/BoolQ", "train", 32, {"true": 18, "false": 14}),
    ("BoolQ", "superglue/BoolQ", "dev32", 32, {"true": 19, "false": 13}),
    ("CB", "superglue/CB", "train", 32, {"entailment": 19, "contradiction": 10, "neutral": 3}),
    ("CB", "superglue/CB", "dev", 56, {"contradiction": 28, "entailment": 23, "neutral": 5}),
    ("CB", "superglue/CB", "dev32", 32, {"contradiction": 13, "entailment": 17, "neutral": 2}),
    ("COPA", "superglue/COPA", "train", 32, {0: 14, 1: 18}),
    ("COPA", "superglue/COPA", "dev", 100, {0: 55, 1: 45}),
    ("COPA", "superglue/COPA", "dev32", 32, {0: 15, 1: 17}),
    ("MultiRC", "superglue/MultiRC", "train", 154, {"1": 68, "0": 86}),  # answer options of 32 questions
    ("MultiRC", "superglue/MultiRC", "dev32", 167, {"1": 74, "0": 93}),
    ("ReCoRD", "superglue/ReCoRD", "train", 32, None),
    ("ReCoRD", "superglue/ReCoRD", "dev32", 32, None),
    ("ReCoRD", "superglue/ReCoRD/sample", "train", 9, None),  # 3 passages with 1, 6 and 2 queries
    ("ReCoRD", "superglue/ReCoRD/sample", "dev", 2, None),
    ("ReCoRD", "superglue/ReCoRD/sample", "test", 1, None),
    ("SuperGLUE-RTE", "superglue/RTE", "train", 32, {"not_entailment": 19, "entailment": 13}),
    ("SuperGLUE-RTE", "superglue/RTE", "dev", 277, {"not_entailment": 131, "entailment": 146}),
    ("SuperGLUE-RTE", "superglue/RTE", "dev32", 32, {"entailment": 21, "not_entailment": 11}),
    ("WiC", "superglue/WiC", "train", 32, {"true": 17, "false": 15}),
    ("WiC", "superglue/WiC", "dev32", 32, {"true": 16, "false": 16}),
    ("WSC", "superglue/WSC", "train", 32, {"True": 32}),
    ("WSC", "superglue/WSC", "dev32", 32, {"True": 10, "False": 22}),
    ("RACE-high", "race/RACE", "train", 12, None),
    ("RACE-high", "race/RACE", "dev", 6, None),
    ("RACE-high", "race/RACE", "test", 8, None),
    ("RACE-middle", "race/RACE", "train", 10, None),
    ("RACE-middle", "race/RACE", "dev", 11, None),
    ("RACE-middle", "race/RACE", "test", 14, None),
    ("RACE", "race/RACE", "train", 22, {0: 4, 1: 8, 2: 5, 3: 5}),  # answer letters A-D
    ("RACE", "race/RACE", "dev", 17, {0: 5, 1: 4, 2: 4, 3: 4}),
    ("RACE", "race/RACE", "test", 22, {0: 5, 1: 3, 2: 7, 3: 7}),
]


def _data(subdir: str) -> Path:
    return shared_path("data", *subdir.split("/"))


def _plain_count(task_name: str, directory: Path, split: str) -> int:
    """Rows of the split counted without the library: TSV lines minus header, JSON objects, RACE questions."""
    task = get_task(task_name)
    paths = task.files(directory, split)
    if task.default_subdir.startswith("glue"):
        lines = [line for line in paths[0].read_text(encoding="utf-8-sig").split("\n") if line]
        return len(lines) - (0 if task_name == "CoLA" and split != "test" else 1)
    if task.default_subdir.startswith("race"):
        return sum(len(json.loads(p.read_text(encoding="utf-8"))["questions"]) for p in paths)
    rows = [json.loads(line) for line in paths[0].read_text(encoding="utf-8").split("\n") if line.strip()]
    if task_name == "MultiRC":
        return sum(len(q["answers"]) for r in rows for q in r["passage"]["questions"])
    if task_name == "ReCoRD":
        return sum(len(r["qas"]) for r in rows)
    return len(rows)


@pytest.mark.parametrize("name, subdir, split, rows, label_counts", REAL_FILES,
                         ids=[f"{r[0]}-{r[1].split('/')[-1]}-{r[2]}" for r in REAL_FILES])
def test_real_files_counts_and_labels(name, subdir, split, rows, label_counts):
    task = get_task(name)
    directory = _data(subdir)
    examples = task.read(directory, split)
    assert len(examples) == rows == _plain_count(name, directory, split)
    assert examples.bad_rows == []
    assert len({ex.guid for ex in examples}) == rows
    assert all(isinstance(ex.text_a, str) and ex.text_a for ex in examples)
    if task.kind == "multiple_choice":
        assert all(ex.text_b is None and ex.choices and all(isinstance(c, str) for c in ex.choices)
                   for ex in examples)
    elif name not in ("CoLA", "SST-2"):
        assert all(isinstance(ex.text_b, str) for ex in examples)
    if label_counts is not None:
        spelled = Counter(task.labels[ex.label] if task.labels else ex.label for ex in examples)
        assert spelled == Counter(label_counts)
    if split == "test" and not name.startswith("RACE"):
        assert all(ex.label is None for ex in examples)  # GLUE/SuperGLUE test files carry no labels
    else:
        assert all(ex.label is not None for ex in examples)


def test_label_sets_in_official_spelling():
    expected = {
        "CoLA": ("0", "1"), "SST-2": ("0", "1"), "MRPC": ("0", "1"), "QQP": ("0", "1"), "WNLI": ("0", "1"),
        "MNLI": ("neutral", "entailment", "contradiction"), "MNLI-mm": ("neutral", "entailment", "contradiction"),
        "AX": ("neutral", "entailment", "contradiction"), "QNLI": ("not_entailment", "entailment"),
        "RTE": ("not_entailment", "entailment"), "SuperGLUE-RTE": ("not_entailment", "entailment"),
        "AX-b": ("not_entailment", "entailment"), "AX-g": ("not_entailment", "entailment"),
        "BoolQ": ("false", "true"), "WiC": ("false", "true"), "WSC": ("False", "True"),
        "CB": ("neutral", "entailment", "contradiction"), "MultiRC": ("0", "1"),
    }
    for name, labels in expected.items():
        assert get_task(name).labels == labels, name
    for name in ("STS-B", "COPA", "ReCoRD", "RACE", "RACE-high", "RACE-middle"):
        assert get_task(name).labels is None
    assert get_task("STS-B").kind == "regression"
    assert {get_task(n).kind for n in ("COPA", "ReCoRD", "RACE")} == {"multiple_choice"}


def test_registry_names_and_aliases():
    names = available_tasks()
    assert names == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "MNLI-mm", "QNLI", "RTE", "WNLI", "AX",
                     "BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "SuperGLUE-RTE", "WiC", "WSC", "AX-b", "AX-g",
                     "RACE-high", "RACE-middle", "RACE"]
    for name in names:
        task = get_task(name.upper())
        assert task.name == name and task.main_metric in task.metrics
    assert get_task("mnli-m") is get_task("MNLI")
    assert get_task("rte-superglue") is get_task("SuperGLUE-RTE")
    assert get_task("rte").default_subdir == "glue/RTE"
    assert get_task("SuperGLUE-RTE").default_subdir == "superglue/RTE"
    with pytest.raises(ValueError, match="unknown task 'SST-3'.*SST-2.*RACE-middle"):
        get_task("SST-3")  # (the original's "SST" is an alias of SST-2: tests/test_original_commands.py)
    assert get_task("AX").splits == get_task("AX-b").splits == get_task("AX-g").splits == ("test",)
    with pytest.raises(ValueError, match="no split 'train'; valid splits: test"):
        get_task("AX-b").read(".", "train")
    with pytest.raises(ValueError, match="valid splits: train, dev, test"):
        get_task("SST-2").files(".", "val")


# ---------------------------------------------------------------------------------------------- file contents
def test_glue_rows_read_as_written():
    mrpc = get_task("MRPC").read(_data("glue/MRPC"), "dev")
    assert mrpc[0].text_a == ("He said the foodservice pie business doesn 't fit the company 's long-term "
                              "growth strategy .")
    assert mrpc[0].text_b.startswith('" The foodservice pie business')  # an unquoted '"' stays text
    assert mrpc[0].label == 1 and mrpc[0].meta["idx"] == 0
    assert not any("\ufeff" in ex.text_a for ex in mrpc)  # the BOM is not part of the first row
    cola = get_task("CoLA").read(_data("glue/CoLA"), "dev")
    assert cola[0].text_a == "The sailors rode the breeze clear of the rocks." and cola[0].text_b is None
    stsb = get_task("STS-B").read(_data("glue/STS-B"), "dev")
    assert [ex.label for ex in stsb[:3]] == [5.0, 4.75, 5.0] and all(0 <= ex.label <= 5 for ex in stsb)
    mnli = get_task("MNLI").read(_data("glue/MNLI"), "dev")
    mnli_mm = get_task("MNLI-mm").read(_data("glue/MNLI"), "dev")
    assert mnli[0].text_a == "The new rights are nice enough"
    assert mnli_mm[0].text_a != mnli[0].text_a
    assert get_task("MNLI-mm").files(_data("glue/MNLI"), "test")[0].name == "test_mismatched.tsv"
    qqp = get_task("QQP").read(_data("glue/QQP"), "dev")
    assert [ex.meta["idx"] for ex in qqp] == [201359, 263843]  # the `id` column
    ax = get_task("AX").read(_data("glue/AX"), "test")
    assert [ex.meta["idx"] for ex in ax] == [0, 1, 2] and ax[1].text_b == "The cat sat on the mat."


def test_superglue_input_construction():
    copa = get_task("COPA").read(_data("superglue/COPA"), "dev")
    # {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
    #  "choice2": "Water flowed from the spout.", "question": "effect", "label": 1}
    assert copa[0].text_a == "The man turned on the faucet."
    assert copa[0].choices == ["so the toilet filled with water.", "so water flowed from the spout."]
    assert copa[0].label == 1
    causes = [ex for ex in copa if ex.meta["question"] == "cause"]
    assert causes and all(c.startswith("because ") for ex in causes for c in ex.choices)
    assert any(c.startswith("so I ") for ex in copa for c in ex.choices)  # "I" keeps its case

    wic = get_task("WiC").read(_data("superglue/WiC"), "train")
    assert (wic[0].text_a, wic[0].text_b) == ("feel: You make me *feel* naked.", "She *felt* small and insignificant.")

    wsc = get_task("WSC").read(_data("superglue/WSC"), "dev32")
    assert wsc[0].text_a.startswith("When [Mr. Bond] , the veterinarian,") and "shook *his* head" in wsc[0].text_a
    assert wsc[0].text_b == "his refers to Mr. Bond"
    for ex in wsc:  # every span of the real rows is found (case and trailing punctuation tolerated)
        assert ex.text_a.count("[") == 1 and ex.text_a.count("*") == 2, ex.text_a
        assert f"*{ex.meta['span2_text']}*" in ex.text_a
        assert f"[{ex.meta['span1_text'].lower()}]" in ex.text_a.lower()

    multirc = get_task("MultiRC").read(_data("superglue/MultiRC"), "train")
    assert len({(ex.meta["passage_idx"], ex.meta["question_idx"]) for ex in multirc}) == 32
    first = multirc[0]
    assert first.text_b == "How does Jason react to the stranger who arrives with Susan? He welcomes him with open arm"
    assert first.meta == {"idx": 333, "passage_idx": 6, "question_idx": first.meta["question_idx"]}
    assert first.label == 0 and multirc[1].label == 1

    for ex in get_task("ReCoRD").read(_data("superglue/ReCoRD"), "dev32"):
        raw = ex.meta["entities"]
        assert len(set(raw)) == len(raw) and len(ex.choices) == len(raw)
        assert "@highlight" not in ex.text_a and all("@placeholder" not in c for c in ex.choices)
        assert raw[ex.label] in ex.meta["answers"]
    record = get_task("ReCoRD").read(_data("superglue/ReCoRD"), "dev32")
    # The first query: "They will sew our lips, but we will chant, 'Long live @placeholder.'"
    assert record[0].meta["answers"] == ["Benazir Bhutto", "Bhutto"]
    assert record[0].choices[record[0].label] == ("They will sew our lips, but we will chant, "
                                                  "'Long live Benazir Bhutto.'")
    assert record[0].meta["entities"][:3] == ["Islamabad", "Pakistan", "CNN"]  # "Pakistan" twice in the passage


def test_race_input_construction():
    race = get_task("RACE-high").read(_data("race/RACE"), "train")
    ex = race[0]  # high123.txt, question 0: "Hearing Mother's shouts, the boy  _  ." answer C
    assert ex.meta == {"id": "high123.txt", "question": 0, "level": "high"}
    assert ex.choices[2] == "Hearing Mother's shouts, the boy  swam back towards the shore  ."
    assert ex.label == 2 and ex.text_a.startswith("Some years ago on a hot summer day")
    second = race[1]  # not a cloze: the option follows the question; answer D
    assert second.choices[0] == ("Which of the following statements is true according to the text? "
                                 "A crocodile attacked him when the boy and his mother were swimming.")
    assert second.label == 3
    both = get_task("RACE").read(_data("race/RACE"), "dev")
    assert [ex.meta["level"] for ex in both] == ["high"] * 6 + ["middle"] * 11


# ---------------------------------------------------------------------------------------------- missing files
def test_missing_files_list_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        get_task("MNLI-mm").read(tmp_path, "dev")
    assert str(tmp_path / "dev_mismatched.tsv") in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        get_task("AX").read(tmp_path, "test")
    for name in ("ax.tsv", "AX.tsv", "diagnostic.tsv"):
        assert str(tmp_path / name) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        get_task("BoolQ").read(tmp_path, "dev")
    assert str(tmp_path / "val.jsonl") in str(info.value)
    (tmp_path / "dev" / "high").mkdir(parents=True)
    (tmp_path / "dev" / "high" / "1.txt").write_text(
        json.dumps({"article": "x", "questions": ["q?"], "options": [["a", "b"]], "answers": ["A"], "id": "high1.txt"}))
    with pytest.raises(FileNotFoundError) as info:  # middle is missing
        get_task("RACE").read(tmp_path, "dev")
    assert str(tmp_path / "dev" / "middle" / "*.txt") in str(info.value)
    assert len(get_task("RACE-high").read(tmp_path, "dev")) == 1
    assert not all(p.exists() for p in get_task("RACE").files(tmp_path, "test"))
    # Given the data root instead of the task directory, the message points at the right one.
    root = tmp_path / "root"
    (root / "glue" / "SST-2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="did you mean .*glue/SST-2"):
        get_task("SST-2").read(root, "dev")


# ---------------------------------------------------------------------------------------------- bad rows
def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_glue_bad_rows_stop_or_are_skipped_with_count(tmp_path):
    path = _write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\nno tab here\nbad label\t2\nfine\t0\n"
                                        "three\tcolumns\t1\n   \n\n")
    task = get_task("SST-2")
    with pytest.raises(TaskDataError, match=r"dev\.tsv, line 3: expected 2 tab-separated columns, found 1"):
        task.read(tmp_path, "dev")
    examples = task.read(tmp_path, "dev", skip_bad_rows=True)
    assert [ex.text_a for ex in examples] == ["good", "fine"]
    # A line of blanks is a bad row; only an empty line is no row at all.
    assert [(r.path, r.line) for r in examples.bad_rows] == [(path, 3), (path, 4), (path, 6), (path, 7)]
    assert "bad label '2'; expected one of '0', '1'" in examples.bad_rows[1].reason

    _write(tmp_path / "cola" / "dev.tsv", "src\t1\t\tA sentence.\nsrc\tx\t\tBad label.\nsrc\t1\tToo few.\n")
    examples = get_task("CoLA").read(tmp_path / "cola", "dev", skip_bad_rows=True)
    assert len(examples) == 1 and [r.line for r in examples.bad_rows] == [2, 3]

    _write(tmp_path / "stsb" / "dev.tsv",
           "index\tsentence1\tsentence2\tscore\n0\ta\tb\t4.2\n1\tc\td\tnan\n2\te\tf\thigh\n")
    examples = get_task("STS-B").read(tmp_path / "stsb", "dev", skip_bad_rows=True)
    assert [ex.label for ex in examples] == [4.2] and len(examples.bad_rows) == 2

    _write(tmp_path / "rte" / "dev.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")  # no sentence2 column
    with pytest.raises(TaskDataError, match=r"line 1: expected columns 'sentence2' in the header"):
        get_task("RTE").read(tmp_path / "rte", "dev")

    _write(tmp_path / "dup" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                         "0\tc\td\tentailment\n")
    with pytest.raises(TaskDataError, match="line 3: duplicate id 'dev-0'"):
        get_task("RTE").read(tmp_path / "dup", "dev")

    _write(tmp_path / "utf" / "dev.tsv", b"sentence\tlabel\nok\t1\n\xff\xfe broken\t0\n")
    examples = get_task("SST-2").read(tmp_path / "utf", "dev", skip_bad_rows=True)
    assert len(examples) == 1 and examples.bad_rows[0].reason == "not valid UTF-8"


def test_jsonl_bad_rows(tmp_path):
    good = {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}
    lines = [json.dumps(good), '{"premise": "p", "hypothesis": ', json.dumps({**good, "idx": 2, "label": "maybe"}),
             json.dumps({**good, "idx": 3, "hypothesis": 7}), "[1, 2]", json.dumps({**good, "idx": 5})]
    path = _write(tmp_path / "val.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match=r"val\.jsonl, line 2: broken JSON"):
        get_task("CB").read(tmp_path, "dev")
    examples = get_task("CB").read(tmp_path, "dev", skip_bad_rows=True)
    assert [ex.meta["idx"] for ex in examples] == [0, 5]
    assert [(r.path, r.line) for r in examples.bad_rows] == [(path, 2), (path, 3), (path, 4), (path, 5)]
    reasons = [r.reason for r in examples.bad_rows]
    assert "bad label 'maybe'" in reasons[1]
    assert reasons[2] == "field 'hypothesis' must be str, got int '7'"
    assert reasons[3] == "expected a JSON object, got list"

    _write(tmp_path / "boolq" / "train.jsonl", json.dumps({"passage": "p", "question": "q", "idx": 1, "label": "yes"}))
    with pytest.raises(TaskDataError, match="line 1: field 'label' must be bool"):
        get_task("BoolQ").read(tmp_path / "boolq", "train")
    _write(tmp_path / "copa" / "val.jsonl", json.dumps(
        {"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0, "idx": 0}))
    with pytest.raises(TaskDataError, match="bad question 'why'"):
        get_task("COPA").read(tmp_path / "copa", "dev")
    _write(tmp_path / "wic" / "train.jsonl", json.dumps(
        {"word": "w", "sentence1": "a w", "sentence2": "w b", "idx": 0, "label": True, "start1": 2, "end1": 9,
         "start2": 0, "end2": 1}))
    with pytest.raises(TaskDataError, match="outside sentence1"):
        get_task("WiC").read(tmp_path / "wic", "train")


def test_race_bad_files(tmp_path):
    level = tmp_path / "train" / "middle"
    _write(level / "1.txt", json.dumps({"article": "A.", "questions": ["q1?", "q2?"],
                                        "options": [["a", "b"], ["c", "d"]], "answers": ["B", "E"],
                                        "id": "middle1.txt"}))
    _write(level / "2.txt", '{"article": "A.",\n "questions": [}')
    with pytest.raises(TaskDataError, match=r"1\.txt, line 1: question 1: bad answer 'E'; expected one of A, B"):
        get_task("RACE-middle").read(tmp_path, "train")
    examples = get_task("RACE-middle").read(tmp_path, "train", skip_bad_rows=True)
    assert len(examples) == 1 and examples[0].label == 1
    assert [(r.path.name, r.line) for r in examples.bad_rows] == [("1.txt", 1), ("2.txt", 2)]
    assert examples.bad_rows[1].reason.startswith("broken JSON")


# ---------------------------------------------------------------------------------------------- submissions
def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_glue_submissions(tmp_path):
    wnli = get_task("WNLI")
    test = wnli.read(_data("glue/WNLI"), "test")
    path = wnli.write_submission([1], test, tmp_path)
    assert path == tmp_path / "WNLI.tsv" and _lines(path) == ["index\tprediction", "0\t1"]
    mnli = get_task("MNLI")
    assert _lines(mnli.write_submission([2], mnli.read(_data("glue/MNLI"), "test"), tmp_path)) == [
        "index\tprediction", "0\tcontradiction"]
    assert (tmp_path / "MNLI-m.tsv").is_file()
    mm = get_task("MNLI-mm")
    assert mm.write_submission([0], mm.read(_data("glue/MNLI"), "test"), tmp_path).name == "MNLI-mm.tsv"
    ax = get_task("AX")
    assert _lines(ax.write_submission([1, 2, 0], ax.read(_data("glue/AX"), "test"), tmp_path))[1:] == [
        "0\tentailment", "1\tcontradiction", "2\tneutral"]
    stsb = get_task("STS-B")
    dev = stsb.read(_data("glue/STS-B"), "dev")
    rows = _lines(stsb.write_submission([ex.label for ex in dev], dev, tmp_path))
    assert rows[:3] == ["index\tprediction", "0\t5.000", "1\t4.750"] and len(rows) == 41
    # Nothing but the submissions is left in the directory (atomic writes clean up their temporary files).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "STS-B.tsv",
                                                          "WNLI.tsv"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def test_superglue_submissions(tmp_path):
    for name, subdir, expected in [("BoolQ", "BoolQ", {"true", "false"}), ("WiC", "WiC", {"true", "false"}),
                                   ("WSC", "WSC", {"True", "False"}), ("CB", "CB", {"neutral", "entailment"}),
                                   ("SuperGLUE-RTE", "RTE", {"entailment", "not_entailment"})]:
        task = get_task(name)
        dev = task.read(_data(f"superglue/{subdir}"), "dev32")
        preds = [i % 2 for i in range(len(dev))]
        out = _jsonl(task.write_submission(preds, dev, tmp_path))
        assert [r["idx"] for r in out] == [ex.meta["idx"] for ex in dev]
        assert {r["label"] for r in out} == expected, name
        assert out[0]["label"] == task.labels[0]
    assert (tmp_path / "RTE.jsonl").is_file() and (tmp_path / "BoolQ.jsonl").is_file()

    copa = get_task("COPA")
    dev = copa.read(_data("superglue/COPA"), "dev")
    assert _jsonl(copa.write_submission([1] * 100, dev, tmp_path))[0] == {"idx": 0, "label": 1}

    multirc = get_task("MultiRC")
    dev = multirc.read(_data("superglue/MultiRC"), "dev32")
    out = _jsonl(multirc.write_submission([ex.label for ex in dev], dev, tmp_path))
    raw = [json.loads(line) for line in _lines(_data("superglue/MultiRC") / "dev32.jsonl")]
    assert len(out) == len(raw) == 32
    for got, want in zip(out, raw):  # the leaderboard's nesting, with the gold labels put back
        assert got == {"idx": want["idx"], "passage": {"questions": [
            {"idx": q["idx"], "answers": [{"idx": a["idx"], "label": a["label"]} for a in q["answers"]]}
            for q in want["passage"]["questions"]]}}

    record = get_task("ReCoRD")
    test = record.read(_data("superglue/ReCoRD/sample"), "test")
    assert test[0].label is None and test[0].meta["answers"] == []
    out = _jsonl(record.write_submission([1], test, tmp_path))
    assert out == [{"idx": 0, "label": test[0].meta["entities"][1]}] and out[0]["label"] == "Donald Trump"


def test_race_submission(tmp_path):
    race = get_task("RACE-middle")
    dev = race.read(_data("race/RACE"), "dev")
    out = _jsonl(race.write_submission([ex.label for ex in dev], dev, tmp_path))
    assert (tmp_path / "RACE-middle.jsonl").is_file()
    assert out[0] == {"id": "middle13.txt", "question": 0, "label": "A"}
    answers = [a for p in race.files(_data("race/RACE"), "dev") for a in json.loads(p.read_text())["answers"]]
    assert [r["label"] for r in out] == answers
