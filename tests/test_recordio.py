"""MXNet RecordIO framing: files written by real MXNet 1.9.1, round trips, truncation and corruption."""
from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from bort.data.recordio import (MAGIC, MAGIC_BYTES, IRHeader, RecordIOError, RecordIOReader, RecordIOWriter,
                                frame, pack_irheader, read_index, unpack_irheader)
from conftest import shared_path


def fixture(name: str) -> Path:
    return shared_path("fixtures", "mxnet", name)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(fixture("expected.json").read_text())


# ------------------------------------------------------------------------------------------ MXNet's own files
def test_plain_file_from_mxnet(expected: dict) -> None:
    with RecordIOReader(fixture("tiny.rec")) as reader:
        assert [r.decode() for r in reader] == expected["tiny.rec"]
        assert reader.index is None


def test_indexed_file_from_mxnet(expected: dict) -> None:
    with RecordIOReader(fixture("tiny_indexed.rec")) as reader:
        assert reader.index == read_index(fixture("tiny_indexed.idx")) == {0: 0, 1: 44, 2: 88}
        for key, want in zip([2, 0, 1], [expected["tiny_indexed.rec"][k] for k in (2, 0, 1)]):
            header, payload = unpack_irheader(reader.read_idx(key))
            assert (header.flag, header.label, header.id, header.id2) == (want["flag"], want["label"], want["id"],
                                                                          want["id2"])
            assert payload.decode() == want["payload"]


def test_multilabel_irheader_from_mxnet(expected: dict) -> None:
    want = expected["tiny_multilabel.rec"]
    (record,) = list(RecordIOReader(fixture("tiny_multilabel.rec")))
    header, payload = unpack_irheader(record)
    assert header.flag == want["flag"] == 3 and header.id == want["id"] and header.id2 == want["id2"]
    np.testing.assert_array_equal(header.label, np.array(want["label"], dtype=np.float32))
    assert payload.decode() == want["payload"]
    assert pack_irheader(IRHeader(0, want["label"], want["id"], want["id2"]), b"ML") == record


def test_record_split_at_embedded_magic_from_mxnet() -> None:
    raw = fixture("tiny_magic_split.rec").read_bytes()
    records = list(RecordIOReader(fixture("tiny_magic_split.rec")))
    assert records == [b"AAAA" + MAGIC_BYTES + b"BBBBBB", b"", b"tail"]
    # MXNet wrote a start part (cflag 1) and an end part (cflag 3); our framing is byte-identical.
    assert struct.unpack_from("<I", raw, 4)[0] >> 29 == 1 and struct.unpack_from("<I", raw, 16)[0] >> 29 == 3
    assert b"".join(frame(r) for r in records) == raw


def test_our_writer_reproduces_mxnet_files(tmp_path: Path, expected: dict) -> None:
    out = tmp_path / "tiny_indexed.rec"
    with RecordIOWriter(out) as writer:
        for item in expected["tiny_indexed.rec"]:
            writer.write(pack_irheader(IRHeader(item["flag"], item["label"], item["id"], item["id2"]),
                                       item["payload"].encode()))
    assert out.read_bytes() == fixture("tiny_indexed.rec").read_bytes()
    assert out.with_suffix(".idx").read_bytes() == fixture("tiny_indexed.idx").read_bytes()
    plain = tmp_path / "tiny.rec"
    with RecordIOWriter(plain, index=False) as writer:
        for text in expected["tiny.rec"]:
            writer.write(text.encode())
    assert plain.read_bytes() == fixture("tiny.rec").read_bytes()
    assert not plain.with_suffix(".idx").exists()


