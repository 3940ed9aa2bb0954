"""Hostile data files: pretraining shards and fine-tuning task files that are damaged, hand-edited or made for
something else. Each case must fail with the project's own error naming the file and the record, line or byte
offset and what was expected (or, for a task file, be skipped and counted with `skip_bad_rows`), never with a
bare IndexError/TypeError/KeyError/RecursionError from deep inside, and never silently.

Shards here are written by hand (header record + instance records) so that each test controls every byte.
"""
from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from bort.data.instance_format import FORMAT, FORMAT_VERSION, encode_header, encode_instance
from bort.data.instances import InstanceSettings
from bort.data.cli import main as create_main
from bort.data.pretraining import create_pretraining_data
from bort.data.pretraining_dataset import PretrainingDataError, PretrainingDataset, PretrainingShard, collate
from bort.data.recordio import MAGIC, RecordIOError, RecordIOReader, RecordIOWriter
from bort.data.tasks import TaskDataError, get_task

VOCAB_SIZE = 100
MAX_SEQ = 16
HEADER: dict[str, Any] = {
    "format": FORMAT, "format_version": FORMAT_VERSION, "tokenizer_kind": "wordpiece", "lowercase": True,
    "vocab_hash": "ab" * 32, "vocab_size": VOCAB_SIZE,
    "special_ids": {"cls": 2, "sep": 3, "pad": 0, "unk": 1, "mask": 4},
    "id_dtype": "uint16", "position_dtype": "uint16", "settings": {"max_seq_length": MAX_SEQ},
    "shard_index": 0, "num_shards": 1,
}
GOOD = encode_instance([2, 10, 4, 11, 3], [2], [12])


def _short_id(value: Any) -> str:
    """A short test id from a parameter (the expected message fragments), so that ids stay readable."""
    return "" if not isinstance(value, str) else value[:48]


def write_shard(path: Path, records: list[bytes], header: dict[str, Any] | bytes = HEADER) -> Path:
    """A shard (+ .idx) holding `header` as record 0 and `records` after it."""
    with RecordIOWriter(path) as writer:
        writer.write(header if isinstance(header, bytes) else encode_header(header))
        for record in records:
            writer.write(record)
    return path


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ============================================================================================ shard records
def test_out_of_vocabulary_input_id_names_shard_record_and_limit(tmp_path: Path) -> None:
    # The id a wrong-vocabulary shard holds: read as is, it made training die with torch's
    # "IndexError: index out of range in self" and no word of which file or record.
    shard = write_shard(tmp_path / "part-000.rec", [GOOD, encode_instance([2, 10, 4, 150, 3], [2], [12])])
    for allow_truncated in (False, True):
        ds = PretrainingDataset(shard, allow_truncated=allow_truncated)
        assert ds[0]["input_ids"].tolist() == [2, 10, 4, 11, 3]
        with pytest.raises(PretrainingDataError) as err:
            ds[1]
        message = _message(err)
        assert str(shard) in message and "record 2" in message and "byte offset" in message
        assert "input_ids[3] = 150" in message and f"vocabulary of {VOCAB_SIZE} ids" in message
        assert "0..99" in message
        # Not a damaged tail: nothing is counted as skipped, the record is refused.
        assert ds.num_damaged == 0


def test_out_of_vocabulary_masked_id_and_uint32_ids(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "a.rec", [encode_instance([2, 10, 4, 11, 3], [1, 2], [12, VOCAB_SIZE])])
    with pytest.raises(PretrainingDataError, match=r"a\.rec: record 1 at byte offset \d+: masked_ids\[1\] = 100 "
                                                   r"is out of range"):
        PretrainingShard(shard)[0]
    # Ids stored as uint32 (a flag per record) are checked the same way, beyond the uint16 range too.
    shard = write_shard(tmp_path / "b.rec", [encode_instance([2, 70_000, 3], [1], [5], ids_u32=True)])
    with pytest.raises(PretrainingDataError, match=r"b\.rec: record 1 .*input_ids\[1\] = 70000 is out of range"):
        PretrainingShard(shard)[0]


