"""Background checkpoint pushes for training: `--push-to s3://BUCKET/PREFIX`.

The training loop only enqueues; one daemon thread uploads. Before enqueueing, the checkpoint's files are
hard-linked into a staging directory (a copy if links are impossible), so the trainer may prune or replace
the checkpoint meanwhile without the upload ever reading a half-deleted directory. A failed upload is
retried with backoff and then reported (`report()`), never raised into training.

Two things keep a slow or dead endpoint from costing the run time or disk:
- staging is bounded: with `keep` (the run's `--keep-checkpoints`), a new checkpoint arriving while `keep`
  are already staged drops the oldest one still waiting (reported under "skipped": a newer one supersedes
  it), so staging never holds more than the run keeps itself (one more only while `keep` is 1 and an upload
  is in flight);
- an unreachable endpoint (connection refused, DNS failure, connect timeout; each attempt bounded by a short
  connect timeout) is detected once: it is logged once and reported under "unreachable", and no checkpoint
  is attempted for `unreachable_cooldown` seconds after that (each is reported failed, "not attempted"),
  instead of every checkpoint retrying for minutes.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .s3 import backoff_delay, is_unreachable, make_client, parse_s3_url
from .upload import PushCancelledError, push

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Staged:
    name: str  # the checkpoint directory's name: the upload goes to PREFIX/<name>/
    path: Path  # its snapshot in the staging directory


class CheckpointUploader:
    """Uploads each enqueued checkpoint directory to `PREFIX/<directory name>/` in a background thread."""

    def __init__(self, url: str, staging: str | os.PathLike, *, client: Any = None, endpoint_url: str | None = None,
                 no_sign_request: bool | None = None, attempts: int = 5, backoff: float = 2.0,
                 keep: int | None = None, unreachable_cooldown: float = 300.0, connect_timeout: float = 5.0,
                 **push_kwargs: Any) -> None:
        self.url = parse_s3_url(url)  # a bad URL fails at setup, not at the first checkpoint
        self.staging = Path(staging)
        self.client, self.attempts, self.backoff = client, attempts, backoff
        self.keep = keep if keep and keep > 0 else None  # None or 0: as many as arrive (the run keeps all)
        self.unreachable_cooldown, self.connect_timeout = unreachable_cooldown, connect_timeout
        self._client_args = (endpoint_url, no_sign_request)
        # The attempts here are the only retry loop above botocore's own: nested loops would multiply.
        self.push_kwargs = {"progress": False, "retries": 0, **push_kwargs}
        self.uploaded: list[str] = []
        self.failed: list[dict[str, str]] = []
        self.skipped: list[dict[str, str]] = []
        self.unreachable: str | None = None  # the first connection failure, reported once
        self.seconds = 0.0
        self._unreachable_until = 0.0  # time.monotonic() before which no upload is attempted
        self._queue: deque[_Staged] = deque()
        self._current: _Staged | None = None
        self._closing = False
        self._cancel = threading.Event()  # set when close() gives up waiting: the upload in flight is aborted
        self._cond = threading.Condition()  # guards the queue, _current and _closing (both threads use them)
        self._names = itertools.count()
        self._thread = threading.Thread(target=self._work, name="bort-checkpoint-push", daemon=True)
        self._thread.start()

    def enqueue(self, checkpoint: str | os.PathLike) -> None:
        """Snapshot `checkpoint` (hard links) and queue it; returns at once. Never raises."""
        try:
            source = Path(checkpoint)
            self._make_room(source.name)
            # A unique staging name: the same checkpoint name may be enqueued again while its upload runs.
            snap = self.staging / f"{next(self._names):06d}-{source.name}"
            shutil.rmtree(snap, ignore_errors=True)
            shutil.copytree(source, snap, copy_function=_link_or_copy)
            with self._cond:
                self._queue.append(_Staged(source.name, snap))
                self._cond.notify()
        except Exception as err:  # noqa: BLE001 - a push problem must never stop training
            logger.warning("push: cannot stage %s: %s", checkpoint, err)
            self.failed.append({"checkpoint": str(checkpoint), "error": f"staging: {err}"})

    def _make_room(self, newcomer: str) -> None:
        """Drop the oldest staged checkpoints still waiting until `newcomer` fits within `keep`."""
        if self.keep is None:
            return
        dropped = []
        with self._cond:
            while self._queue and len(self._queue) + (self._current is not None) + 1 > self.keep:
                dropped.append(self._queue.popleft())
        for old in dropped:
            shutil.rmtree(old.path, ignore_errors=True)
            self.skipped.append({"checkpoint": old.name, "url": str(self.url.child(old.name)),
                                 "reason": f"superseded by {newcomer} before its upload started (at most "
                                           f"{self.keep} checkpoints are staged, as --keep-checkpoints)"})

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._current = self._queue.popleft()
            start = time.perf_counter()
            try:
                self._upload(item)
            finally:
                self.seconds += time.perf_counter() - start
                shutil.rmtree(item.path, ignore_errors=True)
                with self._cond:
                    self._current = None

    def _upload(self, item: _Staged) -> None:
        target = self.url.child(item.name)
        for attempt in range(self.attempts):
            if self._cancel.is_set():
                self.failed.append({"checkpoint": item.name, "url": str(target),
                                    "error": "not uploaded: the run ended while uploads were still queued"})
                return
            if time.monotonic() < self._unreachable_until:
                self.failed.append({"checkpoint": item.name, "url": str(target),
                                    "error": f"not attempted: {self.unreachable}"})
                return
            try:
                if self.client is None:
                    self.client = make_client(*self._client_args, connect_timeout=self.connect_timeout)
                push(item.path, target, client=self.client, cancel=self._cancel, **self.push_kwargs)
                self.uploaded.append(str(target))
                self._unreachable_until = 0.0
                return
            except Exception as err:  # noqa: BLE001 - reported, never raised into training
                if is_unreachable(err):
                    self._mark_unreachable(err)
                elif attempt + 1 < self.attempts and not isinstance(err, PushCancelledError):
                    self._cancel.wait(backoff_delay(attempt, self.backoff))  # close() may cut the wait short
                    continue
                else:
                    logger.warning("push: %s to %s failed after %d attempt(s): %s", item.name, target,
                                   attempt + 1, err)
                self.failed.append({"checkpoint": item.name, "url": str(target), "error": str(err)})
                return

    def _mark_unreachable(self, err: Exception) -> None:
        self._unreachable_until = time.monotonic() + self.unreachable_cooldown
        if self.unreachable is None:
            self.unreachable = (f"the endpoint of {self.url} is unreachable ({err}); checkpoint uploads are not "
                                f"attempted for {self.unreachable_cooldown:.0f} s after a failed connection")
            logger.warning("push: %s", self.unreachable)

    def close(self, timeout: float = 600.0, grace: float = 30.0) -> dict[str, Any]:
        """Wait up to `timeout` seconds for queued uploads, then return `report()`. Past the timeout the
        upload in flight is cancelled (its multipart upload aborted, within `grace` seconds) and the queued
        ones are reported failed; whatever is still running after that is reported as pending (the daemon
        thread does not keep the process alive)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._cancel.set()
            self._thread.join(grace)
        return self.report()

    def report(self) -> dict[str, Any]:
        """{"url", "uploaded", "failed", "skipped", "unreachable", "pending", "seconds"} for the run summary."""
        with self._cond:
            pending = len(self._queue) + (self._current is not None)
        return {"url": str(self.url), "uploaded": list(self.uploaded), "failed": list(self.failed),
                "skipped": list(self.skipped), "unreachable": self.unreachable, "pending": pending,
                "seconds": round(self.seconds, 3)}


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link (instant, no extra space; the checkpoint files are never modified in place), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
