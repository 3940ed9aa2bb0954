"""Reading a JSON file with errors that say which file and where: one reader for configs, checkpoints' config.json
and search spaces, so that every one of them reports a missing file, non-UTF-8 bytes and malformed JSON alike."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["parse_json", "read_json"]


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "JSON file") -> Any:
    """The decoded contents of `path`. A missing file ("<path>: <what> not found"), bytes that are not UTF-8
    (the byte offset), malformed JSON (line, column and byte) and nesting too deep to decode raise `error`
    with a message naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} is a directory, not a file") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text at byte {err.start}") from None
    except OSError as err:  # unreadable (permissions, I/O error): still the caller's error type, with the file
        raise error(f"{path}: cannot read {what}: {err.strerror or err}") from None
    return parse_json(text, error, str(path))


def parse_json(text: str | bytes, error: type[Exception] = ValueError, source: str = "JSON text") -> Any:
    """`json.loads(text)` with its failures raised as `error` naming `source`: malformed JSON (line, column
    and byte) and arrays or objects nested too deeply for the decoder (e.g. `[[[[…` from a hostile file,
    which the standard decoder reports as a bare RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{source}: not valid JSON at line {err.lineno} column {err.colno} (byte {err.pos}): "
                    f"{err.msg}") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply to decode (arrays or objects inside one another beyond "
                    f"the interpreter's recursion limit of {sys.getrecursionlimit()})") from None
    except UnicodeDecodeError as err:  # bytes input
        raise error(f"{source}: not UTF-8 text at byte {err.start}") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts (4300 by default)
        raise error(f"{source}: not usable JSON: {err}") from None
