"""Pretraining data: instances like Bort's script, masking statistics, determinism, shards, bad input."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bort.data import chunk_worker
from bort.data.instance_format import decode_instance, encode_instance, vocab_hash
from bort.data.instances import InstanceSettings
from bort.data.cli import main
from bort.data.pretraining import (PretrainingDataError, PretrainingDataset, PretrainingShard, collate,
                                   create_pretraining_data)
from bort.data.recordio import RecordIOError
from bort.data.text_chunks import iter_chunks, split_documents
from bort.tokenization import load_tokenizer
from conftest import REPO, shared_path

SAMPLE = REPO / "test_data" / "sample_text.txt"


@pytest.fixture(scope="module")
def roberta():
    return load_tokenizer(shared_path("data", "vocab", "roberta-base", "vocab.json"))


@pytest.fixture(scope="module")
def bert():
    return load_tokenizer(shared_path("data", "vocab", "bert-base-uncased", "vocab.txt"))


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ~150 KB of tinyshakespeare (whole lines): enough for statistics, quick to tokenise."""
    text = shared_path("data", "pretrain", "tinyshakespeare.txt").read_bytes()
    path = tmp_path_factory.mktemp("text") / "shakespeare.txt"
    path.write_bytes(text[: text.index(b"\n", 150_000) + 1])
    return path


def make(tmp_path: Path, tok, inputs, name: str = "out", **kw) -> tuple[Path, dict]:
    settings = kw.pop("settings", InstanceSettings(max_seq_length=128))
    out = tmp_path / name
    summary = create_pretraining_data(str(inputs), out, tok, settings, progress=False, **kw)
    return out, summary


def masked_stats(ds: PretrainingDataset, specials: set[int]) -> Counter:
    c: Counter = Counter()
    for i in range(len(ds)):
        x = ds[i]
        ids, pos, lab, n = x["input_ids"], x["masked_positions"], x["masked_ids"], int(x["valid_length"])
        assert len(ids) == n and (np.diff(pos) > 0).all() and (pos < n).all() and (pos > 0).all()
        assert not specials.intersection(lab.tolist()), "a special token was chosen for prediction"
        c["tokens"] += n
        c["masked"] += len(pos)
        c["mask"] += int((ids[pos] == ds.header["special_ids"]["mask"]).sum())
        c["kept"] += int((ids[pos] == lab).sum())
    return c


# ------------------------------------------------------------------------------------------ instances
def test_sample_text_instances_follow_bort_layout(tmp_path: Path, roberta) -> None:
    out, summary = make(tmp_path, roberta, SAMPLE)
    ds = PretrainingDataset(str(out / "part-*.rec"), expected_vocab_hash=vocab_hash(roberta.get_vocab()))
    h = ds.header
    assert h["tokenizer_kind"] == "bpe" and h["vocab_size"] == 50265 and h["id_dtype"] == "uint16"
    assert h["special_ids"] == {"cls": 0, "sep": 2, "pad": 1, "unk": 3, "mask": 50264}
    assert h["settings"]["max_seq_length"] == 128 and h["settings"]["random_seed"] == 12345
    assert len(ds) == summary["counts"]["instances"] == sum(s["instances"] for s in summary["shards"]) > 5
    for i in range(len(ds)):
        x = ds[i]
        ids = x["input_ids"].copy()
        ids[x["masked_positions"]] = x["masked_ids"]  # the original text back
        assert ids[0] == 0 and ids[-1] == 2 and len(ids) <= 128
        assert (ids == 2).sum() in (1, 2)  # <s> A </s> B </s> (or <s> A </s> without a partner)
    assert json.loads((out / "summary.json").read_text())["counts"]["documents"] == 3


def test_masking_statistics_on_real_text(tmp_path: Path, roberta, shakespeare: Path) -> None:
    out, _ = make(tmp_path, roberta, shakespeare, settings=InstanceSettings(max_seq_length=256))
    c = masked_stats(PretrainingDataset(str(out / "part-000.rec")), roberta.all_special_ids)
    n = c["masked"]
    assert abs(n / c["tokens"] - 0.15) < 0.01  # round(len · 0.15) per sequence
    for share, p in ((c["mask"] / n, 0.8), (c["kept"] / n, 0.1)):
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(share - p) < 4 * sd, (share, p, sd)
    assert 1 - (c["mask"] + c["kept"]) / n > 0.1 - 4 * math.sqrt(0.09 / n)  # random replacements


