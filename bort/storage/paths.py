"""Local paths made from remote names: every path derived from an S3 key lies inside its destination.

A bucket is untrusted input. S3 keys are arbitrary strings, so a listing may hold `m/../../X`, `m//abs/path`
or `m/./x`; joined naively to a destination they would write anywhere the user can. A key below a prefix is
accepted only as a plain relative path: non-empty segments that are neither `.` nor `..`, no leading `/`, no
backslash (a separator on Windows, never part of a checkpoint's file names), no control character (NUL
truncates paths in C, newlines forge log lines), no segment longer than a file name may be, and no name of the
bookkeeping files a download keeps beside its destination. The joined path is then resolved (following any
symlink already on disk) and must still lie inside the resolved destination.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import UnsafeKeyError

# Files a download keeps beside DEST (see download.py and lock.py): a key with such a name could collide
# with another key's partial download or lock.
PART_SUFFIX, PROGRESS_SUFFIX, PROGRESS_TMP_SUFFIX = ".part", ".part.json", ".part.json.tmp"
_RESERVED_HIDDEN_SUFFIXES = (".lock", ".s3.json")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_BYTES = 255  # NAME_MAX of Linux, macOS and Windows file systems


def unsafe_reason(relative: str) -> str | None:
    """Why `relative` (a key, or the part of a key below its prefix) is not a plain relative path; None if it is."""
    if not relative:
        return "it is empty"
    if _CONTROL.search(relative):
        return "it contains a control character (e.g. NUL or a newline)"
    if "\\" in relative:
        return "it contains a backslash (a path separator on Windows)"
    if relative.startswith("/"):
        return "it is an absolute path (it starts with '/')"
    segments = relative.split("/")
    if "" in segments:
        return "it has an empty path segment ('//' or a trailing '/')"
    if "." in segments or ".." in segments:
        return "it has a '.' or '..' path segment"
    if any(len(segment.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for segment in segments):
        return f"it has a path segment longer than {MAX_NAME_BYTES} bytes"
    name = segments[-1]
    if name.endswith((PART_SUFFIX, PROGRESS_SUFFIX, PROGRESS_TMP_SUFFIX)) or (name.startswith(".")
                                                         and name.endswith(_RESERVED_HIDDEN_SUFFIXES)):
        return (f"its name {name!r} is reserved for the files a download keeps beside its destination "
                f"(*{PART_SUFFIX}, *{PROGRESS_SUFFIX}, *{PROGRESS_TMP_SUFFIX}, .*.lock, .*.s3.json)")
    return None


def confined_path(root: str | Path, relative: str, *, action: str, url: str, key: str, what: str = "the key"
                  ) -> Path:
    """`root / relative` if `relative` is a plain relative path that stays inside `root` once resolved; else
    UnsafeKeyError naming `what` `key` (of `url`) and the reason."""
    reason = unsafe_reason(relative)
    if reason is not None:
        raise UnsafeKeyError(f"{action} {url}: refusing {what} {key!r}: {reason}; it would not map to a file "
                             f"inside {root}. Nothing was written")
    root = Path(root)
    target = root.joinpath(*relative.split("/"))
    resolved_root, resolved = root.resolve(), target.resolve()
    if not resolved.is_relative_to(resolved_root):
        # Only a symlink already inside `root` can do this: the checks above leave no '..' to climb with.
        raise UnsafeKeyError(f"{action} {url}: refusing {what} {key!r}: it resolves to {resolved}, outside "
                             f"{resolved_root} (a symbolic link on the way?). Nothing was written")
    return target


def check_layout(relatives: dict[str, str], *, action: str, url: str) -> None:
    """Refuse a listing in which one key's path is a directory on another key's path (`m/a` and `m/a/b`):
    one of the two could not be written, and the prefix would be fetched only in part. `relatives` maps each
    key to its path below the destination."""
    files = {relative: key for key, relative in relatives.items()}
    for key, relative in relatives.items():
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                raise UnsafeKeyError(f"{action} {url}: refusing the prefix: the key {files[parent]!r} is a file "
                                     f"where the key {key!r} needs a directory ({parent!r}). Nothing was written")
