"""LRA Text and Retrieval: the byte vocabulary, the readers on the real GLUE files (SST-2 sentences, MRPC pairs)
and their layouts (header TSV, aclImdb, LRA's AAN files), bad input, the dual encoder against a hand-written
reference, and tiny end-to-end runs through the runner and the CLI."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bort.attention import available_attention
from bort.data.tasks.base import TaskDataError
from bort.lra import bytes as byte_vocab
from bort.lra.data import load_splits
from bort.lra.model import LRAClassifier, LRADualClassifier, load_lra_model, lra_config, save_lra_model
from bort.lra.retrieval import load_retrieval, read_pairs
from bort.lra.runner import LRARecipe, LRASettings, evaluate_split, run_lra
from bort.lra.tasks import get_task
from bort.lra.text import load_text, read_imdb, read_text_tsv
from tests.conftest import shared_path

SST2 = ("data", "glue", "SST-2", "dev.tsv")
MRPC = ("data", "glue", "MRPC", "dev.tsv")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)


def _raw_rows(path: Path) -> list[list[str]]:
    """An independent reading of a GLUE TSV: bytes split on newlines and tabs, BOM and header dropped."""
    lines = path.read_bytes().decode("utf-8-sig").split("\n")
    return [line.split("\t") for line in lines[1:] if line]


# --- bytes -------------------------------------------------------------------------------------------------------
def test_byte_vocabulary_is_lra_byte_encoder_ids() -> None:
    # LRA's ByteTextEncoder: id = byte + 1, 0 is padding, 257 ids.
    assert byte_vocab.VOCAB_SIZE == 257 and byte_vocab.VOCAB[0] == "<pad>" and byte_vocab.VOCAB[0x62] == "<0x61>"
    ids, cut = byte_vocab.encode("aé\t")
    assert ids == [0x61 + 1, 0xC3 + 1, 0xA9 + 1, 0x09 + 1] and not cut
    assert byte_vocab.encode(b"\x00\xff") == ([1, 256], False)
    ids, cut = byte_vocab.encode("aé\t", max_length=2)  # cut inside the two-byte é: bytes, not characters
    assert ids == [0x62, 0xC4] and cut
    text = "naïve café ☕"
    assert byte_vocab.decode(byte_vocab.encode(text)[0]).decode("utf-8") == text
    with pytest.raises(ValueError, match="0..256"):
        byte_vocab.decode([257])


# --- text -------------------------------------------------------------------------------------------------------
def test_sst2_reader_reads_every_real_row_exactly() -> None:
    path = shared_path(*SST2)
    rows = read_text_tsv(path)
    raw = _raw_rows(path)
    assert len(rows) == 872 and Counter(rows.labels) == {1: 444, 0: 428} and rows.bad_rows == []
    assert [(r.text.decode("utf-8"), r.label, r.line) for r in rows] == [
        (sentence, int(label), i + 2) for i, (sentence, label) in enumerate(raw)]

    splits = load_text(path, 4000, dev_size=100, test_size=200, split_seed=0)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (572, 100, 200)
    assert splits.truncated == 0 and splits.num_classes == 2 and splits.pad_id == 0 and len(splits.vocab) == 257
    # The three splits partition the file; every id is the byte + 1.
    expected = Counter((r.text, r.label) for r in rows)
    got = Counter((bytes(i - 1 for i in ids), y) for s in (splits.train, splits.dev, splits.test)
                  for ids, y in zip(s.ids, s.labels))
    assert got == expected
    assert load_text(path, 4000, dev_size=100, test_size=200, split_seed=1).test.ids != splits.test.ids
    # Truncation at the task length is counted: 100-byte maximum cuts the longer sentences.
    longer = sum(len(r.text) > 100 for r in rows)
    short = load_text(path, 100, dev_size=100, test_size=200)
    assert short.truncated == longer > 0 and max(short.train.lengths) == 100


def _write_imdb(root: Path, sentences: list[str]) -> None:
    """An aclImdb tree (train/test × neg/pos, plus an ignored unsup/) of real sentences."""
    layout = {("train", "pos"): 6, ("train", "neg"): 4, ("test", "pos"): 3, ("test", "neg"): 2}
    it = iter(sentences)
    for (split, label), count in layout.items():
        (root / split / label).mkdir(parents=True)
        for i in range(count):
            (root / split / label / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(next(it), encoding="utf-8")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("ignored", encoding="utf-8")


def test_aclimdb_and_split_file_directories(tmp_path: Path) -> None:
    sentences = [r.text.decode("utf-8") for r in read_text_tsv(shared_path(*SST2))[:40]]
    _write_imdb(tmp_path / "aclImdb", sentences)
    test = read_imdb(tmp_path / "aclImdb", "test")
    assert [(r.text.decode(), r.label, r.path.name) for r in test] == [
        (sentences[13], 0, "0_2.txt"), (sentences[14], 0, "1_2.txt"),
        (sentences[10], 1, "0_7.txt"), (sentences[11], 1, "1_7.txt"), (sentences[12], 1, "2_7.txt")]
    # The parent of aclImdb/ is accepted too; the dev set comes from training rows.
    splits = load_text(tmp_path, 4000, dev_size=3)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (7, 3, 5)
    assert sorted(splits.train.labels + splits.dev.labels) == [0] * 4 + [1] * 6
    assert splits.source["layout"] == "aclImdb directory"

    # train.tsv / dev.tsv / test.tsv with multiclass labels and custom column names: the model gets 5 classes.
    data = tmp_path / "tsvs"
    data.mkdir()
    for name, chunk in (("train", sentences[:20]), ("dev", sentences[20:25]), ("test", sentences[25:30])):
        body = "".join(f"{i % 5}\t{s}\n" for i, s in enumerate(chunk))
        (data / f"{name}.tsv").write_text("stars\tbody\n" + body, encoding="utf-8")
    splits = load_text(data, 4000, text_column="body", label_column="stars")
    assert (len(splits.train), len(splits.dev), len(splits.test), splits.num_classes) == (20, 5, 5, 5)
    assert splits.dev.ids[1] == byte_vocab.encode(sentences[21])[0] and splits.dev.labels[1] == 1
    trainer = LRARecipe(LRASettings(task="text", data=str(data), output_dir=None, progress=False),
                        load_text(data, 4000, text_column="body", label_column="stars")).build()
    assert trainer.model.config.num_labels == 5 and trainer.model.config.vocab_size == 257


def test_text_bad_input_names_file_line_and_expectation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv: not found; expected a TSV file with a header"):
        read_text_tsv(tmp_path / "nope.tsv")
    headless = tmp_path / "headless.tsv"
    headless.write_text("it 's fine\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"headless\.tsv, line 1: the header .* has no text column; expected a "
                                         r"column named one of 'sentence'"):
        read_text_tsv(headless)
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"sentence\tlabel\n"
                    b"good film\t1\n"
                    b"bad film\tneg\n"         # line 3: label not a class index
                    b"three\tfields\t0\n"      # line 4
                    b"\n"                      # blank: not a row
                    b" \t0\n"                  # line 6: empty text
                    b"caf\xe9\t1\n"            # line 7: Latin-1, not UTF-8
                    b"fine film\t1.0\n")       # line 8: a float label that is an integer is accepted
    with pytest.raises(TaskDataError, match=r"bad\.tsv, line 3: label 'neg' is not a non-negative integer"):
        read_text_tsv(bad)
    rows = read_text_tsv(bad, skip_bad_rows=True)
    assert [(r.line, r.label) for r in rows] == [(2, 1), (8, 1)]
    assert [(b.line, b.reason.split(" (")[0]) for b in rows.bad_rows] == [
        (3, "label 'neg' is not a non-negative integer class index"),
        (4, "expected 2 tab-separated fields"), (6, "empty text"), (7, "not valid UTF-8")]
    with pytest.raises(ValueError, match=r"4 rows cannot give dev_size 2 and test_size 2 and leave training rows"):
        load_text(_rows_file(tmp_path, 4), 4000, dev_size=2, test_size=2)
    (tmp_path / "imdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"train/neg not found; expected train/neg, train/pos, test/neg"):
        load_text(tmp_path / "imdb", 4000)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="neither aclImdb .* nor train.tsv, dev.tsv, test.tsv"):
        load_text(tmp_path / "empty_dir", 4000)
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "train.tsv").write_text("sentence\tlabel\nx\t1\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"lacks .*test\.tsv"):
        load_text(only_train, 4000)


def _rows_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"rows{n}.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(n)), encoding="utf-8")
    return path


# --- retrieval ----------------------------------------------------------------------------------------------------
def test_mrpc_pairs_read_exactly_in_both_layouts(tmp_path: Path) -> None:
    path = shared_path(*MRPC)
    pairs = read_pairs(path)
    raw = _raw_rows(path)
    assert (len(pairs), pairs.layout, Counter(pairs.labels)) == (408, "header", {1: 279, 0: 129})
    assert [(p.label, p.text1.decode(), p.text2.decode(), p.line) for p in pairs] == [
        (int(r[0]), r[3], r[4], i + 2) for i, r in enumerate(raw)]
    assert any(b'"' in p.text2 for p in pairs)  # quotes are text, not CSV quoting

    # The same pairs in LRA's headerless AAN layout (float labels, as LRA's files hold them), as a directory.
    aan = tmp_path / "aan"
    aan.mkdir()
    chunks = {"train": raw[:300], "eval": raw[300:350], "test": raw[350:]}
    for name, chunk in chunks.items():
        (aan / f"new_aan_pairs.{name}.tsv").write_text(
            "".join(f"{float(r[0])}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\n" for r in chunk), encoding="utf-8")
    lra = read_pairs(aan / "new_aan_pairs.train.tsv")
    assert lra.layout == "lra" and [(p.text1, p.text2, p.label) for p in lra] == [
        (p.text1, p.text2, p.label) for p in pairs[:300]]
    splits = load_retrieval(aan, 4000)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (300, 50, 58)
    assert splits.train.pair_ids[5] == byte_vocab.encode(raw[5][4])[0] and splits.train.ids[5] == \
        byte_vocab.encode(raw[5][3])[0]
    assert splits.train.lengths[5] == max(len(raw[5][3].encode()), len(raw[5][4].encode()))

    one = load_splits(get_task("retrieval"), path, dev_size=50, test_size=100, split_seed=0)
    assert (len(one.train), len(one.dev), len(one.test), one.truncated) == (258, 50, 100, 0)
    cut = load_retrieval(path, 60, dev_size=50, test_size=100)
    assert cut.truncated == sum((len(p.text1) > 60) + (len(p.text2) > 60) for p in pairs)


def test_retrieval_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.tsv: not found; expected LRA's label<TAB>id1"):
        read_pairs(tmp_path / "missing.tsv")
    no_pair = tmp_path / "no_pair.tsv"
    no_pair.write_text("label\tsentence\n1\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no_pair\.tsv, line 1: .* names no pair of text columns; expected one of "
                                         r"text1/text2"):
        read_pairs(no_pair)
    lra = tmp_path / "pairs.tsv"
    lra.write_text("1\ta\tb\tfirst doc\tsecond doc\n"
                   "0\ta\tb\tonly four\n"             # line 2
                   "1\ta\tb\t\tsecond doc\n"          # line 3: empty first side
                   "yes\ta\tb\tfirst\tsecond\n",      # line 4
                   encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"pairs\.tsv, line 2: expected 5 tab-separated fields \(label<TAB>id1"):
        read_pairs(lra)
    rows = read_pairs(lra, skip_bad_rows=True)
    assert [r.line for r in rows] == [1] and [b.line for b in rows.bad_rows] == [2, 3, 4]
    assert "empty first text" in rows.bad_rows[1].reason and "label 'yes'" in rows.bad_rows[2].reason
    (tmp_path / "dir").mkdir()
    with pytest.raises(FileNotFoundError, match="neither LRA's new_aan_pairs.train.tsv"):
        load_retrieval(tmp_path / "dir", 4000)


# --- the dual encoder ---------------------------------------------------------------------------------------------
def _pairs_batch() -> dict[str, torch.Tensor]:
    from bort.lra.data import EncodedSplit

    first = [byte_vocab.encode(t)[0] for t in ("a short one", "the second, longer document", "third")]
    second = [byte_vocab.encode(t)[0] for t in ("another text of some length", "b", "a third partner")]
    return EncodedSplit("x", first, [1, 0, 1], pair_ids=second).batch([0, 1, 2], 0, 8)


def test_dual_classifier_equals_hand_written_reference() -> None:
    """Each side encoded alone (no padding), mean-pooled, [u, v, u*v, u-v] → dense → ReLU → dense."""
    torch.manual_seed(0)
    model = LRADualClassifier(lra_config(get_task("retrieval"), 257)).eval()
    inputs = _pairs_batch()
    assert inputs["input_ids"].shape == inputs["input_ids2"].shape == (3, 32)  # one width for both sides
    with torch.no_grad():
        out = model(**inputs)
        rows = []
        for i in range(3):
            alone = [inputs[k][i, : int(inputs[m][i].sum())][None] for k, m in (("input_ids", "attention_mask"),
                                                                                 ("input_ids2", "attention_mask2"))]
            u, v = (model.encode(ids)[1][0] for ids in alone)
            head = model.classifier
            rows.append(head.out_proj(F.relu(head.dense(torch.cat([u, v, u * v, u - v])))))
        torch.testing.assert_close(out.logits, torch.stack(rows), atol=1e-5, rtol=1e-4)
        assert out.loss == pytest.approx(float(F.cross_entropy(out.logits, inputs["labels"])), rel=1e-6)
        # Sides of different widths take the two-pass path: same numbers.
        narrow = model(inputs["input_ids"], inputs["attention_mask"], inputs["input_ids2"][:, :27],
                       inputs["attention_mask2"][:, :27]).logits
        torch.testing.assert_close(narrow, out.logits, atol=1e-5, rtol=1e-4)
        swapped = model(inputs["input_ids2"], inputs["attention_mask2"], inputs["input_ids"],
                        inputs["attention_mask"]).logits
    assert not torch.allclose(swapped, out.logits, atol=1e-4)  # u - v: the order of the sides matters
    assert model.classifier.dense.in_features == 4 * 64
    with pytest.raises(ValueError, match="input_ids2 is missing"):
        model(inputs["input_ids"], inputs["attention_mask"])


@pytest.mark.parametrize("mechanism", ["dense", "yoso", "bigbird", "longformer"])
def test_dual_classifier_trains_with_each_mechanism(mechanism: str, tmp_path: Path) -> None:
    if mechanism not in available_attention():
        pytest.skip(f"attention {mechanism!r} is not registered in this tree")
    torch.manual_seed(0)
    model = LRADualClassifier(lra_config(get_task("retrieval"), 257, mechanism))
    out = model(**_pairs_batch())
    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.classifier.dense.weight.grad.abs().sum() > 0
    save_lra_model(model, tmp_path, "retrieval", byte_vocab.VOCAB)
    loaded, meta = load_lra_model(tmp_path)
    assert type(loaded) is LRADualClassifier and meta["architecture"] == "dual" and len(meta["vocab"]) == 257
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


# --- training end to end ------------------------------------------------------------------------------------------
def _settings(task: str, data: Path, out: Path | None, **kw) -> LRASettings:
    values = dict(task=task, data=str(data), output_dir=str(out) if out else None, max_steps=12, batch_size=16,
                  lr=2e-3, eval_interval=6, dev_size=60, test_size=100, progress=False, log_interval=1)
    values.update(kw)
    return LRASettings(**values)


@pytest.fixture(scope="module")
def short_real_data(tmp_path_factory) -> dict[str, Path]:
    """Quick training files of real rows: the first 224 SST-2 sentences of at most 80 bytes (32 train / 40 dev /
    152 test) and the first 176 MRPC pairs with both sides at most 120 bytes (32 / 40 / 104)."""
    root = tmp_path_factory.mktemp("lra_tasks")
    sentences = [r for r in read_text_tsv(shared_path(*SST2)) if len(r.text) <= 80][:224]
    pairs = [p for p in read_pairs(shared_path(*MRPC)) if max(len(p.text1), len(p.text2)) <= 120][:176]
    assert (len(sentences), len(pairs)) == (224, 176)
    (root / "text.tsv").write_bytes(b"sentence\tlabel\n" + b"".join(b"%s\t%d\n" % (r.text, r.label)
                                                                    for r in sentences))
    (root / "pairs.tsv").write_bytes(b"label\ttext1\ttext2\n" + b"".join(b"%d\t%s\t%s\n" % (p.label, p.text1, p.text2)
                                                                       for p in pairs))
    return {"text": root / "text.tsv", "retrieval": root / "pairs.tsv"}


# Small enough to memorise 32 rows in a few seconds: no dropout, short warmup; text needs the gentler rate
# (at 2e-3 some seeds stall near chance), retrieval fits its pairs fastest at 3e-3 (checked on seeds 0-3).
FIT = {"text": dict(lr=1e-3, max_steps=60, test_size=152), "retrieval": dict(lr=3e-3, max_steps=40, test_size=104)}


@pytest.mark.parametrize("task", ["text", "retrieval"])
def test_tiny_run_fits_its_training_rows_and_reports_best_checkpoint(task: str, short_real_data: dict,
                                                                     tmp_path: Path) -> None:
    """32 real training rows seen 20-30 times: the model fits them far beyond their majority class; the best
    dev checkpoint, reloaded from disk, gives the test accuracy the run reported."""
    from bort.train.checkpointing import latest_checkpoint

    out = tmp_path / task
    settings = _settings(task, short_real_data[task], out, batch_size=16, eval_interval=20, dev_size=40,
                         warmup_ratio=0.1, model_overrides={"hidden_dropout_prob": 0.0,
                                                            "attention_probs_dropout_prob": 0.0}, **FIT[task])
    trainer = LRARecipe(settings).build()
    train = trainer.splits.train
    initial = evaluate_split(trainer.model, train, 0)
    summary = run_lra(settings)
    last, _ = load_lra_model(latest_checkpoint(out / "checkpoints"))
    fitted = evaluate_split(last, train, 0)
    majority = max(Counter(train.labels).values()) / len(train)
    assert len(train) == 32 and majority <= 0.6
    assert fitted["loss"] < initial["loss"] - 0.3 and fitted["accuracy"] >= 0.9

    best, meta = load_lra_model(out / "best")
    assert type(best) is (LRADualClassifier if task == "retrieval" else LRAClassifier)
    assert meta["task"] == task and meta["vocab"] == list(byte_vocab.VOCAB)
    assert evaluate_split(best, trainer.splits.test, 0)["accuracy"] == summary["test_accuracy"]
    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == {"train": 32, "dev": 40, "test": FIT[task]["test_size"]}
    assert results["steps"] == FIT[task]["max_steps"] and results["data"]["vocabulary"].startswith("UTF-8 bytes")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_runs_text_and_retrieval_and_reports_bad_data(short_real_data: dict, tmp_path: Path, capsys) -> None:
    from bort.cli import main

    for task, mechanism in (("text", "yoso"), ("retrieval", "bigbird")):
        out = tmp_path / task
        code = main(["lra", task, "--data", str(short_real_data[task]), "--attention", mechanism,
                     "--max-steps", "3", "--eval-interval", "3", "--batch-size", "8", "--dev-size", "40",
                     "--test-size", "40", "--output-dir", str(out), "--no-progress"])
        assert code == 0
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (printed["task"], printed["attention"], printed["steps"]) == (task, mechanism, 3)
        assert 0 <= printed["test_accuracy"] <= 1
        results = json.loads((out / "results.json").read_text())
        assert results["sizes"]["test"] == 40 and (out / "best" / "model.safetensors").is_file()
        if mechanism == "yoso":
            assert results["attention_params"] == {"hash_code_len": 12, "num_hash": 32}  # the task's YOSO default
    missing = tmp_path / "absent"
    assert main(["lra", "retrieval", "--data", str(missing), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "new_aan_pairs.train.tsv" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\n" + "fine\t1\n" * 10 + "broken\n", encoding="utf-8")
    assert main(["lra", "text", "--data", str(bad), "--dev-size", "2", "--test-size", "2", "--no-progress",
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "bad.tsv, line 12: expected 2 tab-separated fields (sentence<TAB>label)" in capsys.readouterr().err
    assert main(["lra", "text", "--data", str(bad), "--dev-size", "2", "--test-size", "2", "--no-progress",
                 "--max-steps", "1", "--skip-bad-rows", "--output-dir", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len(results["bad_rows"]) == 1 and "line 12" in results["bad_rows"][0]


@pytest.mark.slow
def test_text_generalises_above_majority_on_real_sst2(tmp_path: Path) -> None:
    """Byte-level SST-2 (572 train / 100 dev / 200 test of the real dev sentences), dense, 300 steps (~2 min on
    one core): the best dev checkpoint beats the majority class on the held-out test rows (measured 0.615 vs
    0.50; at 2e-3 with 600 steps 0.55)."""
    summary = run_lra(LRASettings(task="text", data=str(shared_path(*SST2)), output_dir=str(tmp_path / "sst2"),
                                  dev_size=100, test_size=200, max_steps=300, lr=1e-3, warmup_ratio=0.1,
                                  eval_interval=25, progress=False))
    assert summary["sizes"] == {"train": 572, "dev": 100, "test": 200} and summary["majority_accuracy"] == 0.5
    assert summary["test_accuracy"] >= summary["majority_accuracy"] + 0.04


# --- the YOSO paper's recipe -----------------------------------------------------------------------------------------
LISTOPS = ("data", "lra", "listops", "nangia_bowman_d20s.first8000.tsv")


@pytest.fixture(scope="module")
def tiny_listops(tmp_path_factory) -> Path:
    """The first 200 real ListOps rows no longer than 40 symbols."""
    from bort.lra import listops

    rows = [r for r in listops.read_listops(shared_path(*LISTOPS)) if len(listops.tokenize(r.expression)) <= 40]
    path = tmp_path_factory.mktemp("listops") / "tiny.tsv"
    path.write_text("".join(f"{r.label}\t{r.expression}\n" for r in rows[:200]), encoding="utf-8")
    return path


def _paper(data: Path, out: Path | None = None, **kw) -> LRASettings:
    values = dict(task="listops", data=str(data), output_dir=str(out) if out else None, recipe="paper",
                  dev_size=40, test_size=40, progress=False, log_interval=1)
    values.update(kw)
    return LRASettings(**values)


def _walk_schedule(trainer: LRARecipe) -> list[tuple[float, float]]:
    """(lr, β1) that each optimiser step of the trainer's whole run uses, read from the optimiser as the loop
    does (the schedule is advanced after every step; nothing is trained)."""
    used = []
    for _ in range(trainer.total):
        group = trainer.optimizer.param_groups[0]
        used.append((group["lr"], group["betas"][0]))
        trainer.optimizer.step()  # no gradients: changes nothing, keeps PyTorch's step order
        trainer.schedule.step()
    return used


def test_paper_schedule_has_the_originals_lr_and_beta1_at_steps_1_1000_and_the_end(tiny_listops: Path) -> None:
    # The original: OneCycleLR(max_lr 1e-4, pct_start 1000/5000, linear) over AdamW: lr 1e-4/25 at step 1, the
    # peak at step 1000, 1e-4/25/1e4 at step 5000; β1 0.95 → 0.85 at the peak → 0.95.
    trainer = LRARecipe(_paper(tiny_listops)).build()
    assert (trainer.total, trainer.values["lr"], trainer.values["warmup_ratio"]) == (5000, 1e-4, 0.2)
    used = _walk_schedule(trainer)
    assert used[0] == (pytest.approx(4.0e-6, rel=1e-12), 0.95)
    assert used[999] == (pytest.approx(1.0e-4, rel=1e-12), pytest.approx(0.85, rel=1e-12))
    assert used[4999] == (pytest.approx(4.0e-10, rel=1e-9), pytest.approx(0.95, rel=1e-12))
    # Halfway down: the linear mix of the two ends.
    assert used[2999] == (pytest.approx((1e-4 + 4e-10) / 2, rel=1e-9), pytest.approx(0.90, rel=1e-12))
    assert all(a[0] < b[0] for a, b in zip(used[:999], used[1:1000]))  # rising through warmup, then falling
    assert all(a[0] > b[0] for a, b in zip(used[999:-1], used[1000:]))
    # Our recipe: ~0 at step 1 (1e-4 · 1/1000), β1 fixed at 0.9.
    ours = _walk_schedule(LRARecipe(_paper(tiny_listops, recipe="bort")).build())
    assert ours[0] == (pytest.approx(1e-7, rel=1e-12), 0.9) and {b for _, b in ours} == {0.9}
    # A shortened run keeps the warmup fraction: the peak moves with it.
    short = _walk_schedule(LRARecipe(_paper(tiny_listops, max_steps=50, lr=1e-3)).build())
    assert max(range(50), key=lambda i: short[i][0]) == 9 and short[9][1] == pytest.approx(0.85)


def test_paper_recipe_model_options(tiny_listops: Path) -> None:
    paper = LRARecipe(_paper(tiny_listops)).build().model
    ours = LRARecipe(_paper(tiny_listops, recipe="bort")).build().model
    assert paper.embeddings.position_embeddings.weight.shape[0] == 2048  # the original's 2**ceil(log2(2000))
    assert ours.embeddings.position_embeddings.weight.shape[0] == 2000
    assert (paper.pooling, paper.ffn_dropout, ours.pooling, ours.ffn_dropout) == ("mean_padded", 0.1, "mean", 0.0)
    # The options add no parameter: the two recipes' state dicts have the same names.
    assert list(paper.state_dict()) == list(ours.state_dict())


def test_padded_mean_pooling_divides_by_every_position_of_the_table() -> None:
    task = get_task("listops")
    config = lra_config(task, 20, max_position_embeddings=2048)
    model = LRAClassifier(config, pooling="mean_padded").eval()
    ids = torch.randint(1, 20, (2, 24))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 10:] = 0
    hidden, pooled = model.encode(ids, mask)
    real = (hidden * mask.unsqueeze(-1)).sum(dim=1)
    assert torch.allclose(pooled * 2048, real, atol=1e-5)  # all 2,048 positions, not the 24 or 10 real ones
    # The same rows padded wider pool to the same vector (the original's fixed padded length).
    wide = torch.cat([ids, torch.zeros(2, 16, dtype=torch.long)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(2, 16, dtype=torch.long)], dim=1)
    assert torch.allclose(model.encode(wide, wide_mask)[1], pooled, atol=1e-6)
    # Ours divides by the real tokens.
    ours = LRAClassifier(config).eval()
    ours.load_state_dict(model.state_dict())
    assert torch.allclose(ours.encode(ids, mask)[1] * mask.sum(1, keepdim=True), real, atol=1e-5)
    with pytest.raises(ValueError, match="unknown pooling 'max'; valid: mean, mean_padded"):
        LRAClassifier(config, pooling="max")


def test_ffn_dropout_acts_between_the_ffn_projections() -> None:
    config = lra_config(get_task("listops"), 20, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = torch.randint(1, 20, (2, 12))
    with_dropout = LRAClassifier(config, ffn_dropout=0.5).train()
    without = LRAClassifier(config).train()
    without.load_state_dict(with_dropout.state_dict())
    # Every other dropout is 0: only the FFN's makes two training passes differ.
    assert torch.equal(without.encode(ids)[1], without.encode(ids)[1])
    assert not torch.equal(with_dropout.encode(ids)[1], with_dropout.encode(ids)[1])
    # Where it sits: zeroing half the FFN's hidden units after the activation (hook on the second projection).
    seen = []
    with_dropout.encoder.layer[0].output.dense.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with_dropout.encode(ids)
    assert 0.3 < float((seen[0] == 0).float().mean()) < 0.7
    with_dropout.eval()
    assert torch.equal(with_dropout.encode(ids)[1], without.eval().encode(ids)[1])
    with pytest.raises(ValueError, match="ffn_dropout must be a probability in \\[0, 1\\), got 1.5"):
        LRAClassifier(config, ffn_dropout=1.5)


def test_saved_model_keeps_the_recipe_options_and_names_a_bad_value(tmp_path: Path) -> None:
    from bort.checkpoint.errors import CheckpointError

    config = lra_config(get_task("listops"), 20, max_position_embeddings=2048)
    model = LRAClassifier(config, pooling="mean_padded", ffn_dropout=0.1)
    save_lra_model(model, tmp_path / "m", "listops")
    loaded, values = load_lra_model(tmp_path / "m")
    assert (loaded.pooling, loaded.ffn_dropout, values["ffn_dropout"]) == ("mean_padded", 0.1, 0.1)
    ids = torch.randint(1, 20, (1, 9))
    assert torch.equal(loaded.encode(ids)[1], model.eval().encode(ids)[1])
    path = tmp_path / "m" / "config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["lra"]["ffn_dropout"] = "lots"
    path.write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json: ffn_dropout must be a probability .*'lots'"):
        load_lra_model(tmp_path / "m")


def test_paper_attention_configurations_per_task() -> None:
    from bort.lra.tasks import PAPER_ATTENTION, get_recipe, resolve_attention

    paper, ours = get_recipe("paper"), get_recipe("bort")
    taus = {"listops": 11, "text": 12, "retrieval": 12, "image": 10, "pathfinder32": 10}
    for name, tau in taus.items():
        task = get_task(name)
        assert resolve_attention(task, "yoso-v2-16", ours) == resolve_attention(task, "yoso-v2-16", paper) == (
            "yoso", {"hash_code_len": tau, "num_hash": 16, "hashing": "fast_hadamard", "backward": "exact_colliding"})
        # A registry name takes the paper's configuration under its recipe only.
        assert resolve_attention(task, "yoso", paper) == (
            "yoso", {"hash_code_len": tau, "num_hash": 32, "hashing": "fast_hadamard", "backward": "lsh"})
        assert resolve_attention(task, "yoso", ours) == ("yoso", {"hash_code_len": tau, "num_hash": 32})
        assert resolve_attention(task, "yoso_e", paper) == ("yoso_e", {"hash_code_len": tau, "backward": "lsh"})
        assert resolve_attention(task, "dense", paper) == ("dense", None)
    # Each configuration runs in the LRA model (the mechanisms accept its parameters).
    for label in PAPER_ATTENTION:
        mechanism, params = resolve_attention(get_task("listops"), label, paper)
        model = LRAClassifier(lra_config(get_task("listops"), 20, mechanism, params))
        assert model(torch.randint(1, 20, (2, 16))).logits.shape == (2, 10)


def test_paper_recipe_run_resumes_bitwise(tiny_listops: Path, tmp_path: Path) -> None:
    class Killed(Exception):
        pass

    kw = dict(max_steps=12, eval_interval=4, batch_size=8, lr=3e-3, attention="yoso-v2-16")
    straight = run_lra(_paper(tiny_listops, tmp_path / "a", **kw))

    def kill_at_8(record: dict) -> None:
        if record["event"] == "eval" and record["step"] == 8:
            raise Killed()

    with pytest.raises(Killed):
        run_lra(_paper(tiny_listops, tmp_path / "b", **kw), on_event=kill_at_8)
    resumed = run_lra(_paper(tiny_listops, tmp_path / "b", resume=True, **kw))
    def train(directory: Path) -> list[tuple[float, float, float]]:
        records = map(json.loads, (directory / "metrics.jsonl").read_text().splitlines())
        return [(r["loss"], r["lr"], r["beta1"]) for r in records if r["event"] == "train"]

    assert resumed["resumed"] and train(tmp_path / "b") == train(tmp_path / "a")
    assert len({b for _, _, b in train(tmp_path / "a")}) > 3  # β1 did cycle
    assert resumed["test_accuracy"] == straight["test_accuracy"] and resumed["recipe"] == "paper"
    assert straight["settings"]["attention"] == "yoso" and straight["settings"]["attention_preset"] == "yoso-v2-16"
    # The recipe is a setting of the run: resuming under the other one is refused, naming it.
    with pytest.raises(ValueError, match="settings differ.*recipe 'paper' → 'bort'"):
        run_lra(_paper(tiny_listops, tmp_path / "b", resume=True, **{**kw, "recipe": "bort"}))


def test_unknown_recipe_lists_the_valid_ones(tiny_listops: Path, tmp_path: Path, capsys) -> None:
    from bort.cli import main

    with pytest.raises(ValueError, match="unknown LRA recipe 'yoso'; valid: bort, paper"):
        LRARecipe(_paper(tiny_listops, recipe="yoso")).build()
    with pytest.raises(SystemExit):
        main(["lra", "listops", "--data", str(tiny_listops), "--recipe", "original"])
    assert "invalid choice: 'original' (choose from" in capsys.readouterr().err


def test_bench_merge_keeps_earlier_rows_and_refuses_other_data() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` is a directory, not installed
    from bench import lra_listops

    row = lambda label, recipe=None: {"mechanism": label, "test_accuracy": 0.4, **({"recipe": recipe}  # noqa: E731
                                                                                  if recipe else {})}
    before = {"rows": [row("dense"), row("yoso")], "curves": {"dense": [[1, 0.1]], "yoso": [[1, 0.2]]},
              "settings": {"dense": {}, "yoso": {}}, "round_seconds": {"dense": {}, "yoso": {}}, "chunk": 50,
              "threads": 1, "wall_seconds": 60.0, "missing_mechanisms": [], "data": "d", "sizes": {"train": 1}}
    new = {"rows": [row("dense [paper]", "paper")], "curves": {"dense [paper]": []},
           "settings": {"dense [paper]": {}}, "round_seconds": {"dense [paper]": {}}, "missing_mechanisms": [],
           "data": "d", "sizes": {"train": 1}, "runs": [{"recipe": "paper", "rows": ["dense [paper]"], "chunk": 50,
                                                         "threads": 1, "wall_seconds": 30.0}]}
    merged = lra_listops.merge(before, new)
    assert [(r["mechanism"], r["recipe"]) for r in merged["rows"]] == [
        ("dense", "bort"), ("yoso", "bort"), ("dense [paper]", "paper")]
    assert list(merged["curves"]) == ["dense", "yoso", "dense [paper]"]
    assert [run["rows"] for run in merged["runs"]] == [["dense", "yoso"], ["dense [paper]"]]
    again = lra_listops.merge(merged, new)  # a rerun replaces its own rows, once
    assert [r["mechanism"] for r in again["rows"]] == ["dense", "yoso", "dense [paper]"]
    assert [run["rows"] for run in again["runs"]] == [["dense", "yoso"], ["dense [paper]"]]
    with pytest.raises(ValueError, match="cannot merge: the earlier results have sizes"):
        lra_listops.merge(before, {**new, "sizes": {"train": 2}})


def test_every_task_has_one_reader() -> None:
    from bort.lra.data import READERS
    from bort.lra.tasks import TASKS

    assert list(READERS) == list(TASKS)
    with pytest.raises(ValueError, match="'nope' has no data reader; readers exist for listops, text"):
        load_splits(dataclasses.replace(get_task("listops"), name="nope"), "x")
