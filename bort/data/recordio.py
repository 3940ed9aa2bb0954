"""MXNet RecordIO framing, written and read without MXNet.

A `.rec` file is a sequence of records; each record is one or more *parts*:

    uint32 magic 0xCED7230A | uint32 lrec | payload bytes | zero padding to a multiple of 4

(little-endian). `lrec` holds the part's length in its lower 29 bits and a continuation flag (cflag) in its
upper 3: 0 a whole record, 1 the first part of a split record, 2 a middle part, 3 the last part. dmlc-core's
writer splits a payload wherever the magic number occurs at a 4-byte-aligned offset of the payload, drops
those four bytes, and the reader puts the magic number back between the parts; so a reader that resyncs on
the magic number never mistakes payload bytes for a record start. Only the last part is padded (the earlier
parts end at aligned offsets by construction).

An `.idx` file (MXNet's `MXIndexedRecordIO`) has one `key<TAB>byte offset` line per record.

`IRHeader` (flag, label, id, id2) is the 24-byte image-record header of `mxnet.recordio.pack`/`unpack`,
kept so files made for MXNet's image pipelines stay readable.
"""
from __future__ import annotations

import numbers
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterator, NamedTuple, Sequence, Union

import numpy as np

from ..atomic import unique_temp_file

__all__ = [
    "MAGIC",
    "MAX_RECORD_BYTES",
    "RecordIOError",
    "IRHeader",
    "frame",
    "pack_irheader",
    "unpack_irheader",
    "read_index",
    "RecordIOWriter",
    "RecordIOReader",
]

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
# dmlc-core refuses records of 2**29 bytes or more: the length must fit the 29 bits.
MAX_RECORD_BYTES = (1 << LENGTH_BITS) - 1
CFLAG_WHOLE, CFLAG_START, CFLAG_MIDDLE, CFLAG_END = 0, 1, 2, 3
_PART_HEADER = struct.Struct("<II")
_ZEROS = b"\0\0\0"


class RecordIOError(ValueError):
    """A `.rec`/`.idx` file that is not valid RecordIO: names the file, the byte offset, the record number
    (when known) and what was expected."""

    def __init__(self, path: PathLike, what: str, offset: int | None = None, record: int | None = None) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.record = record
        self.what = what
        where = []
        if record is not None:
            where.append(f"record {record}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{self.path}: {', '.join(where) + ': ' if where else ''}{what}")


def _padded(n: int) -> int:
    return (n + 3) & ~3


def _part(cflag: int, payload: bytes | memoryview) -> bytes:
    return _PART_HEADER.pack(MAGIC, (cflag << LENGTH_BITS) | len(payload)) + bytes(payload)


def frame(payload: bytes) -> bytes:
    """The exact bytes dmlc-core's `RecordIOWriter::WriteRecord` writes for `payload` (split at every magic
    number found at a 4-byte-aligned offset, last part padded)."""
    n = len(payload)
    if n > MAX_RECORD_BYTES:
        raise ValueError(f"RecordIO records must be shorter than 2**29 bytes, got {n}")
    pos = payload.find(MAGIC_BYTES)
    if pos < 0:  # the common case: one whole part
        return _PART_HEADER.pack(MAGIC, n) + payload + _ZEROS[:(-n) % 4]
    view = memoryview(payload)
    aligned_end = n & ~3  # dmlc only looks at whole aligned words
    parts: list[bytes] = []
    start = 0
    while 0 <= pos < aligned_end:
        if pos % 4 == 0:
            parts.append(_part(CFLAG_START if start == 0 else CFLAG_MIDDLE, view[start:pos]))
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:  # an unaligned occurrence is left in place: readers only look for the magic at aligned offsets
            pos = payload.find(MAGIC_BYTES, pos + 1)
    tail = view[start:]
    pad = (-len(tail)) % 4
    parts.append(_part(CFLAG_END if start else CFLAG_WHOLE, tail) + _ZEROS[:pad])
    return parts[0] if len(parts) == 1 else b"".join(parts)


