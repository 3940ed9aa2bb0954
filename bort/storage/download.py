"""Pull one S3 object to a local file: ranged resume of `DEST.part`, verification, atomic rename.

A download streams into `DEST.part`; `DEST.part.json` records which object (ETag, size) those bytes belong
to, so a later call resumes with a ranged GET (`Range: bytes=N-`, `If-Match: ETag`) only when the object is
unchanged. A broken stream is retried with backoff from where it stopped. Only bytes that verify (sidecar or
ETag) are renamed to DEST; on a mismatch they stay in `DEST.part` and DEST is never touched.

One sequential stream is used on purpose: the partial file is then always a valid prefix (resume needs no
bookkeeping of holes), and it is as fast as boto3's parallel ranged transfer on a local server
(see bench/s3_transfer.py).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import NotFoundError, StorageError, TransferError
from .s3 import S3Url, backoff_delay, error_code, is_transient, make_client, parse_s3_url, translate
from .verify import MiB, PART_SIZE_META, Verifier, parse_sha256_sidecar, plan_verification

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"


@dataclass
class FetchResult:
    """What a fetch did: where the file is, how many bytes came over the network, how it was verified."""

    url: str
    dest: Path
    size: int
    etag: str
    bytes_transferred: int
    resumed_from: int
    verified: str
    seconds: float
    skipped: bool = False


def head_object(client: Any, url: S3Url, **extra: Any) -> dict[str, Any]:
    """HeadObject, with a missing bucket told apart from a missing key (a HEAD reply has no error body)."""
    try:
        return client.head_object(Bucket=url.bucket, Key=url.key, **extra)
    except Exception as err:  # noqa: BLE001
        if error_code(err) in ("404", "NotFound", "NoSuchKey"):
            try:
                client.head_bucket(Bucket=url.bucket)
            except Exception as bucket_err:  # noqa: BLE001
                if error_code(bucket_err) in ("404", "NoSuchBucket", "NotFound"):
                    raise NotFoundError(f"fetch {url}: no such bucket {url.bucket!r}") from err
            raise NotFoundError(f"fetch {url}: no such key {url.key!r} in bucket {url.bucket!r}") from err
        raise translate(err, url, "fetch") from err


def read_sidecar(client: Any, url: S3Url) -> str | None:
    """The SHA-256 in `KEY.sha256` if that object exists and is well formed, else None."""
    try:
        body = client.get_object(Bucket=url.bucket, Key=url.key + SIDECAR_SUFFIX)["Body"].read(4096)
    except Exception as err:  # noqa: BLE001
        # 403 too: without ListBucket permission S3 answers 403 for a missing key.
        if error_code(err) in ("404", "NoSuchKey", "403", "AccessDenied"):
            return None
        raise translate(err, url, "fetch") from err
    digest = parse_sha256_sidecar(body.decode("utf-8", "replace"))
    if digest is None:
        logger.warning("%s%s is not a SHA-256 sidecar; verifying with the ETag instead", url, SIDECAR_SUFFIX)
    return digest


def part_size_of(client: Any, url: S3Url, head: dict[str, Any]) -> int | None:
    """The part size of a multipart object: from our metadata, else from HeadObject(PartNumber=1)."""
    meta = head.get("Metadata") or {}
    if meta.get(PART_SIZE_META, "").isdigit():
        return int(meta[PART_SIZE_META])
    if "-" not in str(head.get("ETag", "")):
        return None
    try:
        part = client.head_object(Bucket=url.bucket, Key=url.key, PartNumber=1)
    except Exception:  # noqa: BLE001 - some S3-compatible stores lack PartNumber; we fall back to guessing
        return None
    length = int(part.get("ContentLength", 0))
    # A store that ignores PartNumber answers with the whole object: no information.
    return length if 0 < length < int(head["ContentLength"]) else None


def resolve_dest(url: S3Url, dest: str | os.PathLike | None) -> Path:
    """DEST as given; an existing directory (or a path ending in "/") gets the key's file name."""
    name = url.key.rsplit("/", 1)[-1]
    if dest is None:
        return Path(name)
    if str(dest).endswith(("/", os.sep)) or Path(dest).is_dir():
        return Path(dest) / name
    return Path(dest)


