"""Reading a JSON file with errors that say which file and where: one reader for configs, checkpoints' config.json
and search spaces, so that every one of them reports a missing file, non-UTF-8 bytes and malformed JSON alike."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json"]


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "JSON file") -> Any:
    """The decoded contents of `path`. A missing file ("<path>: <what> not found"), bytes that are not UTF-8
    (the byte offset) and malformed JSON (line, column and byte) raise `error` with a message naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text at byte {err.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON at line {err.lineno} column {err.colno} (byte {err.pos}): "
                    f"{err.msg}") from None
