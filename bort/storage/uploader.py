"""Background checkpoint pushes for training: `--push-to s3://BUCKET/PREFIX`.

The training loop only enqueues; one daemon thread uploads. Before enqueueing, the checkpoint's files are
hard-linked into a staging directory (a copy if links are impossible), so the trainer may prune or replace
the checkpoint meanwhile without the upload ever reading a half-deleted directory. A failed upload is
retried with backoff and then reported (`report()`), never raised into training.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .s3 import backoff_delay, make_client, parse_s3_url
from .upload import push

logger = logging.getLogger(__name__)

_STOP = object()


class CheckpointUploader:
    """Uploads each enqueued checkpoint directory to `PREFIX/<directory name>/` in a background thread."""

    def __init__(self, url: str, staging: str | os.PathLike, *, client: Any = None, endpoint_url: str | None = None,
                 no_sign_request: bool | None = None, attempts: int = 5, backoff: float = 2.0,
                 **push_kwargs: Any) -> None:
        self.url = parse_s3_url(url)  # a bad URL fails at setup, not at the first checkpoint
        self.staging = Path(staging)
        self.client, self.attempts, self.backoff = client, attempts, backoff
        self._client_args = (endpoint_url, no_sign_request)
        # The attempts here are the only retry loop above botocore's own: nested loops would multiply.
        self.push_kwargs = {"progress": False, "retries": 0, **push_kwargs}
        self._pending = 0
        self._lock = threading.Lock()  # the counter is updated from both threads
        self.uploaded: list[str] = []
        self.failed: list[dict[str, str]] = []
        self.seconds = 0.0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="bort-checkpoint-push", daemon=True)
        self._thread.start()

    def enqueue(self, checkpoint: str | os.PathLike) -> None:
        """Snapshot `checkpoint` (hard links) and queue it; returns at once. Never raises."""
        try:
            source = Path(checkpoint)
            snap = self.staging / source.name
            shutil.rmtree(snap, ignore_errors=True)
            shutil.copytree(source, snap, copy_function=_link_or_copy)
            with self._lock:
                self._pending += 1
            self._queue.put(snap)
        except Exception as err:  # noqa: BLE001 - a push problem must never stop training
            logger.warning("push: cannot stage %s: %s", checkpoint, err)
            self.failed.append({"checkpoint": str(checkpoint), "error": f"staging: {err}"})

    def _work(self) -> None:
        while (snap := self._queue.get()) is not _STOP:
            target = self.url.child(snap.name)
            start = time.perf_counter()
            for attempt in range(self.attempts):
                try:
                    if self.client is None:
                        self.client = make_client(*self._client_args)
                    push(snap, target, client=self.client, **self.push_kwargs)
                    self.uploaded.append(str(target))
                    break
                except Exception as err:  # noqa: BLE001
                    if attempt + 1 == self.attempts:
                        logger.warning("push: %s to %s failed after %d attempts: %s", snap.name, target,
                                       self.attempts, err)
                        self.failed.append({"checkpoint": snap.name, "url": str(target), "error": str(err)})
                    else:
                        time.sleep(backoff_delay(attempt, self.backoff))
            self.seconds += time.perf_counter() - start
            shutil.rmtree(snap, ignore_errors=True)
            with self._lock:
                self._pending -= 1

    def close(self, timeout: float = 600.0) -> dict[str, Any]:
        """Wait up to `timeout` seconds for queued uploads, then return `report()`; whatever is still queued
        or running is reported as pending (the daemon thread does not keep the process alive)."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        return self.report()

    def report(self) -> dict[str, Any]:
        """{"url", "uploaded", "failed", "pending", "seconds"} for the run summary."""
        return {"url": str(self.url), "uploaded": list(self.uploaded), "failed": list(self.failed),
                "pending": self._pending, "seconds": round(self.seconds, 3)}


def _link_or_copy(src: str, dst: str) -> str:
    """Hard-link (instant, no extra space; the checkpoint files are never modified in place), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