def fetch(url: str | S3Url, dest: str | os.PathLike | None = None, *, client: Any = None,
          endpoint_url: str | None = None, no_sign_request: bool | None = None, retries: int = 5,
          backoff: float = 0.5, chunk_size: int = MiB, progress: bool | None = None, restart: bool = False,
          verify: bool = True, skip_existing: bool = False,
          callback: Callable[[int], None] | None = None) -> FetchResult:
    """Download `s3://BUCKET/KEY` to `dest` (default: the key's file name), resuming `DEST.part`.

    `retries` consecutive broken streams are retried (backoff `backoff`·2^n seconds, jittered); any byte
    received resets the count. `restart` discards a partial download. `skip_existing` returns at once if
    DEST already holds an object of this size whose ETag was recorded by a previous fetch (the cache's use).
    `callback(n)` is called with each chunk's byte count (progress hooks, tests). Raises NotFoundError,
    AccessDeniedError, NoCredentialsError, ChecksumMismatchError, ObjectChangedError or TransferError.
    """
    url = parse_s3_url(url) if isinstance(url, str) else url
    if not url.key or url.key.endswith("/"):
        raise StorageError(f"fetch {url}: not an object key (use fetch_prefix for a prefix)")
    client = client or make_client(endpoint_url, no_sign_request)
    start = time.perf_counter()
    head = head_object(client, url)
    size, etag = int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
    dest = resolve_dest(url, dest)
    part, meta_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    record = {"url": str(url), "etag": etag, "size": size}
    done_path = dest.with_name("." + dest.name + ".s3.json")
    if skip_existing and dest.is_file() and dest.stat().st_size == size and _read_json(done_path) == record:
        return FetchResult(str(url), dest, size, etag, 0, size, "cached", time.perf_counter() - start, skipped=True)

    sidecar = read_sidecar(client, url) if verify else None
    verifier = (plan_verification(head, sidecar, part_size_of(client, url, head) if not sidecar else None)
                if verify else Verifier("none", size=size))
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    if not restart and part.is_file() and _read_json(meta_path) == record and part.stat().st_size <= size:
        offset = part.stat().st_size
    else:
        part.unlink(missing_ok=True)
        meta_path.write_text(json.dumps(record) + "\n")
    resumed_from = offset
    transferred = 0
    from tqdm import tqdm

    bar = tqdm(total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
               disable=(not progress) if progress is not None else None, leave=False)
    try:
        with open(part, "ab" if offset else "wb") as out:
            if offset:
                _hash_prefix(part, offset, verifier)
            failures = 0
            while offset < size:
                try:
                    got = _stream(client, url, etag, offset, size, out, verifier, chunk_size, bar, callback)
                except Exception as err:  # noqa: BLE001
                    out.flush()
                    got = out.tell() - offset
                    offset, transferred = offset + got, transferred + got
                    failures = 0 if got else failures + 1
                    if not is_transient(err) or failures > retries:
                        if is_transient(err):
                            raise TransferError(f"fetch {url}: the transfer failed {failures} times in a row "
                                                f"({type(err).__name__}: {err}); {offset} of {size} bytes are kept "
                                                f"in {part}: run again to resume") from err
                        raise translate(err, url, "fetch") from err
                    logger.info("fetch %s: %s at byte %d, retrying", url, type(err).__name__, offset)
                    time.sleep(backoff_delay(failures, backoff))
                    continue
                offset, transferred = offset + got, transferred + got
            out.flush()
            os.fsync(out.fileno())
    finally:
        bar.close()
    verified = verifier.check(part, str(url))
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    if skip_existing:  # remember which object DEST holds, so the next call can skip the download
        done_path.write_text(json.dumps(record) + "\n")
    return FetchResult(str(url), dest, size, etag, transferred, resumed_from, verified, time.perf_counter() - start)


def _stream(client: Any, url: S3Url, etag: str, offset: int, size: int, out: Any, verifier: Verifier,
            chunk_size: int, bar: Any, callback: Callable[[int], None] | None) -> int:
    """One ranged GET from `offset` to the end, appended to `out`; returns the bytes written.

    If-Match makes S3 refuse (412) rather than send bytes of a different object version."""
    response = client.get_object(Bucket=url.bucket, Key=url.key, Range=f"bytes={offset}-", IfMatch=f'"{etag}"')
    written = 0
    body = response["Body"]
    try:
        for chunk in body.iter_chunks(chunk_size):
            left = size - offset - written
            take = chunk if len(chunk) <= left else chunk[:left]  # never write past the object's length
            out.write(take)
            verifier.update(take)
            written += len(take)
            bar.update(len(take))
            if callback is not None:
                callback(len(take))
    except BaseException:
        out.flush()
        raise
    finally:
        body.close()
    if offset + written < size:
        raise ConnectionError(f"stream ended at byte {offset + written} of {size}")
    return written


def _hash_prefix(part: Path, length: int, verifier: Verifier) -> None:
    """Feed the bytes already in `part` to the verifier (a resumed download is verified whole)."""
    with open(part, "rb") as handle:
        remaining = length
        while remaining and (chunk := handle.read(min(4 * MiB, remaining))):
            verifier.update(chunk)
            remaining -= len(chunk)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
