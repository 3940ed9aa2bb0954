"""Output directories owned by one run at a time.

Every command that writes an output directory (distillation, LRA, fine-tuning, the grid, Agora, the search,
pretraining data creation) claims it with `claim_output_dir` before it writes anything:

* **A lock held for the whole run.** `<dir>/.bort-run.lock` is locked with the operating system's file lock
  (the `filelock` package, `flock` on POSIX). The kernel drops the lock when the process ends, however it ends
  (kill -9 included), so a lock is never stale. Beside it, `<dir>/.bort-run.owner.json` records the holder
  (pid, host, start time, command line), so that a second run into the directory is refused at once with the
  owner named. The lock file itself stays (removing a file others may be waiting on is what makes lock files
  racy); the owner record is removed when the run releases the directory. A run that created the directory
  and wrote nothing into it (it failed on its inputs) removes the directory again, lock file included.
* **No silent reuse.** A fresh run into a directory that already holds outputs of its kind (the `artefacts`
  the caller names: checkpoints, metrics, results) is refused unless it continues them (`resume`) or replaces
  them (`overwrite`), so a new run can neither mix its log into an old one nor prune the old run's checkpoints.
* **`overwrite` removes only the run's own artefacts**, by name, after the lock is held: other files a user
  keeps in the directory (notes, data, another tool's output) are never touched.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock, Timeout

from ..atomic import atomic_write_text

logger = logging.getLogger(__name__)

LOCK_NAME = ".bort-run.lock"
OWNER_NAME = ".bort-run.owner.json"


class RunDirError(ValueError):
    """An output directory cannot be used by this run: another run holds it, or it holds an earlier run's
    outputs. The message names the directory, the owner or the outputs found, and the way out."""


class OutputDirInUse(RunDirError):
    """Another live run holds the directory's lock; `owner` is its record (pid, host, started, command)."""

    def __init__(self, message: str, owner: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.owner = owner


class RunDir:
    """A claimed output directory; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, lock: FileLock, created: bool = False) -> None:
        self.path = path
        self._lock = lock
        self._created = created  # this claim made the directory: leave none behind if nothing was written

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def release(self) -> None:
        """Remove the owner record, then drop the lock (in that order: once the lock is free, the record
        may already be the next owner's). Safe to call twice."""
        if not self._lock.is_locked:
            return
        with contextlib.suppress(OSError):
            (self.path / OWNER_NAME).unlink()
        if self._created:
            with contextlib.suppress(OSError):
                if [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
                    # Still held, so no other run is inside: a run refused on its inputs leaves no empty
                    # directory behind.
                    (self.path / LOCK_NAME).unlink()
                    self.path.rmdir()
        self._lock.release(force=True)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _owner_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def read_owner(path: str | os.PathLike) -> dict[str, Any] | None:
    """The owner record of output directory `path`, or None when there is none (or it is unreadable)."""
    try:
        value = json.loads((Path(path) / OWNER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "a run that has not recorded its pid yet"
    return (f"pid {owner.get('pid')} on host {owner.get('host')} (started {owner.get('started')}: "
            f"{owner.get('command') or '?'})")


def lock_output_dir(path: str | os.PathLike) -> RunDir:
    """Create `path` if needed and take its lock, or raise `OutputDirInUse` naming the run that holds it."""
    path = Path(path)
    lock = FileLock(str(path / LOCK_NAME), timeout=0)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        owner = read_owner(path)
        raise OutputDirInUse(f"{path} is in use by another run: {_describe(owner)}; wait for it to end or choose "
                             "another output directory", owner) from None
    except OSError as exc:  # a file of that name, no permission, a read-only file system…
        raise RunDirError(f"{path}: cannot be used as an output directory: cannot create "
                          f"{exc.filename or path / LOCK_NAME} ({exc.strerror or exc})") from None
    run_dir = RunDir(path, lock, created)
    try:
        atomic_write_text(path / OWNER_NAME, json.dumps(_owner_record(), indent=1) + "\n")
    except BaseException:
        run_dir.release()
        raise
    return run_dir


def existing_artefacts(path: str | os.PathLike, artefacts: Sequence[str]) -> list[str]:
    """Which of `artefacts` (names or glob patterns relative to `path`) exist; empty directories do not count."""
    path = Path(path)
    found: list[str] = []
    for pattern in artefacts:
        for item in sorted(path.glob(pattern)):
            if item.is_dir() and not any(item.iterdir()):
                continue
            found.append(item.relative_to(path).as_posix())
    return found


def remove_artefacts(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Delete the named entries under `path` (files or whole directories)."""
    path = Path(path)
    for name in names:
        item = path / name
        logger.info("--overwrite: removing %s", item)
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            with contextlib.suppress(FileNotFoundError):
                item.unlink()


def claim_output_dir(path: str | os.PathLike, artefacts: Sequence[str], *, resume: bool = False,
                     overwrite: bool = False, resume_flag: str = "--resume",
                     overwrite_flag: str = "--overwrite") -> RunDir:
    """Lock `path` for this run and check what it holds (see the module's docstring).

    `artefacts` are the names (or glob patterns) of the outputs this kind of run writes. A fresh run (neither
    `resume` nor `overwrite`) is refused when any of them exists; `overwrite` deletes them first; `resume`
    keeps them for the caller to continue from. The flags are named in the messages as the command line
    spells them.
    """
    if resume and overwrite:
        raise RunDirError(f"{resume_flag} and {overwrite_flag} exclude each other: continue the run in {path}, or "
                          "replace it, not both")
    run_dir = lock_output_dir(path)
    try:
        found = existing_artefacts(run_dir.path, artefacts)
        if found and overwrite:
            remove_artefacts(run_dir.path, found)
        elif found and not resume:
            shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
            raise RunDirError(f"{run_dir.path} already holds the outputs of an earlier run ({shown}); pass "
                              f"{resume_flag} to continue that run, {overwrite_flag} to replace its outputs, or "
                              "choose another output directory")
    except BaseException:
        run_dir.release()
        raise
    return run_dir
