"""Atomic file writes: a reader never sees a half-written checkpoint, whatever kills the writer; a write that
fails (disk full, quota, file too large, read-only file system) raises `WriteError` naming the file and errno
and leaves no temporary file behind."""
from __future__ import annotations

import contextlib
import errno as errno_module
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

# How errors of Rust libraries (safetensors) carry the OS error: "… I/O error: File too large (os error 27)".
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


class WriteError(OSError):
    """Writing a file failed: `filename` is the file, `errno`/`strerror` the operating system's reason and
    `what` the operation (e.g. "writing checkpoint step-0000040"). An OSError, so `except OSError` catches it."""

    def __init__(self, errno: int, strerror: str, filename: str | os.PathLike, what: str = "writing",
                 note: str = "") -> None:
        super().__init__(errno, strerror, os.fspath(filename))
        self.what, self.note = what, note

    def __str__(self) -> str:
        name = errno_module.errorcode.get(self.errno, "?") if self.errno is not None else "?"
        text = f"{self.filename}: {self.what} failed: {self.strerror} (errno {self.errno}, {name})"
        return f"{text}; {self.note}" if self.note else text

    def __reduce__(self):  # keep every field across processes (a grid trial's error reaches the parent pickled)
        return type(self), (self.errno, self.strerror, self.filename, self.what, self.note)


def os_error_in(exc: BaseException | None) -> tuple[int, str] | None:
    """(errno, message) of the operating-system error behind `exc`, following its cause/context chain: torch
    reports a failed write as `RuntimeError: unexpected pos …` with the OSError only in the context, and
    safetensors puts the errno in its message. None when no OS error is behind it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno, exc.strerror or os.strerror(exc.errno)
        match = _OS_ERROR_IN_TEXT.search(str(exc))
        if match:
            code = int(match.group(1))
            return code, os.strerror(code)
        exc = exc.__cause__ or exc.__context__
    return None


def raise_write_error(exc: BaseException, path: str | os.PathLike, what: str = "writing") -> None:
    """Re-raise `exc` as a `WriteError` about `path` when an OS error is behind it (else do nothing)."""
    if isinstance(exc, WriteError):
        return
    found = os_error_in(exc)
    if found is not None:
        raise WriteError(found[0], found[1], path, what) from exc


def unique_temp_file(dest: str | os.PathLike) -> tuple[int, Path]:
    """Create a new temporary file beside `dest`, named `.<name>.<random>.tmp` so that two writers of one
    destination never share it, with the permissions an ordinary new file gets; returns (open descriptor, path).
    A failure raises `WriteError` naming `dest`."""
    dest = Path(dest)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise_write_error(exc, dest, "creating a temporary file beside it")
        raise
    # mkstemp makes the file private (0600); give it the permissions an ordinary file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    return fd, Path(tmp_name)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success fsync and rename it over `dest`, on error remove it.

    The temporary file lives in the destination directory so that the final `os.replace` is a rename
    within one file system (atomic on POSIX and Windows). A failed write raises `WriteError` naming `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = unique_temp_file(dest)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise_write_error(exc, dest)
        raise


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_with(dest: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and move the result to `dest` atomically."""
    with atomic_path(dest) as tmp:
        writer(tmp)