def _raw_instance(version: int = 1, flags: int = 0, length: int = 3, ids: list[int] | None = None,
                  positions: list[int] | None = None, masked: list[int] | None = None) -> bytes:
    ids = [2, 10, 3] if ids is None else ids
    positions = [1] if positions is None else positions
    masked = [11] if masked is None else masked
    body = struct.pack(f"<{len(ids) + len(positions) + len(masked)}H", *ids, *positions, *masked)
    return struct.pack("<BBHI", version, flags, len(positions), length) + body


@pytest.mark.parametrize("payload, expected", [
    (_raw_instance(version=2), "instance layout version 2"),
    (_raw_instance(flags=8), "unknown flag bits 0x08"),
    (_raw_instance(length=0, ids=[], positions=[], masked=[]), "valid length 0"),
    (_raw_instance(length=MAX_SEQ + 1, ids=[5] * (MAX_SEQ + 1)), f"valid length 17 exceeds the shard's "
                                                                  f"max_seq_length {MAX_SEQ}"),
    (_raw_instance(length=4), "its header (valid length 4, 1 masked) needs"),  # lengths inconsistent
    (_raw_instance(positions=[3]), "below the valid length 3, got [3]"),
    (_raw_instance(ids=[2, 10, 11, 3], length=4, positions=[2, 1], masked=[5, 6]), "strictly increasing"),
    (b"\x01\x00", "shorter than its 8-byte header"),
], ids=["version", "flags", "empty", "too-long", "length-mismatch", "position-out-of-range", "positions-unsorted",
        "short"])
def test_inconsistent_instance_records_are_named(tmp_path: Path, payload: bytes, expected: str) -> None:
    shard = write_shard(tmp_path / "part-003.rec", [GOOD, payload])
    ds = PretrainingShard(shard)
    assert ds[0]["valid_length"] == 5
    with pytest.raises(PretrainingDataError) as err:
        ds[1]
    message = _message(err)
    assert str(shard) in message and "record 2 at byte offset" in message and expected in message


def test_valid_hand_made_shard_batches(tmp_path: Path) -> None:
    # The control for the tests above: the same writer with in-range values reads and batches.
    shard = write_shard(tmp_path / "ok.rec", [GOOD, encode_instance([2, VOCAB_SIZE - 1, 3], [1], [VOCAB_SIZE - 1])])
    ds = PretrainingDataset(shard)
    batch = collate([ds[0], ds[1]], pad_id=ds.shards[0].pad_id)
    assert batch["input_ids"].tolist() == [[2, 10, 4, 11, 3], [2, 99, 3, 0, 0]]
    assert batch["masked_ids"].tolist() == [[12], [99]]


# ============================================================================================ shard headers
def _without(key: str, inner: str | None = None) -> dict[str, Any]:
    header = json.loads(json.dumps(HEADER))
    if inner is None:
        del header[key]
    else:
        del header[key][inner]
    return header


def _with(key: str, value: Any, inner: str | None = None) -> dict[str, Any]:
    header = json.loads(json.dumps(HEADER))
    if inner is None:
        header[key] = value
    else:
        header[key][inner] = value
    return header


