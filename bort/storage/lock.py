"""One download per destination: a file lock beside DEST, held while DEST is fetched, resumed or reused.

Several processes may resolve the same object at once (every torchrun rank loading an `s3://` teacher through
the cache, two `bort fetch` runs into one directory). The first to take `.NAME.lock` downloads; the others
wait, then find DEST complete (the cache reuses it without a transfer) or download into a `.part` nobody else
writes. The lock is the kernel's (flock through the `filelock` package), so a process killed while holding
it releases it, and the next one resumes its partial download.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .errors import StorageError

logger = logging.getLogger(__name__)


def lock_path(dest: Path) -> Path:
    """The lock file of a destination: hidden, beside it (`dir/.NAME.lock`)."""
    return dest.with_name(f".{dest.name}.lock")


@contextmanager
def destination_lock(dest: Path, url: str) -> Iterator[None]:
    """Hold DEST's lock for the body; waits (without limit: a large download may take long) if another
    process holds it, saying so once in the log."""
    path = lock_path(dest)
    lock = FileLock(path)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("fetch %s: another process is downloading %s; waiting for it to finish", url, dest)
            lock.acquire()
    except OSError as err:
        raise StorageError(f"fetch {url}: cannot lock {path}: {err.strerror or err}") from err
    try:
        yield
    finally:
        lock.release()
