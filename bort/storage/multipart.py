"""The multipart uploads a push has started and not finished: noted as they start, aborted if the push fails.

boto3's transfer manager aborts a failed multipart upload itself, once. When that abort fails too — the
endpoint went away mid-push, which is how pushes usually fail — the uploaded parts stay on the server,
invisible in listings and billed as storage. The journal learns the id of every upload the push starts,
completes or aborts from the client's own events (the transfer manager does not expose them), so that a
failed push can abort, with retries, whatever is still open.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from .s3 import backoff_delay, error_code

logger = logging.getLogger(__name__)

_ids = itertools.count()
_UPLOAD_ID = "bort_upload_id"  # where a request's UploadId is kept in botocore's per-request context


class MultipartJournal:
    """Open multipart uploads of `keys` ((bucket, key) pairs) made through `client` while the journal is
    entered; usable across the transfer manager's threads."""

    def __init__(self, client: Any, keys: set[tuple[str, str]]) -> None:
        self.client, self.keys = client, keys
        self.open: dict[str, tuple[str, str]] = {}  # upload id -> (bucket, key)
        self._lock = threading.Lock()
        self._tag = f"bort-multipart-journal-{next(_ids)}"
        self._handlers = [("after-call.s3.CreateMultipartUpload", self._created),
                          ("before-parameter-build.s3.CompleteMultipartUpload", self._remember_id),
                          ("before-parameter-build.s3.AbortMultipartUpload", self._remember_id),
                          ("after-call.s3.CompleteMultipartUpload", self._closed),
                          ("after-call.s3.AbortMultipartUpload", self._closed)]

    def __enter__(self) -> "MultipartJournal":
        for event, handler in self._handlers:
            self.client.meta.events.register(event, handler, unique_id=f"{self._tag}-{event}")
        return self

    def __exit__(self, *exc: object) -> None:
        for event, _ in self._handlers:
            self.client.meta.events.unregister(event, unique_id=f"{self._tag}-{event}")

    def _created(self, http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        key = (str(parsed.get("Bucket", "")), str(parsed.get("Key", "")))
        if http_response.status_code < 300 and parsed.get("UploadId") and key in self.keys:
            with self._lock:
                self.open[parsed["UploadId"]] = key

    @staticmethod
    def _remember_id(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_UPLOAD_ID] = params.get("UploadId")

    def _closed(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if http_response.status_code < 300:
            with self._lock:
                self.open.pop(context.get(_UPLOAD_ID), None)

    def abort_open(self, attempts: int, backoff: float) -> list[str]:
        """Abort every upload still open, each tried `attempts` times with backoff. Returns, for those that
        could not be aborted, a description with the command that aborts it by hand."""
        with self._lock:
            pending = dict(self.open)
        failures = []
        for upload_id, (bucket, key) in pending.items():
            for attempt in range(max(1, attempts)):
                try:
                    self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                    break
                except Exception as err:  # noqa: BLE001 - reported below, never hides the push's own error
                    if error_code(err) in ("NoSuchUpload", "404"):  # completed or aborted meanwhile
                        break
                    if attempt + 1 >= max(1, attempts):
                        failures.append(f"s3://{bucket}/{key} upload id {upload_id} ({type(err).__name__}: {err}; "
                                        f"abort it with `aws s3api abort-multipart-upload --bucket {bucket} "
                                        f"--key {key} --upload-id {upload_id}`)")
                    else:
                        time.sleep(backoff_delay(attempt, backoff))
            with self._lock:
                self.open.pop(upload_id, None)
        if pending:
            logger.info("push: aborted %d unfinished multipart upload(s)", len(pending) - len(failures))
        return failures