@pytest.mark.parametrize("header, expected", [
    (_without("vocab_hash"), "header field 'vocab_hash' is missing"),
    (_with("vocab_hash", 5), "header field 'vocab_hash' must be a SHA-256 hex digest (64 hex digits), got int 5"),
    (_without("vocab_size"), "header field 'vocab_size' is missing"),
    (_with("vocab_size", "100"), "header field 'vocab_size' must be an integer in 1..2147483648, got str '100'"),
    (_with("vocab_size", True), "'vocab_size' must be an integer in 1..2147483648, got bool True"),
    (_with("vocab_size", 1e12), "'vocab_size' must be an integer in 1..2147483648, got float"),
    (_with("vocab_size", 0), "'vocab_size' must be an integer in 1..2147483648, got int 0"),
    (_without("special_ids"), "header field 'special_ids' is missing"),
    (_with("special_ids", [0, 1]), "header field 'special_ids' must be an object of special token ids, got list"),
    (_without("special_ids", "pad"), "header field 'special_ids.pad' is missing"),
    (_with("special_ids", VOCAB_SIZE, "pad"), "'special_ids.pad' must be an integer id in 0..99, got int 100"),
    (_with("special_ids", "x", "mask"), "'special_ids.mask' must be an integer id in 0..99 or null, got str 'x'"),
    (_without("settings"), "header field 'settings' is missing"),
    (_without("settings", "max_seq_length"), "header field 'settings.max_seq_length' is missing"),
    (_with("settings", "16", "max_seq_length"), "'settings.max_seq_length' must be a positive integer, got str"),
    (_with("tokenizer_kind", None), "header field 'tokenizer_kind' must be a string, got null"),
    (_with("id_dtype", "int8"), "header field 'id_dtype' must be 'uint16' or 'uint32', got str 'int8'"),
    (_with("format_version", True), "format version True; this reader knows 1"),
    (_with("format", "other"), "not a bort-pretraining-instances header (format='other')"),
    (b"[1, 2]", "not a bort-pretraining-instances header (format=None)"),
    (b"[" * 100_000, "not a JSON header"),  # nested beyond the decoder's recursion limit
    (b'{"format": 1' + b"1" * 5000 + b"}", "not a JSON header"),  # an integer too long to convert
    (b"\xff\xfe{}", "not a JSON header"),
], ids=lambda v: _short_id(v))
def test_bad_headers_name_the_shard_and_the_field(tmp_path: Path, header: Any, expected: str) -> None:
    shard = write_shard(tmp_path / "part-007.rec", [GOOD], header if isinstance(header, bytes) else
                        encode_header(header))
    with pytest.raises(PretrainingDataError) as err:
        PretrainingDataset(shard)
    message = _message(err)
    assert message.startswith(f"{shard}: header (record 0, byte offset 0): ")
    assert expected in message


def test_shards_that_disagree_on_vocab_size_are_refused(tmp_path: Path) -> None:
    # Same vocabulary hash, different sizes: a hand-edited header; the model is sized from the first shard.
    first = write_shard(tmp_path / "part-000.rec", [GOOD])
    second = write_shard(tmp_path / "part-001.rec", [GOOD], _with("vocab_size", 50))
    with pytest.raises(PretrainingDataError) as err:
        PretrainingDataset([first, second])
    assert _message(err) == f"shards disagree on vocab_size: {first} has 100, {second} has 50"


# ============================================================================================ RecordIO framing
def test_huge_declared_length_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.rec"
    # A whole record whose length field says 2**29 - 1 bytes (a flipped bit can do that), in a 24-byte file.
    path.write_bytes(struct.pack("<II", MAGIC, (1 << 29) - 1) + b"x" * 16)
    tracemalloc.start()
    try:
        with RecordIOReader(path, index=False) as reader, pytest.raises(RecordIOError) as err:
            list(reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"{path}: record 0, byte offset 0: truncated payload: the part at byte 0 declares "
                              f"536870911 bytes (+1 padding), the file has 16 after its header")
    assert err.value.offset == 0 and err.value.record == 0
    assert peak < 1 << 20, f"reading allocated {peak} bytes"


def test_bad_magic_inside_a_shard_names_file_record_and_offset(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "part-000.rec", [GOOD, GOOD, GOOD])
    ds = PretrainingShard(shard)
    offset = ds._offsets[2]
    raw = bytearray(shard.read_bytes())
    raw[offset] ^= 0xFF
    shard.write_bytes(bytes(raw))
    for allow_truncated in (False, True):
        ds = PretrainingDataset(shard, allow_truncated=allow_truncated)  # the index and the tail are intact
        assert ds[0]["valid_length"] == 5 and ds[2]["valid_length"] == 5
        with pytest.raises(RecordIOError) as err:
            ds[1]  # damage inside the file is refused, not skipped: only a damaged tail is
        assert str(err.value).startswith(f"{shard}: record 2, byte offset {offset}: bad magic number at byte {offset}")
        assert ds.num_damaged == 0


def test_a_directory_is_not_a_recordio_file(tmp_path: Path) -> None:
    with pytest.raises(RecordIOError, match="not a regular file") as err:
        RecordIOReader(tmp_path)
    assert err.value.path == str(tmp_path)


# ============================================================================================ task files
def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


