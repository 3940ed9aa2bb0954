"""MXNet/Gluon `.params` checkpoints, read with numpy alone, and the GluonNLP → Bort name map.

A `.params` file is MXNet's `NDArray::Save` list (all integers little-endian):

    uint64 0x112 (list magic), uint64 reserved, uint64 n, n arrays, uint64 k, k × (uint64 len, name bytes)

with k either n or 0 (an unnamed list). One array, in the layouts MXNet writes or still loads:

    V2 0xF993FAC9 / V3 0xF993FACA: int32 storage type, [storage shape if sparse], shape, context,
        int32 type flag, [sparse aux types and shapes], data, [sparse aux data]
    V1 0xF993FAC8: shape, context, int32 type flag, data
    pre-magic legacy: the first uint32 *is* ndim, then ndim × uint32 dims, context, type flag, data

where a shape is int32 ndim + ndim × int64 dims and a context is int32 device type + int32 device id.
V3 arrays use numpy shape semantics (ndim 0 is a scalar, -1 unknown); in V2/V1/legacy ndim 0 marks an
array without data. Layouts checked against MXNet's `src/ndarray/ndarray.cc` (`NDArray::Load`,
`LegacyLoad`) and `include/mxnet/tuple.h` (`Tuple::Save`).
"""
from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["read_params", "gluon_to_bort_state_dict", "infer_gluon_config", "is_finetuned_layout",
           "expected_gluon_names", "GLUONNLP_083_DECODER_LAYER_NORM_EPS", "CheckpointError"]

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
# MXNet sets no limit, but no real tensor comes near this; a larger ndim means we are reading garbage.
MAX_NDIM = 32
# Above this an array count is garbage rather than a sign of truncation (BERT-large has ~400 arrays).
MAX_ARRAYS = 1 << 20

# mshadow type flags. bfloat16 (12) has no numpy dtype: it is read as uint16 and widened to float32.
_TYPE_FLAGS: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")), 1: ("float64", np.dtype("<f8")), 2: ("float16", np.dtype("<f2")),
    3: ("uint8", np.dtype("u1")), 4: ("int32", np.dtype("<i4")), 5: ("int8", np.dtype("i1")),
    6: ("int64", np.dtype("<i8")), 7: ("bool", np.dtype("u1")), 8: ("int16", np.dtype("<i2")),
    9: ("uint16", np.dtype("<u2")), 10: ("uint32", np.dtype("<u4")), 11: ("uint64", np.dtype("<u8")),
    12: ("bfloat16", np.dtype("<u2")),
}
_BOOL, _BF16 = 7, 12
# Storage types and their number of auxiliary arrays (row_sparse: indices; csr: indptr, indices).
_AUX_COUNT = {0: 0, 1: 1, 2: 2}
_STYPE_NAMES = {1: "row_sparse", 2: "csr"}
_DEVICE_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}


@dataclass
class _Entry:
    """Where one array's data lies, found by the header scan."""

    index: int
    data_offset: int
    shape: tuple[int, ...]
    type_flag: int
    problem: str | None = None  # why it cannot be returned; reported once its name is known