# --------------------------------------------------------------------------------------------------- IRHeader
class IRHeader(NamedTuple):
    """MXNet's image-record header: `flag` (0, or the number of float labels), `label`, `id`, `id2`."""

    flag: int
    label: Any
    id: int
    id2: int


_IR_FORMAT = struct.Struct("<IfQQ")
IR_SIZE = _IR_FORMAT.size


def pack_irheader(header: IRHeader | Sequence[Any], payload: bytes) -> bytes:
    """Like `mxnet.recordio.pack`: a scalar label goes in the header (flag 0); an array of labels is stored
    as float32 after the header, with flag = their count."""
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
        labels = b""
    else:
        arr = np.asarray(header.label, dtype="<f4").ravel()
        header = header._replace(flag=int(arr.size), label=0.0)
        labels = arr.tobytes()
    return _IR_FORMAT.pack(header.flag, float(header.label), header.id, header.id2) + labels + payload


def unpack_irheader(record: bytes) -> tuple[IRHeader, bytes]:
    """Like `mxnet.recordio.unpack`: (header, payload); with flag > 0 the label is a float32 array."""
    if len(record) < IR_SIZE:
        raise ValueError(f"an IRHeader needs {IR_SIZE} bytes, the record has {len(record)}")
    header = IRHeader(*_IR_FORMAT.unpack_from(record))
    body = record[IR_SIZE:]
    if header.flag > 0:
        need = 4 * header.flag
        if len(body) < need:
            raise ValueError(f"IRHeader flag {header.flag} announces {header.flag} float labels "
                             f"({need} bytes), the record has {len(body)} bytes after the header")
        header = header._replace(label=np.frombuffer(body, dtype="<f4", count=header.flag).astype(np.float32))
        body = body[need:]
    return header, body


# --------------------------------------------------------------------------------------------------- index
def read_index(path: PathLike, key_type: type = int) -> dict[Any, int]:
    """Read an `.idx` file (`key<TAB>offset` lines) into {key: offset}, in file order."""
    index: dict[Any, int] = {}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            fields = line.split(b"\t")
            try:
                if len(fields) != 2:
                    raise ValueError("expected two tab-separated fields")
                key = key_type(fields[0].decode("utf-8"))
                offset = int(fields[1])
                if offset < 0:
                    raise ValueError("negative offset")
            except (ValueError, UnicodeDecodeError) as err:
                raise RecordIOError(path, f"line {lineno}: expected 'key<TAB>offset', got {raw[:80]!r} ({err})"
                                    ) from None
            if key in index:
                raise RecordIOError(path, f"line {lineno}: key {key!r} appears twice")
            index[key] = offset
    return index


def index_path_for(path: PathLike) -> Path:
    """`part-000.rec` -> `part-000.idx` (MXNet's convention)."""
    p = Path(path)
    return p.with_suffix(".idx") if p.suffix == ".rec" else p.with_name(p.name + ".idx")


def _fsync_dir(directory: Path) -> None:
    # Makes the renames durable; not possible on every platform, and never essential for correctness.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- writer