RACE_ROW = {"article": "Tom walked to school.", "questions": ["What did Tom do?", "Where to?"],
            "options": [["walked", "ran", "swam", "flew"], ["school", "home", "park", "shop"]],
            "answers": ["A", "A"], "id": "high1.txt"}


def _race(**changes: Any) -> str:
    row = {**RACE_ROW, **changes}
    return json.dumps(row)


def test_race_options_null_is_a_bad_row(tmp_path: Path) -> None:
    # It was a TypeError even with skip_bad_rows.
    good = _write(tmp_path / "train" / "high" / "1.txt", _race())
    bad = _write(tmp_path / "train" / "high" / "2.txt", _race(options=None, id="high2.txt"))
    task = get_task("RACE-high")
    with pytest.raises(TaskDataError) as err:
        task.read(tmp_path, "train")
    assert _message(err).startswith(f"{bad}, line 1: field 'options' must be a list, got null")
    examples = task.read(tmp_path, "train", skip_bad_rows=True)
    assert [ex.meta["id"] for ex in examples] == ["high1.txt", "high1.txt"] and examples[0].label == 0
    assert [(r.path, r.line, r.reason) for r in examples.bad_rows] == [
        (bad, 1, "field 'options' must be a list, got null")]
    assert good.is_file()


@pytest.mark.parametrize("text, reason", [
    (_race(questions=None), "field 'questions' must be a list, got null"),
    (_race(answers=None), "field 'answers' must be a list, got null"),
    (_race(answers="AA"), "field 'answers' must be a list, got str 'AA'"),
    (_race(article=None), "field 'article' must be a string, got null"),
    (_race(article=7), "field 'article' must be a string, got int '7'"),
    (_race(id=3), "field 'id' must be a non-empty string, got int '3'"),
    (_race(options=[["a", "b"]]), "2 questions, 1 option lists and 2 answers do not line up"),
    (_race(options=[["a", "b"], None]), "question 1: options must be a list of 2 to 10 strings, got null"),
    (_race(options=[["a", "b"], ["x"] * 11]), "question 1: options must be a list of 2 to 10 strings, got list"),
    (_race(options=[["a", "b"], ["x", 5]]), "field 'options[1][1]' must be a string, got int '5'"),
    (_race(questions=["q", None]), "field 'questions[1]' must be a string, got null"),
    (_race(answers=["A", ""]), "question 1: bad answer ''; expected one of A, B, C, D"),
    (_race(answers=["A", "AB"]), "question 1: bad answer 'AB'; expected one of A, B, C, D"),
    (_race(answers=["A", "E"]), "question 1: bad answer 'E'; expected one of A, B, C, D"),
    (_race(answers=["A", None]), "question 1: bad answer None; expected one of A, B, C, D"),
    (_race(questions=["q", "\ud800 lone"]), "field 'questions[1]' holds a lone surrogate '\\ud800' at character 0"),
    ("[" * 100_000, "JSON nested too deeply to decode"),
    ('{"article": 1' + "1" * 5000 + "}", "bad JSON value (Exceeds the limit (4300 digits)"),
    ("[1, 2]", "expected a JSON object, got list '[1, 2]'"),
], ids=lambda v: _short_id(v))
def test_race_field_types_are_checked(tmp_path: Path, text: str, reason: str) -> None:
    bad = _write(tmp_path / "dev" / "middle" / "9.txt", text.encode("utf-8", "surrogatepass"))
    _write(tmp_path / "dev" / "middle" / "1.txt", _race(id="middle1.txt"))
    task = get_task("RACE-middle")
    with pytest.raises(TaskDataError) as err:
        task.read(tmp_path, "dev")
    assert _message(err).startswith(f"{bad}, line 1: {reason}")
    examples = task.read(tmp_path, "dev", skip_bad_rows=True)
    assert [(ex.meta["id"], ex.meta["question"]) for ex in examples if ex.meta["id"] == "middle1.txt"] == [
        ("middle1.txt", 0), ("middle1.txt", 1)]
    # A bad question is skipped alone (every broken one above is question 1); a bad file field skips the file.
    assert not [ex for ex in examples if ex.meta["id"] == "high1.txt" and ex.meta["question"] == 1]
    assert [r.path for r in examples.bad_rows] == [bad] and examples.bad_rows[0].reason.startswith(reason)