class _Reader:
    """A bounded reader: every read is checked against the bytes left, so a bad length fails cleanly
    instead of allocating or seeking past the end."""

    def __init__(self, stream: BinaryIO, label: str, size: int) -> None:
        self.stream, self.label, self.size, self.pos = stream, label, size, 0

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def error(self, message: str, at: int | None = None) -> CheckpointError:
        return CheckpointError(f"{self.label}: byte {self.pos if at is None else at}: {message}")

    def _need(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise CheckpointError(f"{self.label}: truncated at byte {self.pos} while reading {what}: "
                                  f"expected {n} bytes, {self.remaining} remain")

    def read(self, n: int, what: str) -> bytes:
        self._need(n, what)
        data = self.stream.read(n)
        if len(data) != n:  # the file shrank under us
            raise CheckpointError(f"{self.label}: short read at byte {self.pos} while reading {what}: "
                                  f"expected {n} bytes, got {len(data)}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        self.stream.seek(n, os.SEEK_CUR)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]


def _describe(index: int, name: str | None = None) -> str:
    return f"array {index}" + (f" ({name!r})" if name is not None else "")


def _read_shape(r: _Reader, what: str, *, legacy_ndim: int | None = None) -> tuple[int, ...] | None:
    """Read a shape; None means "unknown" (ndim -1 or a dim of -1, numpy semantics)."""
    at = r.pos
    if legacy_ndim is not None:
        ndim, fmt, size = legacy_ndim, "<I", 4
    else:
        ndim, fmt, size = r.unpack("<i", f"the ndim of {what}"), "<q", 8
        if ndim == -1:
            return None
        if not 0 <= ndim <= MAX_NDIM:
            raise r.error(f"absurd ndim {ndim} for {what}: expected -1..{MAX_NDIM}", at)
    raw = r.read(size * ndim, f"the {ndim} dims of {what}")
    dims = struct.unpack(f"<{ndim}{fmt[1]}", raw)
    if any(d == -1 for d in dims):
        return None
    if any(d < 0 for d in dims):
        raise r.error(f"absurd shape {dims} for {what}: dims must be >= 0", at)
    return tuple(dims)


def _skip_data(r: _Reader, shape: tuple[int, ...], type_flag: int, what: str) -> None:
    itemsize = _TYPE_FLAGS[type_flag][1].itemsize
    nbytes = itemsize * math.prod(shape)
    if nbytes > r.size:  # not a truncation: no file this size could hold it
        raise r.error(f"absurd shape {shape} for {what}: {nbytes} bytes of data, "
                      f"more than the whole file ({r.size} bytes)")
    r.skip(nbytes, what)


def _read_type_flag(r: _Reader, what: str) -> int:
    at = r.pos
    flag = r.unpack("<i", f"the type flag of {what}")
    if flag not in _TYPE_FLAGS:
        raise r.error(f"unknown type flag {flag} for {what}: expected one of {sorted(_TYPE_FLAGS)}", at)
    return flag


def _scan_array(r: _Reader, index: int) -> _Entry:
    """Parse one array's header and step over its data, recording where the data lies."""
    what = _describe(index)
    start = r.pos
    magic = r.unpack("<I", f"the magic of {what}")
    stype, aux = 0, 0
    if magic in (V2_MAGIC, V3_MAGIC):
        at = r.pos
        stype = r.unpack("<i", f"the storage type of {what}")
        if stype not in _AUX_COUNT:
            raise r.error(f"unknown storage type {stype} for {what}: expected 0 (dense), "
                          f"1 (row_sparse) or 2 (csr)", at)
        aux = _AUX_COUNT[stype]
        if aux:  # read for the layout only: see below for why it is not trusted
            _read_shape(r, f"the storage shape of {what}")
        shape = _read_shape(r, f"the shape of {what}")
        # V2 (legacy shape semantics) marks "no data" with ndim 0; V3 with an unknown shape.
        if shape is None or (magic == V2_MAGIC and len(shape) == 0):
            return _Entry(index, r.pos, (), 0, problem="holds no data (an uninitialised array)")
    elif magic == V1_MAGIC:
        shape = _read_shape(r, f"the shape of {what}")
        if shape is None or len(shape) == 0:
            return _Entry(index, r.pos, (), 0, problem="holds no data (an uninitialised array)")
    elif magic <= MAX_NDIM:  # pre-magic layout: the word just read is ndim
        shape = _read_shape(r, f"the shape of {what}", legacy_ndim=magic)
        if shape is None or len(shape) == 0:
            return _Entry(index, r.pos, (), 0, problem="holds no data (an uninitialised array)")
    else:
        raise r.error(f"bad magic 0x{magic:08X} for {what}: expected 0x{V2_MAGIC:08X} or "
                      f"0x{V3_MAGIC:08X} (or V1 0x{V1_MAGIC:08X}, or a legacy ndim <= {MAX_NDIM})", start)

    at = r.pos
    device = r.unpack("<i", f"the device type of {what}")
    r.unpack("<i", f"the device id of {what}")
    if device not in _DEVICE_TYPES:
        raise r.error(f"unknown device type {device} for {what}: expected one of {sorted(_DEVICE_TYPES)}", at)
    type_flag = _read_type_flag(r, what)
    aux_meta = []
    for k in range(aux):
        aux_flag = _read_type_flag(r, f"aux array {k} of {what}")
        aux_shape = _read_shape(r, f"the shape of aux array {k} of {what}")
        if aux_shape is None:
            raise r.error(f"unknown shape for aux array {k} of {what}")
        aux_meta.append((aux_flag, aux_shape))

    data_offset = r.pos
    if aux:
        # The saved storage shape can be stale (MXNet writes (0,) for a csr made by tostype); MXNet
        # itself sizes the values from the index arrays, and so do we.
        storage_shape: tuple[int, ...]
        if stype == 2:
            storage_shape = aux_meta[1][1]
        else:
            storage_shape = (aux_meta[0][1][0] if aux_meta[0][1] else 0,) + shape[1:]
    _skip_data(r, storage_shape if aux else shape, type_flag, f"data of {what}")
    for k, (aux_flag, aux_shape) in enumerate(aux_meta):
        _skip_data(r, aux_shape, aux_flag, f"data of aux array {k} of {what}")
    if aux:
        # Parsed fully so the rest of the file stays readable and the error can give the array's name.
        return _Entry(index, data_offset, shape, type_flag,
                      problem=f"uses {_STYPE_NAMES[stype]} storage; sparse arrays are unsupported "
                              f"(convert with .tostype('default') in MXNet and save again)")
    return _Entry(index, data_offset, shape, type_flag)


def _scan(r: _Reader) -> tuple[list[_Entry], list[str]]:
    """Parse the whole file's structure (headers and names) without loading any data."""
    magic = r.unpack("<Q", "the list magic")
    if magic != LIST_MAGIC:
        raise r.error(f"bad list magic 0x{magic:X}: expected 0x{LIST_MAGIC:X} "
                      f"(not an MXNet NDArray file)", 0)
    r.unpack("<Q", "the reserved word")
    at = r.pos
    count = r.unpack("<Q", "the array count")
    if count > r.remaining // 4:  # every array takes at least its 4-byte magic
        if count > MAX_ARRAYS:
            raise r.error(f"absurd array count {count}: only {r.remaining} bytes follow", at)
        raise CheckpointError(f"{r.label}: truncated at byte {r.pos} after the array count: {count} arrays "
                              f"need at least {4 * count} bytes, {r.remaining} remain")
    entries = [_scan_array(r, i) for i in range(count)]

    at = r.pos
    name_count = r.unpack("<Q", "the name count")
    if name_count not in (0, count):
        raise r.error(f"name count {name_count} does not match array count {count} "
                      f"(expected {count} or 0)", at)
    names = []
    for i in range(name_count):
        length = r.unpack("<Q", f"the length of name {i}")
        raw = r.read(length, f"name {i} ({length} bytes)")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise r.error(f"name {i} is not UTF-8 ({exc.reason})", r.pos - length) from None
    if r.remaining:
        raise r.error(f"trailing garbage: {r.remaining} unexpected bytes after the name table")
    if not names:
        names = [str(i) for i in range(count)]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise CheckpointError(f"{r.label}: duplicate array name {name!r} (array {i})")
        seen.add(name)
    for entry in entries:
        if entry.problem:
            raise CheckpointError(f"{r.label}: {_describe(entry.index, names[entry.index])} {entry.problem}")
    return entries, names


def _load_data(r: _Reader, entry: _Entry, name: str) -> np.ndarray:
    dtype = _TYPE_FLAGS[entry.type_flag][1]
    count = math.prod(entry.shape)
    flat = np.empty(count, dtype=dtype)
    view = memoryview(flat).cast("B")
    r.stream.seek(entry.data_offset)
    done = 0
    while done < len(view):  # readinto may return short counts; loop until the array is full
        n = r.stream.readinto(view[done:])
        if not n:
            raise CheckpointError(f"{r.label}: short read at byte {entry.data_offset + done} while reading "
                                  f"data of {_describe(entry.index, name)}: expected {len(view)} bytes, "
                                  f"got {done}")
        done += n
    if entry.type_flag == _BF16:
        # bfloat16 is the upper half of a float32, so widening is exact.
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    elif entry.type_flag == _BOOL:
        flat = flat != 0
    elif not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat.reshape(entry.shape)


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet/Gluon `.params` file into numpy arrays, keyed and ordered as in the file.

    Unnamed list files give keys "0", "1", …. Every dense dtype MXNet saves is returned as its numpy dtype,
    except bfloat16, which numpy lacks: it is widened to float32 (exactly). The file is read once: a header
    scan seeks over the data, then each array's bytes are read straight into its buffer.
    Raises CheckpointError naming the file, the byte offset and the array on any malformed input.
    """
    label = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            reader = _Reader(stream, label, size)
            entries, names = _scan(reader)
            return {name: _load_data(reader, entry, name) for entry, name in zip(entries, names)}
    except OSError as exc:
        raise CheckpointError(f"{label}: cannot read: {exc.strerror or exc}") from exc


# --- names ------------------------------------------------------------------------------------------------
# Two layouts are read. "Pretrained": what GluonNLP's BortModel/BERTModel saves (bort.params, the GluonNLP
# model zoo). "Fine-tuned": what the original finetune_bort.py saves, a BortClassifier whose encoder is the
# child `bort` (so every pretrained name gains a `bort.` prefix) and whose head is a HybridSequential
# `classifier` of [Dropout], Dense(units, tanh), [Dropout], Dense(num_classes): the Dense layers are children
# 1 and 3, or 0 and 1 when it was built with dropout 0 (Dropout layers have no parameters). See docs/gluon.md.
#
# GluonNLP (Bort and BERT) parameter names → ours, which are Hugging Face BERT's.
_TOP_LEVEL = {
    "word_embed.0.weight": "embeddings.word_embeddings.weight",
    "token_type_embed.0.weight": "embeddings.token_type_embeddings.weight",
    "encoder.position_weight": "embeddings.position_embeddings.weight",
    "encoder.layer_norm.gamma": "embeddings.LayerNorm.weight",
    "encoder.layer_norm.beta": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
    # GluonNLP BERT's next-sentence classifier; HF BertForPreTraining calls it cls.seq_relationship.
    "classifier.weight": "cls.seq_relationship.weight",
    "classifier.bias": "cls.seq_relationship.bias",
    # MLM decoder: Dense → GELU → LayerNorm → Dense tied to the word embedding (decoder.3.weight).
    "decoder.0.weight": "lm_head.dense.weight",
    "decoder.0.bias": "lm_head.dense.bias",
    "decoder.2.gamma": "lm_head.layer_norm.weight",
    "decoder.2.beta": "lm_head.layer_norm.bias",
    "decoder.3.bias": "lm_head.bias",
}
_CELL = {
    "attention_cell.proj_query": "attention.self.query",
    "attention_cell.proj_key": "attention.self.key",
    "attention_cell.proj_value": "attention.self.value",
    "proj": "attention.output.dense",
    "layer_norm": "attention.output.LayerNorm",
    "ffn.ffn_1": "intermediate.dense",
    "ffn.ffn_2": "output.dense",
    "ffn.layer_norm": "output.LayerNorm",
}
_PARAM = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_CELL_NAME = re.compile(r"encoder\.transformer_cells\.(\d+)\.(.+)\.(weight|bias|gamma|beta)")
_TIED = "decoder.3.weight"
_WORD = "word_embed.0.weight"

# The fine-tuned layout (finetune_bort.py's BortClassifier).
FINETUNED_PREFIX = "bort."
_HEAD_NAME = re.compile(r"classifier\.(\d+)\.(weight|bias)")
# Child indices of the head's two Dense layers → our BortClassificationHead's modules.
_HEAD_LAYOUTS = {(1, 3): "dropout > 0", (0, 1): "dropout 0"}
_HEAD_MODULES = ("classifier.dense", "classifier.out_proj")

# GluonNLP 0.8.3's BERTLayerNorm default, which its MLM decoder used whatever the encoder's epsilon (0.10.0
# uses the encoder's): the value the released bort.params needs (docs/gluon.md).
GLUONNLP_083_DECODER_LAYER_NORM_EPS = 1e-12


def is_finetuned_layout(params: dict[str, np.ndarray]) -> bool:
    """True for a file saved from the original's BortClassifier (encoder names under `bort.`)."""
    return any(name.startswith(FINETUNED_PREFIX) for name in params)


def _map_name(name: str, num_layers: int) -> str | None:
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _CELL_NAME.fullmatch(name)
    if match is None:
        return None
    layer, module, param = int(match.group(1)), match.group(2), match.group(3)
    if layer >= num_layers or module not in _CELL:
        return None
    # LayerNorm parameters are gamma/beta in Gluon, Dense ones weight/bias; anything else is foreign.
    if (module.endswith("layer_norm")) != (param in ("gamma", "beta")):
        return None
    return f"encoder.layer.{layer}.{_CELL[module]}.{_PARAM[param]}"


def expected_gluon_names(num_layers: int, finetuned: bool) -> list[str]:
    """Every name a `num_layers`-layer model of the layout may hold (optional parts included)."""
    cells = [f"encoder.transformer_cells.{layer}.{module}.{param}"
             for layer in range(num_layers) for module in _CELL
             for param in (("gamma", "beta") if module.endswith("layer_norm") else ("weight", "bias"))]
    pretrained = [*_TOP_LEVEL, _TIED, *cells]
    if not finetuned:
        return pretrained
    head = [f"classifier.{index}.{param}" for index in sorted({i for pair in _HEAD_LAYOUTS for i in pair})
            for param in ("weight", "bias")]
    return [FINETUNED_PREFIX + name for name in pretrained] + head


def _unmatched_error(where: str, unknown: list[str], num_layers: int, finetuned: bool) -> CheckpointError:
    """The names no layout explains, each with the nearest names the file's layout (or the other) expects."""
    import difflib

    layout = "fine-tuned" if finetuned else "pretrained"
    expected = expected_gluon_names(num_layers, finetuned) + expected_gluon_names(num_layers, not finetuned)
    shown = 20  # enough to see the pattern; the names themselves are all listed above
    hints = []
    for name in unknown[:shown]:
        near = difflib.get_close_matches(name, expected, n=2, cutoff=0.6)
        hints.append(f"{name} → {' or '.join(near) if near else 'nothing close'}")
    more = f"; … and {len(unknown) - shown} more" if len(unknown) > shown else ""
    return CheckpointError(
        f"{where}{len(unknown)} Gluon parameter name(s) not understood for a {num_layers}-layer Bort/BERT model: "
        f"{', '.join(unknown)}. They match neither the pretrained layout (GluonNLP BortModel/BERTModel: "
        f"word_embed.*, encoder.*, decoder.*) nor the fine-tuned one (the original finetune_bort.py's "
        f"BortClassifier: bort.* and classifier.N.*); this file looks {layout}. Nearest expected names: "
        + "; ".join(hints) + more)


def _map_head(head: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """BortClassifier's head names → ours, and the names that are not part of it."""
    layers: dict[int, dict[str, np.ndarray]] = {}
    unknown = []
    for name, array in head.items():
        match = _HEAD_NAME.fullmatch(name)
        if match is None:
            unknown.append(name)
        else:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = array
    if not layers or unknown:
        return {}, unknown
    indices = tuple(sorted(layers))
    if indices not in _HEAD_LAYOUTS:
        raise CheckpointError(
            f"{where}classifier layers at child indices {', '.join(map(str, indices))}: expected the two Dense "
            f"layers of the original BortClassifier, at classifier.1 and classifier.3 (built with dropout > 0) "
            f"or classifier.0 and classifier.1 (dropout 0)")
    mapped = {}
    for index, module in zip(indices, _HEAD_MODULES):
        for param in ("weight", "bias"):
            if param not in layers[index]:
                raise CheckpointError(f"{where}classifier.{index}.{param} is missing: the BortClassifier head "
                                      f"({_HEAD_LAYOUTS[indices]}) needs classifier.{indices[0]}.weight/bias "
                                      f"and classifier.{indices[1]}.weight/bias")
            mapped[f"{module}.{param}"] = layers[index][param]
    return mapped, []


def gluon_to_bort_state_dict(params: dict[str, np.ndarray], num_layers: int,
                             source: str | None = None) -> dict[str, torch.Tensor]:
    """Rename GluonNLP Bort/BERT parameters, pretrained or fine-tuned by the original finetune_bort.py, to
    our (Hugging Face BERT) names as torch tensors.

    Gluon Dense weights are (out, in) like torch.nn.Linear, so no transposes are needed. The decoder's
    output weight (`decoder.3.weight`) is tied to the word embedding: it is checked equal and dropped.
    A fine-tuned BortClassifier's head (`classifier.1`/`classifier.3`, or `classifier.0`/`classifier.1`
    without dropout) becomes our `classifier.dense`/`classifier.out_proj`, which compute the same thing.
    Names of neither layout (or layers >= num_layers) raise CheckpointError listing them all with the
    nearest expected names; missing names are not checked here, the caller compares against the model's
    state dict. `source` (the file the params came from) starts every error message.
    """
    where = f"{source}: " if source else ""
    finetuned = is_finetuned_layout(params)
    if finetuned:
        encoder = {n[len(FINETUNED_PREFIX):]: a for n, a in params.items() if n.startswith(FINETUNED_PREFIX)}
        head, head_unknown = _map_head({n: a for n, a in params.items() if not n.startswith(FINETUNED_PREFIX)},
                                       where)
    else:
        encoder, head, head_unknown = params, {}, []
    prefix = FINETUNED_PREFIX if finetuned else ""
    unknown = sorted([prefix + n for n in encoder if n != _TIED and _map_name(n, num_layers) is None]
                     + head_unknown)
    if unknown:
        raise _unmatched_error(where, unknown, num_layers, finetuned)
    if _TIED in encoder:
        tied_name, word_name = prefix + _TIED, prefix + _WORD
        if _WORD not in encoder:
            raise CheckpointError(f"{where}{tied_name} (tied to the word embedding) is present but {word_name} "
                                  f"is missing")
        tied, word = encoder[_TIED], encoder[_WORD]
        if tied.shape != word.shape or not np.array_equal(tied, word):
            raise CheckpointError(f"{where}{tied_name} {tied.shape} differs from {word_name} {word.shape}; "
                                  f"Bort's decoder must be tied to the word embedding")
    state = {_map_name(name, num_layers): torch.from_numpy(np.ascontiguousarray(array))
             for name, array in encoder.items() if name != _TIED}
    state.update({name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in head.items()})
    return state


def infer_gluon_config(params: dict[str, np.ndarray]) -> dict[str, int]:
    """Model sizes implied by a GluonNLP Bort/BERT checkpoint's shapes, as our config field names.

    Gives hidden_size, vocab_size, max_position_embeddings, num_hidden_layers, intermediate_size and
    type_vocab_size (0 without a token-type embedding), each only when the arrays it comes from are present;
    for a fine-tuned BortClassifier also num_labels (the rows of its last Dense layer).
    The number of attention heads leaves no trace in the shapes and is never inferred.
    """
    config: dict[str, int] = {}
    if is_finetuned_layout(params):
        head = {n: a for n, a in params.items() if _HEAD_NAME.fullmatch(n) and n.endswith(".weight")}
        params = {n[len(FINETUNED_PREFIX):]: a for n, a in params.items() if n.startswith(FINETUNED_PREFIX)}
        last = max(head, key=lambda n: int(n.split(".")[1]), default=None)
        if last is not None and head[last].ndim >= 1:
            config["num_labels"] = int(head[last].shape[0])
    word = params.get(_WORD, params.get(_TIED))
    if word is not None and word.ndim == 2:
        config["vocab_size"], config["hidden_size"] = int(word.shape[0]), int(word.shape[1])
    position = params.get("encoder.position_weight")
    if position is not None and position.ndim == 2:
        config["max_position_embeddings"] = int(position.shape[0])
        config.setdefault("hidden_size", int(position.shape[1]))
    layers = {int(m.group(1)) for m in map(_CELL_NAME.fullmatch, params) if m is not None}
    if layers:
        config["num_hidden_layers"] = max(layers) + 1
        ffn_1 = params.get(f"encoder.transformer_cells.{min(layers)}.ffn.ffn_1.weight")
        if ffn_1 is not None and ffn_1.ndim == 2:
            config["intermediate_size"] = int(ffn_1.shape[0])
    token_type = params.get("token_type_embed.0.weight")
    config["type_vocab_size"] = int(token_type.shape[0]) if token_type is not None else 0
    return config
