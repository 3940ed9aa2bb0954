"""Pull one S3 object to a local file: parallel ranged GETs into `DEST.part`, resume of the missing ranges,
verification, atomic rename.

`DEST.part` is preallocated to the object's size and filled by a pool of threads, each streaming one ranged
GET (`Range: bytes=A-B`, with `If-Match: ETag` so that bytes of a replaced object are refused) into the file
at its offset. `DEST.part.json` (see ranges.py) records which object the bytes belong to and which intervals
are on disk, so a later call — after a broken connection, Ctrl-C or `kill -9` — asks only for the missing
ranges, and only while the object is unchanged. A broken stream is retried with backoff from the byte where
it stopped. Meanwhile the calling thread hashes the file in order as far as it is complete, for the
`.sha256` sidecar or the ETag; only bytes that verify are renamed to DEST: on a mismatch they stay in
`DEST.part` and DEST is never touched. A lock beside DEST (see lock.py) makes processes fetching the same
destination download it once. Paths derived from the key are confined to the destination (see paths.py).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import NotFoundError, StorageError, TransferError
from .lock import destination_lock
from .paths import PART_SUFFIX, PROGRESS_SUFFIX, confined_path
from .ranges import Progress
from .s3 import S3Url, backoff_delay, error_code, is_transient, make_client, parse_s3_url, translate
from .verify import MiB, PART_SIZE_META, Verifier, parse_sha256_sidecar, plan_verification

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"
PART_SIZE = 8 * MiB  # progress is recorded per part: at most this much per stream is lost to a kill -9
THREADS = 8  # parallel ranged GETs
MAX_RUN_PARTS = 16  # one GET spans at most this many parts (128 MiB at the default part size)
HASH_BLOCK = 4 * MiB


@dataclass
class FetchResult:
    """What a fetch did: where the file is, how many bytes came over the network, how it was verified, and
    how: the object's part count at the part size used, the threads and the ranged GETs issued."""

    url: str
    dest: Path
    size: int
    etag: str
    bytes_transferred: int
    resumed_from: int
    verified: str
    seconds: float
    skipped: bool = False
    parts: int = 0
    threads: int = 0
    requests: int = 0


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
    """DEST as given; with no DEST, or an existing directory (or a path ending in "/"), the key's last segment,
    which must then be a plain file name (UnsafeKeyError otherwise: e.g. a key ending in `/..`)."""
    name = url.key.rsplit("/", 1)[-1]
    if dest is None:
        return confined_path(Path("."), name, action="fetch", url=str(url), key=url.key)
    if str(dest).endswith(("/", os.sep)) or Path(dest).is_dir():
        return confined_path(Path(dest), name, action="fetch", url=str(url), key=url.key)
    return Path(dest)