# ------------------------------------------------------------------------------------------ round trips
def _payloads(seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    out = [b"", MAGIC_BYTES, MAGIC_BYTES * 3, b"x" + MAGIC_BYTES, b"ab" + MAGIC_BYTES + b"cd",
           b"abcd" + MAGIC_BYTES, MAGIC_BYTES + b"z", b"\x0a\x23\xd7"]
    for _ in range(60):
        body = bytearray(rng.randbytes(rng.randrange(0, 40)))
        for _ in range(rng.randrange(0, 4)):  # magic numbers at aligned and unaligned offsets
            at = rng.randrange(0, len(body) + 1)
            body[at:at] = MAGIC_BYTES
        out.append(bytes(body))
    return out


def test_round_trip_with_embedded_magic(tmp_path: Path) -> None:
    payloads = _payloads()
    path = tmp_path / "rt.rec"
    with RecordIOWriter(path) as writer:
        offsets = [writer.write(p) for p in payloads]
    raw = path.read_bytes()
    # dmlc's invariant: the magic number appears at an aligned offset only where a part starts.
    parts = []
    with RecordIOReader(path) as reader:
        assert list(reader) == payloads
        assert [off for off, _ in reader.records()] == offsets == list(reader.index.values())
        assert [reader.read_idx(k) for k in reversed(reader.keys)] == payloads[::-1]
        assert reader.read_nth(5) == payloads[5] and len(reader) == len(payloads)
        pos = 0
        while pos < len(raw):
            parts.append(pos)
            length = struct.unpack_from("<I", raw, pos + 4)[0] & ((1 << 29) - 1)
            pos += 8 + ((length + 3) & ~3)
    aligned = [i for i in range(0, len(raw), 4) if raw[i:i + 4] == MAGIC_BYTES]
    assert aligned == parts
    assert len(parts) > len(payloads)  # some records really were split


def test_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "part-000.rec"
    with RecordIOWriter(path) as writer:
        writer.write(b"old")
    before = path.read_bytes(), path.with_suffix(".idx").read_bytes()
    with pytest.raises(RuntimeError):
        with RecordIOWriter(path) as writer:
            writer.write(b"new record")
            assert path.read_bytes() == before[0]  # nothing visible while writing
            raise RuntimeError("crash")
    assert (path.read_bytes(), path.with_suffix(".idx").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000.idx", "part-000.rec"]


# ------------------------------------------------------------------------------------------ damage
@pytest.fixture
def small_file(tmp_path: Path) -> tuple[Path, list[bytes]]:
    payloads = [b"hello", b"ab" + MAGIC_BYTES + b"cdef" + MAGIC_BYTES + b"gh", b"", b"0123456789abc"]
    path = tmp_path / "small.rec"
    with RecordIOWriter(path) as writer:
        for p in payloads:
            writer.write(p)
    return path, payloads


def _read_all(path: Path, index: bool) -> list[bytes]:
    with RecordIOReader(path, index=index) as reader:
        return list(reader)


def test_every_truncation_raises_recordio_error(small_file: tuple[Path, list[bytes]], tmp_path: Path) -> None:
    path, payloads = small_file
    raw = path.read_bytes()
    with RecordIOReader(path) as reader:
        boundaries = {off: n for n, (off, _) in enumerate(reader.records())}
    cut = tmp_path / "cut.rec"
    cut.with_suffix(".idx").write_bytes(path.with_suffix(".idx").read_bytes())
    for size in range(len(raw)):
        cut.write_bytes(raw[:size])
        with pytest.raises(RecordIOError) as err:  # with the index, every prefix is detected at once
            _read_all(cut, index=True)
        assert str(cut) in str(err.value) and err.value.offset is not None
        if size in boundaries:  # without an index a cut between records is a valid, shorter file
            assert _read_all(cut, index=False) == payloads[:boundaries[size]]
        else:
            with pytest.raises(RecordIOError) as err:
                _read_all(cut, index=False)
            assert str(cut) in str(err.value) and "record" in str(err.value)


def _corrupt(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def test_bad_magic_is_reported_precisely(small_file: tuple[Path, list[bytes]]) -> None:
    path, _ = small_file
    second = read_index(path.with_suffix(".idx"))[1]
    _corrupt(path, second, b"\0\0\0\0")
    with pytest.raises(RecordIOError, match=rf"record 1, byte offset {second}: bad magic") as err:
        _read_all(path, index=False)
    assert err.value.record == 1 and err.value.offset == second
    with pytest.raises(RecordIOError, match="not a record start"):
        RecordIOReader(path).read_idx(1)


def test_bad_cflag_sequences(tmp_path: Path) -> None:
    def part(cflag: int, body: bytes) -> bytes:
        return struct.pack("<II", MAGIC, (cflag << 29) | len(body)) + body + b"\0" * ((-len(body)) % 4)

    path = tmp_path / "bad.rec"
    path.write_bytes(part(0, b"ok") + part(2, b"middle"))
    with pytest.raises(RecordIOError, match=r"record 1, byte offset 12: bad cflag sequence: a record starts"):
        _read_all(path, index=False)
    path.write_bytes(part(1, b"abcd") + part(0, b"whole"))
    with pytest.raises(RecordIOError, match=r"expected a continuation part \(cflag 2 or 3\) at byte 12, found cflag 0"):
        _read_all(path, index=False)
    path.write_bytes(part(1, b"abcd"))
    with pytest.raises(RecordIOError, match="ends inside a split record"):
        _read_all(path, index=False)
    path.write_bytes(part(1, b"abcd") + part(3, b"ef"))
    assert _read_all(path, index=False) == [b"abcd" + MAGIC_BYTES + b"ef"]
    path.with_suffix(".idx").write_text("0\t0\n1\t12\n")
    with pytest.raises(RecordIOError, match=r"index entry 1 points into the middle of a split record"):
        RecordIOReader(path).read_idx(1)


def test_bad_index_files(small_file: tuple[Path, list[bytes]]) -> None:
    path, _ = small_file
    idx = path.with_suffix(".idx")
    good = idx.read_text()
    idx.write_text(good + f"9\t{path.stat().st_size + 100}\n")
    with pytest.raises(RecordIOError, match="index entry 9 points to byte .* past the end of the file"):
        RecordIOReader(path)
    idx.write_text(good.replace("\t", " ", 1))
    with pytest.raises(RecordIOError, match=r"small.idx: line 1: expected 'key<TAB>offset'"):
        RecordIOReader(path)
    idx.write_text(good.splitlines()[0] + "\n")  # an index that misses the later records
    with pytest.raises(RecordIOError, match="unexpected bytes after the last indexed record"):
        RecordIOReader(path)
    assert _read_all(path, index=False)  # the data itself is fine


def test_irheader_round_trip_and_errors() -> None:
    packed = pack_irheader(IRHeader(0, 2.5, 11, 12), b"data")
    header, payload = unpack_irheader(packed)
    assert header == IRHeader(0, 2.5, 11, 12) and payload == b"data"
    header, payload = unpack_irheader(pack_irheader((0, np.arange(4), 1, 0), b""))
    assert header.flag == 4 and header.label.tolist() == [0, 1, 2, 3] and payload == b""
    with pytest.raises(ValueError, match="needs 24 bytes"):
        unpack_irheader(b"short")
    with pytest.raises(ValueError, match="announces 3 float labels"):
        unpack_irheader(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"abc")
