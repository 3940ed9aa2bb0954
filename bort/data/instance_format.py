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
           "encode_header", "decode_header", "vocab_hash", "needs_u32"]

FORMAT = "bort-pretraining-instances"
FORMAT_VERSION = 1
LAYOUT_VERSION = 1
FLAG_IDS_U32, FLAG_POS_U32, FLAG_RANDOM_NEXT = 1, 2, 4
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


def decode_instance(payload: bytes) -> dict[str, np.ndarray]:
    """Arrays of one instance record: `input_ids`, `masked_positions`, `masked_ids` (int32, 1-D),
    `valid_length` and `is_random_next` (0-d). Raises ValueError when the payload does not add up."""
    if len(payload) < _HEAD.size:
        raise ValueError(f"instance record of {len(payload)} bytes is shorter than its {_HEAD.size}-byte header")
    version, flags, p, length = _HEAD.unpack_from(payload)
    if version != LAYOUT_VERSION:
        raise ValueError(f"instance layout version {version} (this reader knows {LAYOUT_VERSION})")
    id_dt = np.dtype("<u4" if flags & FLAG_IDS_U32 else "<u2")
    pos_dt = np.dtype("<u4" if flags & FLAG_POS_U32 else "<u2")
    expected = _HEAD.size + (length + p) * id_dt.itemsize + p * pos_dt.itemsize
    if len(payload) != expected:
        raise ValueError(f"instance record has {len(payload)} bytes; its header (valid length {length}, "
                         f"{p} masked) needs {expected}")
    off = _HEAD.size
    ids = np.frombuffer(payload, id_dt, length, off).astype(np.int32)
    off += length * id_dt.itemsize
    positions = np.frombuffer(payload, pos_dt, p, off).astype(np.int32)
    off += p * pos_dt.itemsize
    masked = np.frombuffer(payload, id_dt, p, off).astype(np.int32)
    if p and (positions.max() >= length or np.any(np.diff(positions) <= 0)):
        raise ValueError("masked positions must be strictly increasing and below the valid length")
    return {"input_ids": ids, "masked_positions": positions, "masked_ids": masked,
            "valid_length": np.array(length, dtype=np.int32),
            "is_random_next": np.array(bool(flags & FLAG_RANDOM_NEXT))}


def encode_header(header: Mapping[str, Any]) -> bytes:
    """The header record: compact JSON with sorted keys (byte-identical for identical settings)."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_header(payload: bytes) -> dict[str, Any]:
    """Parse a header record; ValueError when it is not one of ours."""
    try:
        header = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("record 0 is not a JSON header (not a bort pretraining shard?)") from None
    found = header.get("format") if isinstance(header, dict) else None
    if found != FORMAT:
        raise ValueError(f"record 0 is not a {FORMAT} header (format={found!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {header.get('format_version')!r}; this reader knows {FORMAT_VERSION}")
    return header


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
