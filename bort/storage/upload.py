"""Push a file or a directory to S3 with boto3's transfer manager (multipart, parallel parts).

Each object gets a `KEY.sha256` sidecar, written after the object so that a sidecar's presence means the
object is complete, and records its part size in the metadata so its multipart ETag can be recomputed.
In a directory, `config.json` goes last: a checkpoint whose config is visible is complete.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import StorageError
from .multipart import MultipartJournal
from .s3 import S3Url, make_client, parse_s3_url, with_retries
from .verify import MiB, PART_SIZE_META, sha256_of

logger = logging.getLogger(__name__)

PART_SIZE = 8 * MiB  # boto3's and the AWS CLI's default, so the ETags look like theirs


class PushCancelledError(StorageError):
    """The push was cancelled (`cancel` set, e.g. by a closing CheckpointUploader); its uploads are aborted."""


@dataclass
class PushResult:
    """The objects written (without sidecars), bytes uploaded and seconds taken."""

    urls: list[str] = field(default_factory=list)
    bytes_transferred: int = 0
    seconds: float = 0.0


def plan_keys(path: Path, url: S3Url) -> list[tuple[Path, S3Url]]:
    """(local file, destination) pairs, as `aws s3 cp` names them: a file goes to KEY, or to PREFIX/NAME when
    the URL ends with "/"; a directory's files go to PREFIX/RELATIVE-PATH. config.json files sort last."""
    if path.is_file():
        return [(path, url.child(path.name) if url.key.endswith("/") or not url.key else url)]
    if not path.is_dir():
        raise FileNotFoundError(f"push: {path}: no such file or directory")
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: (p.name == "config.json", str(p)))
    return [(p, url.child(p.relative_to(path).as_posix())) for p in files]


def push(path: str | os.PathLike, url: str | S3Url, *, client: Any = None, endpoint_url: str | None = None,
         no_sign_request: bool | None = None, retries: int = 5, backoff: float = 0.5, part_size: int = PART_SIZE,
         progress: bool | None = None, sidecar: bool = True, callback: Callable[[int], None] | None = None,
         cancel: threading.Event | None = None) -> PushResult:
    """Upload the file or directory `path` to `s3://BUCKET/PREFIX` (see `plan_keys` for the names).

    Transient failures are retried `retries` times with backoff (a retried file is sent again whole). Every
    multipart upload the push started and did not complete — a failed attempt, or all of them when the push
    fails or is interrupted — is aborted before it returns (see multipart.py), so no orphaned parts stay on
    the server; one that cannot be aborted is named in the error. Setting `cancel` stops the push within a
    chunk (PushCancelledError). Raises NotFoundError (no bucket), AccessDeniedError, NoCredentialsError or
    StorageError."""
    from boto3.s3.transfer import TransferConfig
    from tqdm import tqdm

    url = parse_s3_url(url) if isinstance(url, str) else url
    client = client or make_client(endpoint_url, no_sign_request)
    pairs = plan_keys(Path(path), url)
    if not pairs:
        raise StorageError(f"push {path}: nothing to upload (an empty directory)")
    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
    total = sum(p.stat().st_size for p, _ in pairs)
    result, start = PushResult(), time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"push {Path(path).name}",
               disable=(not progress) if progress is not None else None, leave=False)

    def sent(n: int) -> None:
        if cancel is not None and cancel.is_set():
            raise PushCancelledError(f"push {url}: cancelled")  # fails the part: the upload gets aborted
        bar.update(n)
        if callback is not None:
            callback(n)

    abort_attempts = max(retries, 2) + 1  # an abort is worth a few tries even when transfers get none
    try:
        with MultipartJournal(client, {(target.bucket, target.key) for _, target in pairs}) as journal:
            try:
                for local, target in pairs:
                    if cancel is not None and cancel.is_set():
                        raise PushCancelledError(f"push {url}: cancelled before {target}")
                    _push_file(client, local, target, config, sent, retries, backoff, part_size, sidecar)
                    result.urls.append(str(target))
                    result.bytes_transferred += local.stat().st_size
            except BaseException as err:
                leftovers = journal.abort_open(abort_attempts, backoff)
                if leftovers and isinstance(err, StorageError):
                    raise type(err)(f"{err}; {len(leftovers)} unfinished multipart upload(s) could not be "
                                    f"aborted: {'; '.join(leftovers)}") from err
                for leftover in leftovers:
                    logger.warning("push %s: an unfinished multipart upload is left: %s", url, leftover)
                raise
            # a retried file's failed attempt may have left an upload open that boto3 could not abort
            for leftover in journal.abort_open(abort_attempts, backoff):
                logger.warning("push %s: an unfinished multipart upload is left: %s", url, leftover)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def _push_file(client: Any, local: Path, target: S3Url, config: Any, sent: Callable[[int], None], retries: int,
               backoff: float, part_size: int, sidecar: bool) -> None:
    """One file (multipart above `part_size`), then its `.sha256` sidecar, each retried on transient errors."""
    digest = sha256_of(local) if sidecar else None
    extra = {"Metadata": {PART_SIZE_META: str(part_size)}}

    def upload() -> None:
        client.upload_file(str(local), target.bucket, target.key, ExtraArgs=extra, Config=config, Callback=sent)

    with_retries(upload, retries, backoff, target, "push")
    if digest is not None:
        with_retries(lambda: client.put_object(Bucket=target.bucket, Key=target.key + ".sha256",
                                               Body=f"{digest}  {local.name}\n".encode()),
                     retries, backoff, target, "push")
