"""The binary layout of one pretraining instance in a RecordIO record, and the shard header record.

Record 0 of every shard is a header: UTF-8 JSON (it starts with `{`) naming the format and its version, the
tokenizer kind, the SHA-256 of the vocabulary in id order, the vocabulary size, the special ids and the
settings the instances were made with. Every later record is one instance, little-endian:

    offset 0  uint8   layout version (1)
    offset 1  uint8   flags: 1 = token ids are uint32 (else uint16), 2 = positions are uint32 (else uint16),
                             4 = segment B is a random next (kept for NSP users; Bort ignores it)
    offset 2  uint16  P, the number of masked positions
    offset 4  uint32  L, the valid length (no padding is stored)
    offset 8  L token ids (masking applied), then P masked positions (ascending, < L), then P original ids

Ids are stored as uint16 when the vocabulary has at most 65,536 entries (RoBERTa's 50,265 and BERT's 30,522
do), which halves the files; larger vocabularies get uint32, flagged per record.
"""
from __future__ import annotations

import hashlib
import json
import struct
import sys
from array import array
from typing import Any, Mapping

import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "LAYOUT_VERSION", "encode_instance", "decode_instance",
           "encode_header", "decode_header", "vocab_hash", "needs_u32", "MAX_VOCAB_SIZE"]

FORMAT = "bort-pretraining-instances"
FORMAT_VERSION = 1
LAYOUT_VERSION = 1
FLAG_IDS_U32, FLAG_POS_U32, FLAG_RANDOM_NEXT = 1, 2, 4
_KNOWN_FLAGS = FLAG_IDS_U32 | FLAG_POS_U32 | FLAG_RANDOM_NEXT
_HEAD = struct.Struct("<BBHI")
_U32 = "I" if array("I").itemsize == 4 else "L"  # array's typecodes name C types; pick the 4-byte one
_BIG_ENDIAN = sys.byteorder == "big"


def needs_u32(largest: int) -> bool:
    """Whether values up to `largest` need uint32 rather than uint16."""
    return largest > 0xFFFF


def _packed(values: list[int], u32: bool) -> bytes:
    arr = array(_U32 if u32 else "H", values)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def encode_instance(input_ids: list[int], masked_positions: list[int], masked_ids: list[int],
                    is_random_next: bool = False, ids_u32: bool = False, positions_u32: bool = False) -> bytes:
    """The record payload of one instance (see the module docstring)."""
    if len(masked_positions) != len(masked_ids):
        raise ValueError(f"{len(masked_positions)} masked positions but {len(masked_ids)} masked ids")
    flags = (FLAG_IDS_U32 if ids_u32 else 0) | (FLAG_POS_U32 if positions_u32 else 0) | (
        FLAG_RANDOM_NEXT if is_random_next else 0)
    head = _HEAD.pack(LAYOUT_VERSION, flags, len(masked_positions), len(input_ids))
    if ids_u32 == positions_u32:  # one array for all three parts (the usual uint16 case): a third of the calls
        arr = array(_U32 if ids_u32 else "H", input_ids)
        arr.extend(masked_positions)
        arr.extend(masked_ids)
        if _BIG_ENDIAN:
            arr.byteswap()
        return head + arr.tobytes()
    return b"".join((head, _packed(input_ids, ids_u32), _packed(masked_positions, positions_u32),
                     _packed(masked_ids, ids_u32)))