def fetch(url: str | S3Url, dest: str | os.PathLike | None = None, *, client: Any = None,
          endpoint_url: str | None = None, no_sign_request: bool | None = None, retries: int = 5,
          backoff: float = 0.5, chunk_size: int = MiB, progress: bool | None = None, restart: bool = False,
          verify: bool = True, skip_existing: bool = False, callback: Callable[[int], None] | None = None,
          part_size: int = PART_SIZE, threads: int = THREADS) -> FetchResult:
    """Download `s3://BUCKET/KEY` to `dest` (default: the key's file name), resuming `DEST.part`.

    `threads` ranged GETs run at once; progress is recorded every `part_size` bytes of each (a resumed
    download keeps the part size it started with). `retries` consecutive failures of one stream are retried
    (backoff `backoff`·2^n seconds, jittered); any byte received resets its count. `restart` discards a
    partial download. `skip_existing` returns at once if DEST already holds an object of this size whose ETag
    was recorded by a previous fetch (the cache's use). `callback(n)` is called with each chunk's byte count,
    from the download threads (progress hooks, tests). Raises NotFoundError, AccessDeniedError,
    NoCredentialsError, ChecksumMismatchError, ObjectChangedError, TransferError, UnsafeKeyError (a key that
    cannot name a local file) or StorageError (e.g. the local disk is full).
    """
    url = parse_s3_url(url) if isinstance(url, str) else url
    if not url.key or url.key.endswith("/"):
        raise StorageError(f"fetch {url}: not an object key (use fetch_prefix for a prefix)")
    for name, value in (("part_size", part_size), ("threads", threads), ("chunk_size", chunk_size)):
        if type(value) is not int or value < 1:
            raise ValueError(f"fetch {url}: {name} must be a positive integer, got {value!r}")
    client = client or make_client(endpoint_url, no_sign_request, pool_size=max(10, threads))
    start = time.perf_counter()
    head = head_object(client, url)
    dest = resolve_dest(url, dest)
    with _local(url, "create the directory", dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
    with destination_lock(dest, str(url)):
        return _fetch_locked(client, url, head, dest, start, retries=retries, backoff=backoff,
                             chunk_size=chunk_size, progress=progress, restart=restart, verify=verify,
                             skip_existing=skip_existing, callback=callback, part_size=part_size,
                             threads=threads)


def _fetch_locked(client: Any, url: S3Url, head: dict[str, Any], dest: Path, start: float, *, retries: int,
                  backoff: float, chunk_size: int, progress: bool | None, restart: bool, verify: bool,
                  skip_existing: bool, callback: Callable[[int], None] | None, part_size: int,
                  threads: int) -> FetchResult:
    """`fetch` once DEST's lock is held: nobody else writes DEST, its `.part` or its records meanwhile."""
    size, etag = int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
    part, meta_path = dest.with_name(dest.name + PART_SUFFIX), dest.with_name(dest.name + PROGRESS_SUFFIX)
    record = {"url": str(url), "etag": etag, "size": size}
    done_path = dest.with_name("." + dest.name + ".s3.json")
    if skip_existing and dest.is_file() and dest.stat().st_size == size and _read_json(done_path) == record:
        # Another process may have fetched it while this one waited for the lock: reuse, no transfer.
        return FetchResult(str(url), dest, size, etag, 0, size, "cached", time.perf_counter() - start, skipped=True)

    sidecar = read_sidecar(client, url) if verify else None
    verifier = (plan_verification(head, sidecar, part_size_of(client, url, head) if not sidecar else None)
                if verify else Verifier("none", size=size))
    with _local(url, "prepare", part):
        if restart:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
        state = Progress.resume(meta_path, part, record, part_size)
        resumed_from = state.received
        if not resumed_from:
            part.unlink(missing_ok=True)  # bytes of another object, or of another version of this one
        fd = os.open(part, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    from tqdm import tqdm

    bar = tqdm(total=size, initial=resumed_from, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
               disable=(not progress) if progress is not None else None, leave=False)
    try:
        with _local(url, f"allocate {size} bytes for", part):
            _preallocate(fd, size)
            state.save()
        transfer = _RangedTransfer(client, url, etag, fd, part, state, verifier, chunk_size=chunk_size,
                                   retries=retries, backoff=backoff, bar=bar, callback=callback)
        transfer.run(threads)
        with _local(url, "flush", part):
            os.fsync(fd)
    finally:
        os.close(fd)
        bar.close()
    verified = verifier.check(part, str(url))
    with _local(url, "rename the verified download to", dest):
        os.replace(part, dest)
        meta_path.unlink(missing_ok=True)
        if skip_existing:  # remember which object DEST holds, so the next call can skip the download
            done_path.write_text(json.dumps(record) + "\n")
    return FetchResult(str(url), dest, size, etag, transfer.transferred, resumed_from, verified,
                       time.perf_counter() - start, parts=state.parts(), threads=transfer.threads,
                       requests=transfer.requests)


class _RangedTransfer:
    """The parallel ranged GETs of one download, and the in-order hashing of what they wrote."""

    def __init__(self, client: Any, url: S3Url, etag: str, fd: int, part: Path, state: Progress,
                 verifier: Verifier, *, chunk_size: int, retries: int, backoff: float, bar: Any,
                 callback: Callable[[int], None] | None) -> None:
        self.client, self.url, self.etag, self.fd, self.part = client, url, etag, fd, part
        self.state, self.verifier, self.chunk_size = state, verifier, chunk_size
        self.retries, self.backoff, self.bar, self.callback = retries, backoff, bar, callback
        self.stop = threading.Event()  # set on the first failure: the other streams end early
        self._counter = threading.Lock()
        self.transferred = self.requests = self.threads = 0
        self.hashed = 0  # bytes fed to the verifier, from the start of the object

    def run(self, threads: int) -> None:
        """Fetch every missing range, hashing meanwhile; raise on the first stream that fails for good."""
        runs = self.state.plan(threads, MAX_RUN_PARTS)
        if runs:
            self.threads = min(threads, len(runs))
            with ThreadPoolExecutor(self.threads, thread_name_prefix="bort-fetch") as pool:
                futures = [pool.submit(self._stream, start, end) for start, end in runs]
                try:
                    self._await(futures)
                except BaseException as err:
                    self.stop.set()
                    wait(futures)  # every stream records how far it got before the record is saved
                    self.state.save()
                    if isinstance(err, Exception) and not isinstance(err, StorageError):
                        if is_transient(err):
                            raise TransferError(
                                f"fetch {self.url}: the transfer failed {self.retries + 1} times in a row "
                                f"({type(err).__name__}: {err}); {self.state.received} of {self.state.size} bytes "
                                f"are kept in {self.part}: run again to resume") from err
                        raise translate(err, self.url, "fetch") from err
                    raise
        self._hash_available()
        missing = self.state.missing()
        if missing or (self.verifier.streaming and self.hashed != self.state.size):
            raise StorageError(f"fetch {self.url}: internal error: bytes {missing} of {self.part} were not "
                               f"received (hashed {self.hashed} of {self.state.size}); run again to resume")

    def _await(self, futures: list[Future]) -> None:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.05, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
            self._hash_available()

    def _hash_available(self) -> None:
        """Feed the verifier the bytes on disk from where it stopped to the first missing one (read back:
        streams finish out of order, and bytes kept from an earlier run must be checked too)."""
        if not self.verifier.streaming:
            return
        end = self.state.contiguous_end(self.hashed)
        if self.hashed < end:
            os.lseek(self.fd, self.hashed, os.SEEK_SET)
        while self.hashed < end:
            chunk = os.read(self.fd, min(HASH_BLOCK, end - self.hashed))
            if not chunk:
                raise StorageError(f"fetch {self.url}: {self.part} ends at byte {self.hashed}, before the "
                                   f"{self.state.size} bytes it was allocated (truncated by another program?)")
            self.verifier.update(chunk)
            self.hashed += len(chunk)

    def _stream(self, start: int, end: int) -> None:
        """Bytes [start, end) of the object into the file: one ranged GET, continued after a broken stream."""
        part_size = self.state.part_size
        pos = recorded = start
        next_save = (start // part_size + 1) * part_size
        failures = 0
        try:
            out = open(self.part, "r+b", buffering=0)  # a handle per stream: each writes its range in order
        except OSError as err:
            raise StorageError(f"fetch {self.url}: cannot open {self.part}: {err.strerror or err}") from err
        try:
            while pos < end and not self.stop.is_set():
                before = pos
                try:
                    with self._counter:
                        self.requests += 1
                    response = self.client.get_object(Bucket=self.url.bucket, Key=self.url.key,
                                                      Range=f"bytes={pos}-{end - 1}", IfMatch=f'"{self.etag}"')
                    self._check_range(response, pos, end)
                    out.seek(pos)
                    body = response["Body"]
                    try:
                        for chunk in body.iter_chunks(self.chunk_size):
                            take = memoryview(chunk)[: end - pos]  # never past the range asked for
                            self._write(out, take, pos)
                            pos += len(take)
                            self._count(len(take))
                            if pos >= next_save or pos >= end:  # a part is complete: persist the progress
                                self.state.add(recorded, pos)
                                recorded, next_save = pos, (pos // part_size + 1) * part_size
                            if pos >= end or self.stop.is_set():
                                break
                    finally:
                        body.close()
                    if pos < end and not self.stop.is_set():
                        raise ConnectionError(f"stream ended at byte {pos}, expected {end}")
                except Exception as err:  # noqa: BLE001 - sorted out below
                    self.state.add(recorded, pos, save=False)
                    recorded = pos
                    failures = 0 if pos > before else failures + 1
                    if not is_transient(err) or failures > self.retries:
                        raise
                    logger.info("fetch %s: %s at byte %d, retrying", self.url, type(err).__name__, pos)
                    time.sleep(backoff_delay(failures, self.backoff))
        finally:
            out.close()
            self.state.add(recorded, pos, save=False)  # exact, for the record saved when the transfer ends

    def _check_range(self, response: dict[str, Any], pos: int, end: int) -> None:
        """The bytes must be those asked for: a server that ignores Range would send the object from 0."""
        content_range = response.get("ContentRange")
        if content_range is None and pos == 0:
            return
        if content_range is None or not str(content_range).startswith(f"bytes {pos}-"):
            response["Body"].close()
            raise StorageError(f"fetch {self.url}: asked for bytes {pos}-{end - 1} but the server answered "
                               f"Content-Range {content_range!r}; it does not support ranged downloads")

    def _write(self, out: Any, data: memoryview, offset: int) -> None:
        """All of `data` at the handle's position (`offset`: for the message); a full disk names the file."""
        while len(data):
            try:
                written = out.write(data)
            except OSError as err:
                raise StorageError(f"fetch {self.url}: cannot write {self.part} at byte {offset}: "
                                   f"{err.strerror or err}") from err
            data, offset = data[written:], offset + written

    def _count(self, n: int) -> None:
        with self._counter:
            self.transferred += n
            self.bar.update(n)
        if self.callback is not None:
            self.callback(n)


def _preallocate(fd: int, size: int) -> None:
    """Give the file its final size; reserve the blocks where the file system can (a full disk fails here,
    before the download, rather than midway)."""
    os.ftruncate(fd, size)
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            import errno

            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


@contextmanager
def _local(url: S3Url, what: str, path: Path) -> Iterator[None]:
    """A local file-system failure (permissions, a full disk) as a StorageError naming the path."""
    try:
        yield
    except OSError as err:
        raise StorageError(f"fetch {url}: cannot {what} {path}: {err.strerror or err}") from err


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