def test_whole_word_masking_masks_whole_wordpiece_words(tmp_path: Path, bert) -> None:
    settings = InstanceSettings(max_seq_length=64, whole_word_mask=True, masked_lm_prob=0.3)
    out, _ = make(tmp_path, bert, SAMPLE, settings=settings)
    ds = PretrainingDataset(out / "part-000.rec")
    assert ds.header["tokenizer_kind"] == "wordpiece" and ds.header["special_ids"]["cls"] == 101
    seen_pieces = 0
    for i in range(len(ds)):
        x = ds[i]
        ids = x["input_ids"].copy()
        ids[x["masked_positions"]] = x["masked_ids"]
        tokens = [bert.id_to_token(int(t)) for t in ids]
        masked = set(x["masked_positions"].tolist())
        for k in range(1, len(tokens)):
            if tokens[k].startswith("##") and tokens[k - 1] not in ("[CLS]", "[SEP]"):
                seen_pieces += 1
                assert (k in masked) == (k - 1 in masked), (tokens[k - 1], tokens[k])
    assert seen_pieces > 10


def test_deterministic_whatever_the_worker_count(tmp_path: Path, roberta, shakespeare: Path) -> None:
    kw = dict(num_outputs=2, chunk_size_mb=0.02)
    one, s1 = make(tmp_path, roberta, shakespeare, "one", num_workers=1, **kw)
    two, s2 = make(tmp_path, roberta, shakespeare, "two", num_workers=2, **kw)
    assert s1["counts"]["chunks"] > 4 and s1["counts"] == s2["counts"]
    for name in ("part-000.rec", "part-000.idx", "part-001.rec", "part-001.idx"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    other, _ = make(tmp_path, roberta, shakespeare, "other", settings=InstanceSettings(max_seq_length=128,
                                                                                      random_seed=7), **kw)
    assert (other / "part-000.rec").read_bytes() != (one / "part-000.rec").read_bytes()


def test_record_layout_round_trip() -> None:
    payload = encode_instance([0, 50264, 7, 2], [1], [42], is_random_next=True)
    assert len(payload) == 8 + 2 * 4 + 2 + 2
    x = decode_instance(payload)
    assert x["input_ids"].tolist() == [0, 50264, 7, 2] and x["masked_positions"].tolist() == [1]
    assert x["masked_ids"].tolist() == [42] and int(x["valid_length"]) == 4 and bool(x["is_random_next"])
    wide = decode_instance(encode_instance([70000, 3], [0], [70000], ids_u32=True, positions_u32=True))
    assert wide["input_ids"].tolist() == [70000, 3] and wide["masked_ids"].tolist() == [70000]
    with pytest.raises(ValueError, match="needs"):
        decode_instance(payload[:-1])


# ------------------------------------------------------------------------------------------ reading
def test_collate_pads_to_the_batch_maximum() -> None:
    xs = [decode_instance(encode_instance([0, 5, 6, 2], [1, 2], [9, 8])),
          decode_instance(encode_instance([0, 5, 2], [1], [7]))]
    b = collate(xs, pad_id=1)
    assert b["input_ids"].tolist() == [[0, 5, 6, 2], [0, 5, 2, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert b["masked_positions"].tolist() == [[1, 2], [1, 0]]
    assert b["masked_ids"].tolist() == [[9, 8], [7, -100]]
    assert b["masked_weights"].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert b["input_ids"].dtype == torch.long and b["valid_length"].tolist() == [4, 3]


def test_vocab_hash_mismatch_is_refused(tmp_path: Path, roberta, bert) -> None:
    out, _ = make(tmp_path, roberta, SAMPLE, "rob")
    theirs = vocab_hash(bert.get_vocab())
    with pytest.raises(PretrainingDataError) as err:
        PretrainingDataset([out / "part-000.rec"], expected_vocab_hash=theirs)
    msg = str(err.value)
    assert str(out / "part-000.rec") in msg and theirs in msg and vocab_hash(roberta.get_vocab()) in msg
    other, _ = make(tmp_path, bert, SAMPLE, "bert")
    with pytest.raises(PretrainingDataError, match="different vocabularies") as err:
        PretrainingDataset([out / "part-000.rec", other / "part-000.rec"])
    assert str(other / "part-000.rec") in str(err.value)


def test_truncated_shard(tmp_path: Path, roberta) -> None:
    out, summary = make(tmp_path, roberta, SAMPLE)
    shard = out / "part-000.rec"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-30])
    with pytest.raises(RecordIOError) as err:
        PretrainingShard(shard)
    assert str(shard) in str(err.value) and err.value.offset is not None and "allow_truncated" in str(err.value)
    ds = PretrainingDataset(shard, allow_truncated=True)
    assert len(ds) == summary["counts"]["instances"] - 1 and ds.num_damaged == 1
    assert all(len(ds[i]["input_ids"]) for i in range(len(ds)))
    with pytest.raises(FileNotFoundError, match="no pretraining shard matches"):
        PretrainingDataset(str(out / "nothing-*.rec"))


def test_a_crash_leaves_earlier_shards_intact(tmp_path: Path, roberta, shakespeare: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = make(tmp_path, roberta, SAMPLE)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = chunk_worker.ChunkProcessor.process

    def failing(self, index: int, data: bytes):
        if index == 2:
            raise RuntimeError("worker died")
        return real(self, index, data)

    monkeypatch.setattr(chunk_worker.ChunkProcessor, "process", failing)
    with pytest.raises(RuntimeError, match="worker died"):
        make(tmp_path, roberta, shakespeare, chunk_size_mb=0.02)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .tmp left, nothing changed


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_counted(tmp_path: Path, roberta) -> None:
    text = tmp_path / "bad.txt"
    huge = b"word " * 2_000_000  # a single 10 MB line
    text.write_bytes(b"\n\nFirst doc line.\nSecond \xff\xfe line.\n\n\n\nA doc.\n\n" + huge + b"\nafter it\n")
    out, summary = make(tmp_path, roberta, text, chunk_size_mb=0.25)
    c = summary["counts"]
    assert c["lines_non_utf8"] == 1
    assert c["empty_documents"] == 4  # two leading blank lines, two extra in the run of three
    assert c["lines_cut_while_reading"] == 1 and c["lines_truncated"] == 1
    assert c["documents"] == 3 and c["bytes_read"] == text.stat().st_size
    assert json.loads((out / "summary.json").read_text())["counts"] == c
    ds = PretrainingDataset(out / "part-000.rec")
    assert max(int(ds[i]["valid_length"]) for i in range(len(ds))) <= 128


def test_missing_inputs_are_listed(tmp_path: Path, roberta) -> None:
    with pytest.raises(FileNotFoundError) as err:
        create_pretraining_data(f"{SAMPLE},{tmp_path}/nope-*.txt,{tmp_path}/missing.txt", tmp_path / "o", roberta,
                                progress=False)
    assert "nope-*.txt" in str(err.value) and "missing.txt" in str(err.value)
    assert "sample_text" not in str(err.value)


def test_chunks_hold_whole_documents(tmp_path: Path) -> None:
    text = b"".join(b"doc %d line a\ndoc %d line b\n\n" % (i, i) for i in range(200))
    counts: Counter = Counter()
    path = tmp_path / "docs.txt"
    path.write_bytes(text)
    chunks = list(iter_chunks([path], 300, 1000, counts))
    assert len(chunks) > 5 and b"".join(chunks) == text
    docs = [split_documents(c, counts) for c in chunks]
    assert sum(len(d) for d in docs) == 200 and all(len(doc) == 2 for d in docs for doc in d)
    assert counts["documents_split"] == 0 and counts["files"] == 1
    one_document = b"".join(b"line %d of a long document\n" % i for i in range(200))
    path.write_bytes(one_document)
    chunks = list(iter_chunks([path], 300, 1000, counts))
    # Memory stays bounded: the document is cut between lines, never inside one; each cut is counted.
    assert all(c.endswith(b"\n") and len(c) < 3 * 300 for c in chunks) and counts["documents_split"] > 3
    assert b"".join(chunks) == one_document + b"\n"  # the blank line that ends the file's last document


# ------------------------------------------------------------------------------------------ command line
def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vocab = shared_path("data", "vocab", "roberta-base", "vocab.json")
    status = main(["--input_file", str(SAMPLE), "--output_dir", str(tmp_path / "cli"), "--vocab", str(vocab),
                   "--max_seq_length", "64", "--dupe_factor", "2", "--num_outputs", "2", "--quiet", "--verbose"])
    out = capsys.readouterr().out
    assert status == 0 and "wrote" in out and "first instance" in out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [  # the run's lock file stays (empty)
        ".bort-run.lock", "part-000.idx", "part-000.rec", "part-001.idx", "part-001.rec", "summary.json"]
    # Bort's own dataset name means the vocabulary shipped with the package (offline, as the original's meaning)
    assert main(["--input_file", str(SAMPLE), "--output_dir", str(tmp_path / "bort"),
                 "--dataset_name", "openwebtext_ccnews_stories_books_cased", "--quiet"]) == 0
    assert PretrainingShard(tmp_path / "bort" / "part-000.rec").header["vocab_size"] == 50265
    # any other dataset name needs its vocabulary file
    assert main(["--input_file", str(SAMPLE), "--output_dir", str(tmp_path / "x"),
                 "--dataset_name", "book_corpus_wiki_en_uncased"]) == 2
    err = capsys.readouterr().err
    assert "WordPiece" in err and "--vocab" in err and "nothing is downloaded" in err
    assert main(["--input_file", str(tmp_path / "none*.txt"), "--output_dir", str(tmp_path / "x"),
                 "--vocab", str(vocab)]) == 2
    assert "no input file matches" in capsys.readouterr().err
