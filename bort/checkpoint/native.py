"""Our own checkpoint format: a directory with `config.json` (BortConfig fields, `bort_format_version` and the
`task` saved) and `model.safetensors`. Models of a kind (`kinds.py`, e.g. the LRA classifiers) add their own
settings to config.json under their key."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import BortConfig, ConfigError
from ..atomic import atomic_path, atomic_write_text
from ..jsonfile import read_json
from .errors import CheckpointError
from .kinds import KINDS, get_kind, kind_of_model

FORMAT_KEY = "bort_format_version"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def is_native_dir(path: Path) -> bool:
    """True when `path` is a directory holding our config.json (marked with `bort_format_version`)."""
    try:
        return FORMAT_KEY in read_json_config(path / CONFIG_NAME)
    except (CheckpointError, OSError):
        return False


def task_of(model: nn.Module) -> str:
    """The task `model` is saved as: its `TASK_MODELS` entry, or the name of its kind (`kinds.KINDS`)."""
    from ..model import TASK_MODELS

    for task, cls in TASK_MODELS.items():
        if task is not None and type(model) is cls:
            return task
    found = kind_of_model(model)
    if found is not None:
        return found[0].task
    raise TypeError(f"not a bort model: {type(model).__name__}")


def save_native(model: nn.Module, directory: str | os.PathLike, config: BortConfig | None = None) -> Path:
    """Write `model.safetensors` then `config.json` into `directory`, each atomically (temporary name,
    then rename), so neither file is ever seen half-written.

    config.json holds `config`: by default `model.config`, or for a model of a kind (`kinds.KINDS`, e.g. an
    LRA classifier) the config its kind derives from the model, settings included."""
    task = task_of(model)
    if config is None:
        kind = get_kind(task)
        config = kind.model_config(model) if kind is not None else model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "bort_task": task})
    values: dict[str, Any] = config.to_dict()
    values[FORMAT_KEY] = FORMAT_VERSION
    values["task"] = task
    atomic_write_text(directory / CONFIG_NAME, json.dumps(values, indent=2, sort_keys=True) + "\n")
    return directory


def read_json_config(path: Path) -> dict[str, Any]:
    """A config.json as a dict; malformed JSON names the file, line, column and byte."""
    values = read_json(path, CheckpointError, "checkpoint config")
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def native_config_from_values(values: dict[str, Any], path: Path) -> tuple[BortConfig, str | None]:
    """Our config.json values → (config, the task the checkpoint was saved from)."""
    from ..model import TASK_MODELS

    values = dict(values)
    version = values.pop(FORMAT_KEY, None)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(f"{path}: {FORMAT_KEY} {_short(version)} is not supported: expected {FORMAT_VERSION} "
                              "(a checkpoint written by another version of bort?)")
    task = values.pop("task", None)
    if task is not None and (not isinstance(task, str) or (task not in TASK_MODELS and task not in KINDS)):
        raise CheckpointError(f"{path}: task {_short(task)} is not one of "
                              f"{', '.join([t for t in TASK_MODELS if t is not None] + list(KINDS))} (or null)")
    kind = get_kind(task)
    try:
        return (kind.config_class if kind is not None else BortConfig).from_dict(values, source=str(path)), task
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning the library's terse errors into ones that name the file and
    compare its declared size with the real one (the common case: a truncated download).

    The header is validated first (`_check_safetensors_header`) so that a malformed or hostile one is
    described precisely (which tensor, which field, what was expected) and nothing is allocated for it;
    whatever the library still refuses is reported as a CheckpointError naming the file too."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        size = path.stat().st_size
        header_problem = _check_safetensors_header(path, size)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror or err}") from None
    if header_problem:
        raise CheckpointError(f"{path}: {header_problem}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors data ({type(err).__name__}: {err})") from None


# Bytes per element of the dtypes safetensors' torch loader maps to torch dtypes (the format's names).
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E5M2FNUZ": 1, "F8_E4M3FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
# The library refuses headers above 100 MB; so do we, before reading one.
MAX_SAFETENSORS_HEADER = 100_000_000


def _check_safetensors_header(path: Path, size: int) -> str | None:
    """Validate the 8-byte length, the JSON header (each tensor's dtype, shape and data_offsets, with the
    shape's byte size equal to its offsets' extent, tensors laid end to end from byte 0 of the data without
    gaps or overlaps) and the data extent; return a message or None."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"truncated at byte {len(head)}: expected an 8-byte header length"
        header_len = int.from_bytes(head, "little")
        if header_len > MAX_SAFETENSORS_HEADER:
            return (f"header length {header_len} at byte 0 exceeds the format's limit of {MAX_SAFETENSORS_HEADER} "
                    f"bytes: not a safetensors file")
        if header_len > size - 8:
            return (f"header length {header_len} at byte 0 runs past the end of the file "
                    f"({size} bytes): truncated or not a safetensors file")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except ValueError as err:  # malformed JSON or bytes that are not UTF-8
        return f"header (bytes 8..{8 + header_len}) is not valid JSON: {err}"
    except RecursionError:  # '[[[[…': the decoder recurses once per level
        return (f"header (bytes 8..{8 + header_len}) is not valid JSON: arrays or objects nested too deeply "
                f"to decode; expected an object of tensor entries")
    if not isinstance(header, dict):
        return f"header is not a JSON object (got {type(header).__name__})"
    extents = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                return "header __metadata__ must be an object of strings to strings"
            continue
        problem = _tensor_entry_problem(info)
        if problem:
            return f"header entry for tensor {name!r}: {problem}"
        start, stop = info["data_offsets"]
        extents.append((start, stop, name))
    data_size = size - 8 - header_len
    end = 0
    for index, (start, stop, name) in enumerate(sorted(extents)):
        if start != end:  # the format lays tensors end to end: the library refuses holes and overlaps too
            what = "overlaps the previous tensor" if start < end else f"leaves a gap of {start - end} bytes"
            return (f"tensor {name!r} data_offsets [{start}, {stop}] {what}: expected it to start at data byte "
                    f"{end}" + (", where the previous one ends" if index else ""))
        end = stop
    if end > data_size:
        return (f"truncated: tensors need {end} data bytes after the header (file byte {8 + header_len + end}) "
                f"but only {data_size} are present")
    if end < data_size:
        return (f"{data_size - end} unexpected bytes after the last tensor's data (file bytes "
                f"{8 + header_len + end}..{size}): expected the file to end there")
    return None


def _tensor_entry_problem(info: object) -> str | None:
    """What is wrong with one tensor's header entry {"dtype", "shape", "data_offsets"}, or None."""
    if not isinstance(info, dict):
        return f"expected an object with dtype, shape and data_offsets, got {type(info).__name__}"
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        return f"missing {', '.join(missing)}"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"unknown dtype {_short(dtype)}: expected one of {', '.join(SAFETENSORS_DTYPES)}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"shape {_short(shape)} is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        return f"data_offsets {_short(offsets)} is not [begin, end] with integers 0 <= begin <= end"
    nbytes = SAFETENSORS_DTYPES[dtype] * math.prod(shape)
    if nbytes != offsets[1] - offsets[0]:
        return (f"shape {shape} of {dtype} needs {nbytes} bytes but data_offsets {offsets} span "
                f"{offsets[1] - offsets[0]}")
    return None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
