"""The original Bort's `.npz` pretraining shards, both ways: read safely (a restricted unpickler), written so
that the original `get_pretrain_data_npz` loads them, trained on here, and hostile or malformed files refused
with the file, the key and the record named."""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bort.data.instance_format import vocab_hash
from bort.data.instances import InstanceSettings
from bort.data.npz_shards import NPZ_KEYS, NpzShard, rec_to_npz
from bort.data.cli import main as create_main
from bort.data.pretraining import create_pretraining_data
from bort.data.pretraining_dataset import PretrainingDataError, PretrainingDataset, PretrainingShard, collate
from bort.tokenization import load_tokenizer

from conftest import REPO, shared_path

SAMPLE = REPO / "test_data" / "sample_text.txt"
FIELDS = ("input_ids", "masked_positions", "masked_ids", "valid_length", "is_random_next")


@pytest.fixture(scope="module")
def roberta_dir() -> Path:
    return shared_path("data", "vocab", "roberta-base")


@pytest.fixture(scope="module")
def roberta(roberta_dir):
    return load_tokenizer(roberta_dir / "vocab.json")


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory, roberta) -> Path:
    out = tmp_path_factory.mktemp("rec")
    create_pretraining_data(str(SAMPLE), out, roberta, InstanceSettings(max_seq_length=48, max_predictions_per_seq=8,
                                                                        dupe_factor=2), progress=False)
    return out


def _assert_same_instances(a, b) -> None:
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        x, y = a[i], b[i]
        for key in FIELDS:
            assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key]), (i, key, x[key], y[key])


def _original_layout(path: Path, arrays: dict[str, object]) -> Path:
    """An npz written as the original script writes it: np.savez_compressed with object arrays."""
    np.savez_compressed(path, **arrays)
    return path


