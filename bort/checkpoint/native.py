"""Our own checkpoint format: a directory with `config.json` (BortConfig fields) and `model.safetensors`."""
from __future__ import annotations

import json
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
    from ..model import TASK_MODELS

    for task, cls in TASK_MODELS.items():
        if task is not None and type(model) is cls:
            return task
    raise TypeError(f"not a bort model: {type(model).__name__}")


def save_native(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write `model.safetensors` then `config.json` into `directory`, each atomically (temporary name,
    then rename), so neither file is ever seen half-written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "bort_task": task_of(model)})
    values: dict[str, Any] = model.config.to_dict()
    values[FORMAT_KEY] = FORMAT_VERSION
    values["task"] = task_of(model)
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
    values = dict(values)
    values.pop(FORMAT_KEY, None)
    task = values.pop("task", None)
    try:
        return BortConfig.from_dict(values, source=str(path)), task
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning the library's terse errors into ones that name the file and
    compare its declared size with the real one (the common case: a truncated download)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    size = path.stat().st_size
    header_problem = _check_safetensors_header(path, size)
    if header_problem:
        raise CheckpointError(f"{path}: {header_problem}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors data ({err})") from None


def _check_safetensors_header(path: Path, size: int) -> str | None:
    """Validate the 8-byte length, the JSON header and the data extent; return a message or None."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"truncated at byte {len(head)}: expected an 8-byte header length"
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            return (f"header length {header_len} at byte 0 runs past the end of the file "
                    f"({size} bytes): truncated or not a safetensors file")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return f"header (bytes 8..{8 + header_len}) is not valid JSON: {err}"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            return f"tensor {name!r} has no valid data_offsets in the header"
        end = max(end, stop)
    data_size = size - 8 - header_len
    if end > data_size:
        return (f"truncated: tensors need {end} data bytes after the header (file byte {8 + header_len + end}) "
                f"but only {data_size} are present")
    return None