class RecordIOWriter:
    """Stream records into `path` (and its `.idx`), atomically.

    Records go to a temporary file beside `path` (and the index beside `<idx>`), uniquely named so that two
    writers of one path never mix their records; `close()` flushes, fsyncs and renames both into place, so a
    reader never sees a half-written shard and a crash leaves any earlier file of that name intact. Leaving the
    `with` block by an exception discards the temporary files.
    """

    def __init__(self, path: PathLike, index: bool | PathLike = True) -> None:
        self.path = Path(path)
        self.index_path: Path | None = (index_path_for(path) if index is True else
                                        Path(index) if index not in (False, None) else None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = unique_temp_file(self.path)
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")
        self._idx_tmp = self._idx_fh = None
        if self.index_path is not None:
            fd, self._idx_tmp = unique_temp_file(self.index_path)
            self._idx_fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self._offset = 0
        self.count = 0

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def tell(self) -> int:
        """Byte offset where the next record starts."""
        return self._offset

    def write(self, payload: bytes, key: Any = None) -> int:
        """Append one record; returns its byte offset. `key` (default: the record number) goes in the index."""
        return self.write_framed(frame(payload), key)

    def write_framed(self, framed: bytes, key: Any = None) -> int:
        """Append a record already framed by `frame` (lets worker processes do the framing)."""
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        offset = self._offset
        self._fh.write(framed)
        self._offset += len(framed)
        if self._idx_fh is not None:
            self._idx_fh.write(f"{self.count if key is None else key}\t{offset}\n")
        self.count += 1
        return offset

    def close(self) -> None:
        """Flush, fsync and move the files into place (the index first, so a finished `.rec` always has it)."""
        if self._fh is None:
            return
        for fh in (self._idx_fh, self._fh):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
        self._fh = self._idx_fh = None
        if self.index_path is not None:
            os.replace(self._idx_tmp, self.index_path)  # type: ignore[arg-type]
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Discard everything written; files already at `path` stay as they were."""
        for fh, tmp in ((self._fh, self._tmp), (self._idx_fh, self._idx_tmp)):
            if fh is not None:
                try:
                    fh.close()
                except OSError:  # e.g. the disk is full: flushing the buffer fails; the file goes anyway
                    pass
            if tmp is not None and fh is not None:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        self._fh = self._idx_fh = None


# --------------------------------------------------------------------------------------------------- reader
class RecordIOReader:
    """Read a `.rec` file sequentially (`iter`) or by index (`read_idx`, `read_at`), validating the framing.

    `index`: True uses `<name>.idx` when it exists, a path uses that file, False ignores any index. With an
    index, opening checks that its last record ends exactly at the end of the file, so a truncated file is
    reported at once. Every framing problem raises `RecordIOError`.
    """

    def __init__(self, path: PathLike, index: bool | PathLike = True, key_type: type = int) -> None:
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise FileNotFoundError(f"RecordIO file not found: {self.path}") from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            self._fd = None
            raise RecordIOError(self.path, "not a regular file")
        self.size = info.st_size
        idx_path = (index_path_for(path) if index is True else Path(index) if index not in (False, None) else None)
        if index is True and idx_path is not None and not idx_path.exists():
            idx_path = None
        self.index_path = idx_path
        try:
            self.index: dict[Any, int] | None = read_index(idx_path, key_type) if idx_path is not None else None
            self.keys: list[Any] = list(self.index) if self.index is not None else []
            if self.index:
                self._check_index_tail()
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------------------------- life cycle
    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        # File descriptors do not survive pickling (DataLoader workers under spawn): reopen on arrival.
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def __len__(self) -> int:
        if self.index is None:
            raise TypeError(f"{self.path}: no index; the number of records is only known after iterating")
        return len(self.index)

    # -------------------------------------------------------------------------------- raw access
    def _pread(self, n: int, offset: int) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.path}: reader is closed")
        if hasattr(os, "pread"):  # positional: safe when several processes share the descriptor
            return os.pread(self._fd, n, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)
        return os.read(self._fd, n)

    def _read_record(self, offset: int, record: int | None, via_index: Any = None) -> tuple[bytes, int]:
        """(payload, offset after the record) for the record starting at `offset`."""
        pieces: list[bytes] = []
        pos = offset
        first = True
        while True:
            head = self._pread(8, pos)
            if len(head) < 8:
                if first and via_index is not None:
                    what = (f"index entry {via_index!r} points to byte {offset}, past the end of the file "
                            f"({self.size} bytes)" if offset >= self.size else
                            f"index entry {via_index!r}: truncated record header (expected 8 bytes, "
                            f"the file has {len(head)})")
                elif first:
                    what = f"truncated record header: expected 8 bytes, the file has {len(head)}"
                else:
                    what = (f"the file ends inside a split record: expected a continuation part at byte {pos} "
                            f"(cflag 2 or 3), found {len(head)} bytes")
                raise RecordIOError(self.path, what, offset, record)
            magic, lrec = _PART_HEADER.unpack(head)
            if magic != MAGIC:
                if first and via_index is not None:
                    what = (f"index entry {via_index!r} points to byte {offset}, which is not a record start "
                            f"(found {head[:4].hex()} instead of the magic number 0a23d7ce)")
                else:
                    what = (f"bad magic number at byte {pos}: expected 0a23d7ce, found {head[:4].hex()}"
                            + ("" if first else " (inside a split record)"))
                raise RecordIOError(self.path, what, offset, record)
            cflag, length = lrec >> LENGTH_BITS, lrec & LENGTH_MASK
            if cflag > CFLAG_END:
                raise RecordIOError(self.path, f"bad cflag {cflag} at byte {pos} (0-3 allowed)", offset, record)
            if first and cflag not in (CFLAG_WHOLE, CFLAG_START):
                what = (f"index entry {via_index!r} points into the middle of a split record (cflag {cflag})"
                        if via_index is not None else
                        f"bad cflag sequence: a record starts with a continuation part (cflag {cflag})")
                raise RecordIOError(self.path, what, offset, record)
            if not first and cflag not in (CFLAG_MIDDLE, CFLAG_END):
                raise RecordIOError(self.path, f"bad cflag sequence: expected a continuation part (cflag 2 or 3) "
                                               f"at byte {pos}, found cflag {cflag}", offset, record)
            need = _padded(length)
            # Checked against the file size before reading: a damaged length field (up to 2**29) must not
            # make us allocate half a gigabyte for a file that cannot hold it.
            have = max(0, self.size - (pos + 8))
            body = self._pread(need, pos + 8) if need and need <= have else b""
            if len(body) < need:
                raise RecordIOError(self.path, f"truncated payload: the part at byte {pos} declares {length} "
                                               f"bytes (+{need - length} padding), the file has {min(have, need)} "
                                               f"after its header", offset, record)
            pieces.append(body[:length] if need != length else body)
            pos += 8 + need
            if cflag in (CFLAG_WHOLE, CFLAG_END):
                break
            pieces.append(MAGIC_BYTES)
            first = False
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), pos

    def _check_index_tail(self) -> None:
        assert self.index is not None
        for key, off in self.index.items():
            if off >= self.size:
                raise RecordIOError(self.path, f"index entry {key!r} points to byte {off}, past the end of the file "
                                               f"({self.size} bytes): the file is truncated or the index is stale",
                                    off)
        key, last = max(self.index.items(), key=lambda kv: kv[1])
        _, end = self._read_record(last, None, via_index=key)
        if end != self.size:
            raise RecordIOError(self.path, f"{self.size - end} unexpected bytes after the last indexed record "
                                           f"(ends at byte {end}); the index does not match the file", end)

    def read_at(self, offset: int, record: int | None = None) -> bytes:
        """Payload of the record starting at byte `offset`."""
        return self._read_record(offset, record)[0]

    def read_idx(self, key: Any) -> bytes:
        """Payload of the record with index key `key`."""
        if self.index is None:
            raise KeyError(f"{self.path}: no index file")
        try:
            offset = self.index[key]
        except KeyError:
            raise KeyError(f"{self.path}: no record with key {key!r}") from None
        return self._read_record(offset, None, via_index=key)[0]

    def read_nth(self, n: int) -> bytes:
        """Payload of the n-th record of the index (file order)."""
        if self.index is None:
            raise IndexError(f"{self.path}: no index file")
        key = self.keys[n]
        return self._read_record(self.index[key], n, via_index=key)[0]

    # -------------------------------------------------------------------------------- sequential
    def records(self) -> Iterator[tuple[int, bytes]]:
        """(byte offset, payload) of every record, in file order, validating the framing."""
        offset, n = 0, 0
        while offset < self.size:
            payload, end = self._read_record(offset, n)
            yield offset, payload
            offset, n = end, n + 1

    def __iter__(self) -> Iterator[bytes]:
        for _, payload in self.records():
            yield payload