@pytest.mark.parametrize("task_name, good, bad, reason", [
    ("COPA", {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0, "idx": 0},
     {"choice1": None}, "field 'choice1' must be str, got null"),
    ("BoolQ", {"passage": "p", "question": "q", "label": True, "idx": 0},
     {"passage": "\ud800"}, "field 'passage' holds a lone surrogate '\\ud800' at character 0, which is not text"),
    ("WiC", {"word": "w", "sentence1": "a w", "sentence2": "w b", "idx": 0, "label": True, "start1": 2, "end1": 3,
             "start2": 0, "end2": 1},
     {"start1": "2"}, "field 'start1' must be int, got str '2'"),
    ("WSC", {"text": "Mark told Pete he won.", "target": {"span1_text": "Pete", "span1_index": 2,
                                                          "span2_text": "he", "span2_index": 3},
             "idx": 0, "label": True},
     {"target": None}, "field 'target' must be dict, got null"),
    ("MultiRC", {"idx": 0, "passage": {"text": "t", "questions": [
        {"idx": 0, "question": "q", "answers": [{"idx": 0, "text": "a", "label": 1}]}]}},
     {"passage": {"text": "t", "questions": [None]}}, "expected a JSON object at question, got null"),
    ("ReCoRD", {"idx": 0, "passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": 2}]},
                "qas": [{"idx": 0, "query": "@placeholder smiled", "answers": [{"text": "Ann"}]}]},
     {"passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": None}]}},
     "field entity.'end' must be int, got null"),
], ids=lambda v: v if isinstance(v, str) and v.isalpha() else "")
def test_superglue_field_types_are_bad_rows(tmp_path: Path, task_name: str, good: dict, bad: dict,
                                            reason: str) -> None:
    task = get_task(task_name)
    lines = [json.dumps(good), json.dumps({**good, **bad, "idx": 1}), "[" * 100_000,
             '{"idx": 1' + "0" * 5000 + "}"]
    path = _write(tmp_path / "val.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    with pytest.raises(TaskDataError) as err:
        task.read(tmp_path, "dev")
    assert _message(err).startswith(f"{path}, line 2: {reason}")
    examples = task.read(tmp_path, "dev", skip_bad_rows=True)
    assert len(examples) >= 1 and all(ex.meta["idx"] == 0 for ex in examples)
    assert [(r.line, r.reason) for r in examples.bad_rows] == [
        (2, reason), (3, "JSON nested too deeply to decode"),
        (4, "bad JSON value (Exceeds the limit (4300 digits) for integer string conversion: value has 5001 digits; "
            "use sys.set_int_max_str_digits() to increase the limit)")]


def test_glue_index_of_non_ascii_digits_is_kept_as_text(tmp_path: Path) -> None:
    # "²".isdigit() holds but int("²") raises: the index is kept as the text it is.
    _write(tmp_path / "test.tsv", "index\tsentence\n²\ta film\n7\tanother\n")
    examples = get_task("SST-2").read(tmp_path, "test")
    assert [ex.meta["idx"] for ex in examples] == ["²", 7]


STSB_HEADER = "index\tsentence1\tsentence2\tscore\n"


def test_stsb_scores_outside_0_to_5_are_bad_rows(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.tsv", STSB_HEADER + "0\ta\tb\t0\n1\tc\td\t5.000\n2\te\tf\t5.2\n3\tg\th\t-0.1\n"
                                                       "4\ti\tj\t2.5\n")
    task = get_task("STS-B")
    with pytest.raises(TaskDataError) as err:
        task.read(tmp_path, "train")
    assert _message(err).startswith(f"{path}, line 4: score 5.2 is outside [0, 5], the range of STS-B's scores")
    examples = task.read(tmp_path, "train", skip_bad_rows=True)
    assert [ex.label for ex in examples] == [0.0, 5.0, 2.5]
    assert [(r.line, r.reason) for r in examples.bad_rows] == [
        (4, "score 5.2 is outside [0, 5], the range of STS-B's scores"),
        (5, "score -0.1 is outside [0, 5], the range of STS-B's scores")]


@pytest.mark.parametrize("task_name, split, name, content", [
    ("SST-2", "train", "train.tsv", ""),
    ("SST-2", "dev", "dev.tsv", "sentence\tlabel\n"),
    ("STS-B", "dev", "dev.tsv", STSB_HEADER + "\n\n"),
    ("CoLA", "train", "train.tsv", "\n"),
    ("BoolQ", "train", "train.jsonl", "\n  \n"),
])
def test_empty_or_header_only_task_files_are_errors(tmp_path: Path, task_name: str, split: str, name: str,
                                                    content: str) -> None:
    path = _write(tmp_path / name, content)
    for skip in (False, True):
        with pytest.raises(TaskDataError) as err:
            get_task(task_name).read(tmp_path, split, skip_bad_rows=skip)
        assert _message(err) == (f"{get_task(task_name).name} {split} split: {path} holds no examples (the file is "
                                 "empty or has only a header or blank lines); expected at least one row")


def test_empty_test_file_error_says_how_to_go_on(tmp_path: Path) -> None:
    path = _write(tmp_path / "test.tsv", "index\tsentence\n")
    with pytest.raises(TaskDataError) as err:
        get_task("SST-2").read(tmp_path, "test")
    assert str(path) in _message(err) and "remove the file to fine-tune without a test submission" in _message(err)


def test_a_split_of_only_bad_rows_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = _write(tmp_path / "dev.tsv", "sentence\tlabel\na\t7\nb\t8\n")
    with pytest.raises(TaskDataError) as err:
        get_task("SST-2").read(tmp_path, "dev", skip_bad_rows=True)
    assert _message(err) == (f"SST-2 dev split: no usable example in {path}: all 2 row(s) are bad, the first: "
                             f"{path}, line 2: bad label '7'; expected one of '0', '1'")


# ============================================================================================ pretraining text
@pytest.fixture
def tiny_vocab(tmp_path: Path) -> Path:
    return _write(tmp_path / "vocab" / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\nsat\n")


def test_empty_pretraining_text_is_an_error_naming_the_inputs(tmp_path: Path, tiny_vocab: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from bort.tokenization import load_tokenizer

    empty = _write(tmp_path / "empty.txt", "")
    blank = _write(tmp_path / "blank.txt", "\n \n\n")
    out = tmp_path / "out"
    with pytest.raises(PretrainingDataError) as err:
        create_pretraining_data(f"{empty},{blank}", out, load_tokenizer(tiny_vocab), progress=False)
    assert _message(err) == (f"no pretraining instances were made from {empty}, {blank}: 4 bytes read, 0 documents, "
                             "0 tokens; expected text, one sentence a line, a blank line between documents")
    # No empty shard, no summary, no temporary file: the run created the directory and, having written
    # nothing into it, removed it again.
    assert not out.exists()
    rc = create_main(["--input_file", str(blank), "--output_dir", str(out), "--vocab", str(tiny_vocab), "--quiet"])
    assert rc == 2 and f"error: no pretraining instances were made from {blank}" in capsys.readouterr().err
    # The control: one sentence makes a shard.
    text = _write(tmp_path / "text.txt", "the cat sat\n")
    summary = create_pretraining_data(str(text), out, load_tokenizer(tiny_vocab), progress=False)
    assert summary["counts"]["instances"] >= 1 and len(PretrainingShard(out / "part-000.rec")) >= 1


@pytest.mark.parametrize("field, value, expected", [
    ("max_seq_length", "128", "max_seq_length must be an integer, got str '128'"),
    ("dupe_factor", 2.0, "dupe_factor must be an integer, got float 2.0"),
    ("random_seed", None, "random_seed must be an integer, got NoneType None"),
    ("masked_lm_prob", "0.15", "masked_lm_prob must be a number, got str '0.15'"),
    ("masked_lm_prob", float("nan"), "masked_lm_prob must be in [0, 1], got nan"),
    ("whole_word_mask", 1, "whole_word_mask must be true or false, got 1"),
    ("max_seq_length", 10**12, "max_seq_length must be at most 1048576, got 1000000000000"),
])
def test_instance_settings_of_the_wrong_type_are_named(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ValueError) as err:
        InstanceSettings(**{field: value})
    assert str(err.value) == expected