def decode_instance(payload: bytes, vocab_size: int | None = None, max_length: int | None = None
                    ) -> dict[str, np.ndarray]:
    """Arrays of one instance record: `input_ids`, `masked_positions`, `masked_ids` (int32, 1-D),
    `valid_length` and `is_random_next` (0-d). Raises ValueError when the payload does not add up, or when
    an id is not below `vocab_size` or the valid length exceeds `max_length` (the shard header's values:
    such a record would index past the model's embedding tables)."""
    if len(payload) < _HEAD.size:
        raise ValueError(f"instance record of {len(payload)} bytes is shorter than its {_HEAD.size}-byte header")
    version, flags, p, length = _HEAD.unpack_from(payload)
    if version != LAYOUT_VERSION:
        raise ValueError(f"instance layout version {version} (this reader knows {LAYOUT_VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError(f"unknown flag bits {flags & ~_KNOWN_FLAGS:#04x} in the instance header (flags {flags:#04x})")
    if length == 0:
        raise ValueError("valid length 0: an instance holds at least one token")
    if max_length is not None and length > max_length:
        raise ValueError(f"valid length {length} exceeds the shard's max_seq_length {max_length}")
    id_dt = np.dtype("<u4" if flags & FLAG_IDS_U32 else "<u2")
    pos_dt = np.dtype("<u4" if flags & FLAG_POS_U32 else "<u2")
    expected = _HEAD.size + (length + p) * id_dt.itemsize + p * pos_dt.itemsize
    if len(payload) != expected:
        raise ValueError(f"instance record has {len(payload)} bytes; its header (valid length {length}, "
                         f"{p} masked) needs {expected}")
    off = _HEAD.size
    # The range checks run on the stored unsigned values (never negative), before the int32 conversion, so a
    # uint32 value of 2**31 or more is reported as it is rather than wrapping to a negative id.
    ids = np.frombuffer(payload, id_dt, length, off)
    off += length * id_dt.itemsize
    positions = np.frombuffer(payload, pos_dt, p, off)
    off += p * pos_dt.itemsize
    masked = np.frombuffer(payload, id_dt, p, off)
    if p and (int(positions.max()) >= length or np.any(np.diff(positions.astype(np.int64)) <= 0)):
        raise ValueError(f"masked positions must be strictly increasing and below the valid length {length}, "
                         f"got {_preview(positions)}")
    if vocab_size is not None:
        for name, values in (("input_ids", ids), ("masked_ids", masked)):
            if values.size and int(values.max()) >= vocab_size:
                bad = int(np.argmax(values >= vocab_size))
                raise ValueError(f"{name}[{bad}] = {int(values[bad])} is out of range for the shard's vocabulary "
                                 f"of {vocab_size} ids (expected 0..{vocab_size - 1}; was the shard made with "
                                 "another vocabulary, or is it corrupted?)")
    return {"input_ids": ids.astype(np.int32), "masked_positions": positions.astype(np.int32),
            "masked_ids": masked.astype(np.int32), "valid_length": np.array(length, dtype=np.int32),
            "is_random_next": np.array(bool(flags & FLAG_RANDOM_NEXT))}


def _preview(values: np.ndarray, n: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}]"


def encode_header(header: Mapping[str, Any]) -> bytes:
    """The header record: compact JSON with sorted keys (byte-identical for identical settings)."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_header(payload: bytes) -> dict[str, Any]:
    """Parse and check a header record. ValueError, naming the field and what was expected, when it is not
    one of ours or a field the readers rely on is missing or of the wrong type or range."""
    try:
        header = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError covers JSONDecodeError
        raise ValueError("not a JSON header (not a bort pretraining shard?)") from None
    found = header.get("format") if isinstance(header, dict) else None
    if found != FORMAT:
        raise ValueError(f"not a {FORMAT} header (format={_short(found)})")
    version = header.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise ValueError(f"format version {_short(version)}; this reader knows {FORMAT_VERSION}")
    _check_header(header)
    return header


MAX_VOCAB_SIZE = 1 << 31  # ids are handed to torch as int32/int64; uint32 storage allows no more
HEADER_SPECIAL_IDS = ("cls", "sep", "pad", "unk", "mask")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_error(name: str, expected: str, value: Any = ..., missing: bool = False) -> ValueError:
    if missing:
        return ValueError(f"header field {name!r} is missing (expected {expected})")
    got = "null" if value is None else f"{type(value).__name__} {_short(value)}"
    return ValueError(f"header field {name!r} must be {expected}, got {got}")


def _check_header(header: dict[str, Any]) -> None:
    """The fields every reader relies on (`vocab_hash`, `vocab_size`, `special_ids.pad`,
    `settings.max_seq_length`) must be present and well typed; the informative ones are checked when present."""

    def required(name: str, expected: str, ok: Any, container: dict[str, Any] = header, prefix: str = "") -> Any:
        if name not in container:
            raise _field_error(prefix + name, expected, missing=True)
        value = container[name]
        if not ok(value):
            raise _field_error(prefix + name, expected, value)
        return value

    required("tokenizer_kind", "a string", lambda v: isinstance(v, str))
    required("vocab_hash", "a SHA-256 hex digest (64 hex digits)",
             lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v))
    vocab_size = required("vocab_size", f"an integer in 1..{MAX_VOCAB_SIZE}",
                          lambda v: _is_int(v) and 1 <= v <= MAX_VOCAB_SIZE)
    special = required("special_ids", "an object of special token ids", lambda v: isinstance(v, dict))
    in_vocab = f"an integer id in 0..{vocab_size - 1}"
    required("pad", in_vocab, lambda v: _is_int(v) and 0 <= v < vocab_size, special, "special_ids.")
    for name in HEADER_SPECIAL_IDS:
        if name != "pad" and name in special:
            required(name, in_vocab + " or null", lambda v: v is None or (_is_int(v) and 0 <= v < vocab_size),
                     special, "special_ids.")
    settings = required("settings", "an object of instance settings", lambda v: isinstance(v, dict))
    required("max_seq_length", "a positive integer", lambda v: _is_int(v) and 1 <= v < (1 << 32), settings,
             "settings.")
    optional = {"lowercase": ("true or false", lambda v: isinstance(v, bool)),
                "id_dtype": ("'uint16' or 'uint32'", lambda v: v in ("uint16", "uint32")),
                "position_dtype": ("'uint16' or 'uint32'", lambda v: v in ("uint16", "uint32")),
                "shard_index": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
                "num_shards": ("a positive integer", lambda v: _is_int(v) and v >= 1)}
    for name, (expected, ok) in optional.items():
        if name in header:
            required(name, expected, ok)


def vocab_hash(vocab: Mapping[str, int]) -> str:
    """SHA-256 (hex) of a token→id map in id order: each id's token as a uint32 byte length + UTF-8 bytes
    (an id without a token counts as length 0xFFFFFFFF), so two vocabularies hash alike only when every id
    means the same token."""
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    h = hashlib.sha256()
    for i in range(max(by_id, default=-1) + 1):
        token = by_id.get(i)
        if token is None:
            h.update(b"\xff\xff\xff\xff")
        else:
            raw = token.encode("utf-8")
            h.update(struct.pack("<I", len(raw)) + raw)
    return h.hexdigest()