def _instances_arrays(n: int = 3, length: int = 6) -> dict[str, np.ndarray]:
    """A small, valid shard's arrays in the original layout (ragged object arrays)."""
    ids, seg, pos, mid, w = [], [], [], [], []
    for i in range(n):
        size = length + i
        ids.append(np.array([0] + [100 + i + k for k in range(size - 2)] + [2], dtype=np.int32))
        seg.append(np.array([0] * (size // 2) + [1] * (size - size // 2), dtype=np.int32))
        pos.append(np.array([1, 3], dtype=np.int32))
        mid.append(np.array([7, 8], dtype=np.int32))
        w.append(np.array([1.0, 1.0], dtype=np.float32))

    def obj(rows):
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return out

    return {"input_ids": obj(ids), "segment_ids": obj(seg), "masked_lm_positions": obj(pos),
            "masked_lm_ids": obj(mid), "masked_lm_weights": obj(w),
            "next_sentence_labels": np.array([0, 1, 0][:n], dtype=np.int32),
            "valid_lengths": np.array([len(x) for x in ids], dtype=np.int32)}


# ------------------------------------------------------------------------------------------------ round trip
def test_rec_to_npz_round_trip_is_instance_by_instance_equal(rec_dir, tmp_path, roberta) -> None:
    rec = PretrainingShard(rec_dir / "part-000.rec")
    assert rec_to_npz(rec_dir / "part-000.rec", tmp_path / "part-000.npz") == len(rec)
    npz = NpzShard(tmp_path / "part-000.npz")
    assert npz.header == rec.header and npz.vocab_hash == vocab_hash(roberta.get_vocab())
    _assert_same_instances(rec, npz)
    # The layout is the original's: seven keys, object arrays of int32/float32 rows, int32 labels and lengths.
    raw = np.load(tmp_path / "part-000.npz", allow_pickle=True)
    assert sorted(raw.files) == sorted(NPZ_KEYS)
    assert raw["input_ids"].dtype == object and raw["input_ids"][0].dtype == np.int32
    assert raw["masked_lm_weights"][0].dtype == np.float32 and set(np.concatenate(raw["masked_lm_weights"])) == {1.0}
    assert raw["valid_lengths"].dtype == np.int32 and raw["next_sentence_labels"].dtype == np.int32
    sep = roberta.sep_token_id
    first = raw["input_ids"][0]
    boundary = int(np.flatnonzero(first[1:] == sep)[0]) + 1  # <s> A </s> is segment 0, B </s> segment 1
    assert raw["segment_ids"][0].tolist() == [0] * (boundary + 1) + [1] * (len(first) - boundary - 1)


def test_written_pickles_name_numpy_1_globals(rec_dir, tmp_path) -> None:
    """numpy 2 pickles arrays as `numpy._core…`, which the original's numpy 1.x cannot import."""
    rec_to_npz(rec_dir / "part-000.rec", tmp_path / "x.npz")
    with zipfile.ZipFile(tmp_path / "x.npz") as archive:
        payload = archive.read("input_ids.npy")
    assert b"numpy.core.multiarray\n_reconstruct" in payload and b"numpy._core" not in payload


def test_output_format_npz_writes_the_same_instances_as_rec(rec_dir, tmp_path, roberta_dir) -> None:
    out = tmp_path / "npz"
    rc = create_main(["--input_file", str(SAMPLE), "--output_dir", str(out), "--vocab", str(roberta_dir / "vocab.json"),
                      "--max_seq_length", "48", "--max_predictions_per_seq", "8", "--dupe_factor", "2",
                      "--output_format", "npz", "--quiet"])
    assert rc == 0
    # No .rec shard, no staging directory or temporary file left behind (the run lock stays, as for .rec).
    assert sorted(p.name for p in out.iterdir()) == [".bort-run.lock", "part-000.npz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output_format"] == "npz" and summary["shards"][0]["file"] == "part-000.npz"
    assert summary["output_dir"] == str(out)
    _assert_same_instances(PretrainingShard(rec_dir / "part-000.rec"), NpzShard(out / "part-000.npz"))


def test_dataset_mixes_rec_and_npz_shards(rec_dir, tmp_path) -> None:
    rec_to_npz(rec_dir / "part-000.rec", tmp_path / "part-001.npz")
    ds = PretrainingDataset([rec_dir / "part-000.rec", tmp_path / "part-001.npz"])
    half = len(ds) // 2
    assert len(ds) == 2 * half
    for i in (0, 5, half - 1):
        assert np.array_equal(ds[i]["input_ids"], ds[half + i]["input_ids"])
    batch = collate([ds[half], ds[half + 1]], pad_id=ds.shards[1].pad_id)
    assert batch["masked_weights"].sum() == len(ds[half]["masked_positions"]) + len(ds[half + 1]["masked_positions"])


# ----------------------------------------------------------------------------------- the original's files
def test_headerless_npz_needs_its_vocabulary(tmp_path, roberta, roberta_dir) -> None:
    path = _original_layout(tmp_path / "part-000.npz", _instances_arrays())
    with pytest.raises(PretrainingDataError) as err:
        NpzShard(path)
    assert str(path) in str(err.value) and "without a header" in str(err.value) and "vocab=" in str(err.value)
    shard = NpzShard(path, vocab=roberta_dir / "vocab.json")
    assert shard.vocab_size == roberta.vocab_size and shard.pad_id == roberta.pad_token_id
    assert shard.max_seq_length == 8  # the longest valid length stands for it
    assert shard[2]["input_ids"].tolist()[:3] == [0, 102, 103] and shard[1]["is_random_next"]
    # Its vocabulary kept beside it is found without an argument (vocab.json + merges.txt here).
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(roberta_dir / name, tmp_path / name)
    assert NpzShard(path).vocab_hash == vocab_hash(roberta.get_vocab())


def test_equal_length_original_shard_is_read(tmp_path, roberta) -> None:
    """np.array(rows, dtype=object) makes a 2-D array of Python ints when all rows are equally long."""
    arrays = _instances_arrays(2, 6)
    arrays["masked_lm_positions"] = np.array([np.array([1, 3], dtype=np.int32)] * 2, dtype=object)
    assert arrays["masked_lm_positions"].shape == (2, 2)
    shard = NpzShard(_original_layout(tmp_path / "eq.npz", arrays), vocab=roberta)
    assert shard[1]["masked_positions"].tolist() == [1, 3] and shard[1]["masked_positions"].dtype == np.int32


def test_zero_weight_predictions_are_padding(tmp_path, roberta) -> None:
    arrays = _instances_arrays(1)
    arrays["masked_lm_positions"][0] = np.array([1, 3, 0], dtype=np.int32)
    arrays["masked_lm_ids"][0] = np.array([7, 8, 0], dtype=np.int32)
    arrays["masked_lm_weights"][0] = np.array([1, 1, 0], dtype=np.float32)
    inst = NpzShard(_original_layout(tmp_path / "w.npz", arrays), vocab=roberta)[0]
    assert inst["masked_positions"].tolist() == [1, 3] and inst["masked_ids"].tolist() == [7, 8]


# ------------------------------------------------------------------------------------------------ bad input
class _Payload:
    """Unpickling this runs `touch marker`: what a hostile shard would do with np.load(allow_pickle=True)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


def test_hostile_pickle_is_refused_and_never_runs(tmp_path, roberta) -> None:
    marker = tmp_path / "marker"
    arrays = _instances_arrays()
    arrays["masked_lm_ids"][1] = _Payload(marker)
    path = _original_layout(tmp_path / "evil.npz", arrays)
    with pytest.raises(PretrainingDataError) as err:
        NpzShard(path, vocab=roberta)
    msg = str(err.value)
    assert str(path) in msg and "'masked_lm_ids'" in msg and "refused global subprocess.call" in msg, msg
    assert not marker.exists()
    # The payload is live: the original loader's np.load(allow_pickle=True) runs it.
    code = f"import numpy as np; np.load({str(path)!r}, allow_pickle=True)['masked_lm_ids']"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.exists()


def test_hostile_array_shape_and_garbage_pickles_are_refused(tmp_path, roberta) -> None:
    def with_member(name: str, payload: bytes) -> Path:
        path = _original_layout(tmp_path / f"{name}.npz", _instances_arrays())
        rebuilt = tmp_path / f"{name}-2.npz"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(rebuilt, "w") as dst:
            for item in src.namelist():
                dst.writestr(item, payload if item == "input_ids.npy" else src.read(item))
        return rebuilt

    def npy(body: bytes) -> bytes:
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": "|O", "fortran_order": False, "shape": (3,)})
        return head.getvalue() + body

    huge = (b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x7f\x85C\x01b\x87R.")
    for name, body, expected in (("huge", huge, "unexpected array reconstruction"),
                                 ("garbage", b"\x80\x03}q\x00(", "not a pickled numpy object array"),
                                 ("eval", b"cbuiltins\neval\n(S'1'\ntR.", "refused global builtins.eval")):
        path = with_member(name, npy(body))
        with pytest.raises(PretrainingDataError) as err:
            NpzShard(path, vocab=roberta)
        assert str(path) in str(err.value) and "'input_ids'" in str(err.value) and expected in str(err.value), \
            str(err.value)


def _mutate(arrays, change):
    change(arrays)
    return arrays


BAD = [
    ("missing", lambda a: a.pop("masked_lm_weights"), None, "missing key(s) masked_lm_weights"),
    ("float_lengths", lambda a: a.__setitem__("valid_lengths", a["valid_lengths"].astype(np.float32)), None,
     "'valid_lengths' must be a 1-D integer array"),
    ("count", lambda a: a.__setitem__("segment_ids", a["segment_ids"][:2]), None,
     "'segment_ids' has 2 entries but 'valid_lengths' has 3"),
    ("length", lambda a: a["valid_lengths"].__setitem__(1, 5), 1, "'valid_lengths', record 1: valid length 5 but"),
    ("segments", lambda a: a["segment_ids"].__setitem__(2, np.zeros(3, np.int32)), 2,
     "'segment_ids', record 2: 3 segment ids for 8 tokens"),
    ("ragged_masks", lambda a: a["masked_lm_ids"].__setitem__(0, np.array([7], np.int32)), 0,
     "'masked_lm_positions', record 0: 2 positions, 1 masked ids and 2 weights"),
    ("position", lambda a: a["masked_lm_positions"].__setitem__(1, np.array([1, 7], np.int32)), 1,
     "strictly increasing and in 0..6"),
    ("id", lambda a: a["input_ids"].__setitem__(2, np.array([0, 1, 2, 3, 4, 5, 6, 50265], np.int32)), 2,
     "'input_ids', record 2: id 50265 at index 7 is out of range for the vocabulary of 50265 ids"),
    ("float_ids", lambda a: a["masked_lm_ids"].__setitem__(0, np.array([7.0, 8.0])), 0,
     "'masked_lm_ids', record 0: expected a 1-D integer array"),
    ("weight", lambda a: a["masked_lm_weights"].__setitem__(0, np.array([0.5, 1.0], np.float32)), 0,
     "weights must be 1.0 (a prediction) or 0.0 (padding)"),
    ("label", lambda a: a["next_sentence_labels"].__setitem__(0, 3), 0, "label must be 0 or 1, got 3"),
]


@pytest.mark.parametrize("name,change,record,expected", BAD, ids=[b[0] for b in BAD])
def test_malformed_npz_names_the_file_key_and_record(tmp_path, roberta, name, change, record, expected) -> None:
    path = _original_layout(tmp_path / f"{name}.npz", _mutate(_instances_arrays(), change))
    with pytest.raises(PretrainingDataError) as err:
        shard = NpzShard(path, vocab=roberta)
        for i in range(len(shard)):
            shard[i]
    msg = str(err.value)
    assert str(path) in msg and expected in msg, msg
    if record is not None:
        assert f"record {record}" in msg


def test_damaged_archive_and_bad_header_comment(tmp_path, rec_dir, roberta) -> None:
    good = tmp_path / "good.npz"
    rec_to_npz(rec_dir / "part-000.rec", good)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PretrainingDataError, match="not an npz \\(zip\\) archive"):
        NpzShard(cut)
    bad = tmp_path / "bad.npz"
    shutil.copy(good, bad)
    with zipfile.ZipFile(bad, "a") as archive:
        archive.comment = b'{"format": "bort-pretraining-instances", "format_version": 1}'
    with pytest.raises(PretrainingDataError) as err:
        NpzShard(bad)
    assert str(bad) in str(err.value) and "zip archive comment" in str(err.value) and "tokenizer_kind" in str(err.value)


# --------------------------------------------------------------------------------- against the original code
ORIGINAL_LOADER = """
import sys, types, json
sys.modules["mxboard"] = types.ModuleType("mxboard")  # imported for logging only; not in the side venv
sys.modules["mxboard"].SummaryWriter = None
from utils.pretraining_distillation_utils import get_pretrain_data_npz
out = []
for loader in get_pretrain_data_npz(sys.argv[1], 4, 1, False, False, 1):
    for batch in loader:
        ids, masked, positions, weights, nsl, segments, lengths = [b.asnumpy() for b in batch]
        for r in range(len(lengths)):
            n, p = int(lengths[r]), int(weights[r].sum())
            out.append({"input_ids": ids[r][:n].tolist(), "masked_ids": masked[r][:p].tolist(),
                        "masked_positions": positions[r][:p].tolist(), "is_random_next": int(nsl[r]),
                        "segments": segments[r][:n].tolist()})
print(json.dumps(out))
"""


@pytest.mark.gluon
def test_original_loader_batches_our_npz(rec_dir, tmp_path) -> None:
    from original_bort import run_original

    rec_to_npz(rec_dir / "part-000.rec", tmp_path / "part-000.npz")
    got = json.loads(run_original(ORIGINAL_LOADER, tmp_path, str(tmp_path / "part-000.npz")).stdout)
    ours = NpzShard(tmp_path / "part-000.npz")
    raw = np.load(tmp_path / "part-000.npz", allow_pickle=True)
    # No shuffling: the sampler's one bucket keeps the file order (sorted by length within the bucket).
    assert len(got) == len(ours) > 8
    by_ids = {tuple(g["input_ids"]): g for g in got}
    assert len(by_ids) == len(got)
    for i in range(len(ours)):
        g = by_ids[tuple(ours[i]["input_ids"].tolist())]
        assert g["masked_positions"] == ours[i]["masked_positions"].tolist()
        assert g["masked_ids"] == ours[i]["masked_ids"].tolist()
        assert g["is_random_next"] == int(ours[i]["is_random_next"])
        assert g["segments"] == raw["segment_ids"][i].tolist()


ORIGINAL_TRAINS = """
import sys, types, json
import mxnet as mx
import numpy as np
import gluonnlp as nlp
sys.modules["mxboard"] = types.ModuleType("mxboard")  # imported for logging only; not in the side venv
sys.modules["mxboard"].SummaryWriter = None
from bort import bort as original
from utils.pretraining_distillation_utils import forward, get_pretrain_data_npz

vocab_size = int(sys.argv[2])
# A local vocabulary of the data's size instead of the model zoo's download; only its size shapes the model.
vocab = nlp.Vocab(nlp.data.count_tokens(["w%d" % i for i in range(vocab_size - 4)]), unknown_token="<unk>",
                  padding_token="<pad>", bos_token="<s>", eos_token="</s>")
original.predefined_borts["bort_tiny"] = dict(original.bort_4_8_768_1024_hparams, num_layers=1, units=16,
                                              hidden_size=16, num_heads=2, embed_size=16, max_length=64)
model = original.get_bort_model("bort_tiny", dataset_name=None, vocab=vocab, pretrained=False)[0]
model.initialize(mx.init.Normal(0.02))
trainer = mx.gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 1e-2})
mlm_loss = mx.gluon.loss.SoftmaxCELoss()
losses = []
for loader in get_pretrain_data_npz(sys.argv[1], 4, 1, False, False, 1):
    for batch in loader:
        with mx.autograd.record():
            loss = forward(batch, model, mlm_loss, vocab_size, "float32", is_eval=True)[0]
        loss.backward()
        trainer.step(1)
        losses.append(float(loss.asscalar()))
        if len(losses) == 3:
            break
    break
print(json.dumps(losses))
"""


@pytest.mark.gluon
def test_our_npz_trains_in_the_original_pipeline(rec_dir, tmp_path, roberta) -> None:
    """The original's loader batches our npz and its own forward (MLM loss at the masked positions) trains a
    tiny original Bort on those batches: three Adam steps, finite losses that move."""
    from original_bort import run_original

    rec_to_npz(rec_dir / "part-000.rec", tmp_path / "part-000.npz")
    losses = json.loads(run_original(ORIGINAL_TRAINS, tmp_path, str(tmp_path / "part-000.npz"),
                                     str(roberta.vocab_size)).stdout.strip().splitlines()[-1])
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[0] > 0 and losses[1] != losses[0]


ORIGINAL_WRITER = """
import sys, random
import gluonnlp as nlp
from create_pretraining_data import create_training_instances
vocab = nlp.vocab.BERTVocab.from_json(open(sys.argv[1]).read())
random.seed(12345)
# The original's own pipeline: its GPT-2 BPE tokenizer downloads, so a whitespace split stands in (the double
# vocabulary look-up maps the tokens to <unk> either way).
create_training_instances(([sys.argv[2]], str.split, 48, 0.1, 0.15, 8, False, vocab, 1, 1, None, sys.argv[3]))
"""


@pytest.mark.gluon
def test_npz_from_the_original_writer_trains_here(tmp_path, roberta_dir, roberta) -> None:
    from original_bort import run_original

    from bort.distill.recipe import DistillSettings, run_distillation

    data = tmp_path / "data"
    data.mkdir()
    token_to_idx = json.loads((roberta_dir / "vocab.json").read_text())
    gluon_vocab = {"idx_to_token": sorted(token_to_idx, key=token_to_idx.get), "token_to_idx": token_to_idx,
                   "unknown_token": "<unk>", "reserved_tokens": [],
                   "identifiers_to_tokens": {"padding_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                                             "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}}
    # Where the original script leaves its vocabulary (beside the shards), with the merges our loader needs.
    (data / "openwebtext_ccnews_stories_books_cased.vocab").write_text(json.dumps(gluon_vocab))
    shutil.copy(roberta_dir / "merges.txt", data / "merges.txt")
    run_original(ORIGINAL_WRITER, tmp_path, str(data / "openwebtext_ccnews_stories_books_cased.vocab"), str(SAMPLE),
                 str(data / "part-000.npz"))
    shard = NpzShard(data / "part-000.npz")
    assert shard.vocab_hash == vocab_hash(roberta.get_vocab()) and len(shard) > 8
    ids = np.concatenate([shard[i]["input_ids"] for i in range(len(shard))])
    assert np.mean(ids == roberta.unk_token_id) > 0.5  # the original's double look-up: mostly <unk>
    student = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 4,
                          "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 64})
    summary = run_distillation(DistillSettings(train=[str(data / "part-*.npz")], student=student,
                                               output_dir=str(tmp_path / "out"), batch_size=4, max_steps=2,
                                               log_interval=1, eval_interval=0, checkpoint_interval=0,
                                               progress=False, seed=1))
    assert summary["steps"] == 2
    assert math.isfinite(summary["last"]["loss"]) and summary["last"]["loss"] > 0
