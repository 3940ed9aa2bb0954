"""S3 plumbing shared by pulls and pushes: `s3://` URLs, clients and translating botocore errors.

Credentials come from boto3's standard chain (environment, shared files, instance roles); the endpoint from
`endpoint_url` or boto3's own `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables, so S3-compatible stores
work without code changes.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .errors import AccessDeniedError, NoCredentialsError, NotFoundError, ObjectChangedError, StorageError

T = TypeVar("T")

# Environment switch for anonymous access where no flag can be passed (e.g. `load_pretrained("s3://…")`).
NO_SIGN_ENV = "BORT_S3_NO_SIGN_REQUEST"


@dataclass(frozen=True)
class S3Url:
    """A parsed `s3://bucket/key` URL; `key` may be empty or end with "/" (a prefix)."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> "S3Url":
        """The URL of `name` under this one taken as a prefix."""
        base = self.key.rstrip("/")
        return S3Url(self.bucket, f"{base}/{name}" if base else name)


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def parse_s3_url(url: str) -> S3Url:
    """Split `s3://bucket/key`; raises ValueError for anything else."""
    if not is_s3_url(url):
        raise ValueError(f"{url!r} is not an s3:// URL (expected s3://BUCKET/KEY)")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} has no bucket name (expected s3://BUCKET/KEY)")
    return S3Url(bucket, key)


def make_client(endpoint_url: str | None = None, no_sign_request: bool | None = None,
                max_attempts: int | None = None, pool_size: int = 10, connect_timeout: float = 10) -> Any:
    """A boto3 S3 client. `no_sign_request` (default: the BORT_S3_NO_SIGN_REQUEST variable) sends anonymous
    requests, as public buckets need when no credentials exist. botocore retries throttling and 5xx replies
    itself (`max_attempts`, default AWS_MAX_ATTEMPTS or 3, "standard" mode); broken streams are retried by
    the callers, which know how to resume. `pool_size` connections may be open at once (one per thread of a
    parallel transfer); `connect_timeout` seconds bound each attempt to reach the endpoint."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    if no_sign_request is None:
        no_sign_request = os.environ.get(NO_SIGN_ENV, "").lower() in ("1", "true", "yes")
    session = boto3.session.Session()
    retries: dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        retries["max_attempts"] = max_attempts
    config = Config(retries=retries, max_pool_connections=pool_size,
                    connect_timeout=connect_timeout, read_timeout=60,
                    signature_version=UNSIGNED if no_sign_request else None)
    # Without a configured region botocore refuses to sign; S3 redirects to the right one anyway.
    region = session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def error_code(err: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "404", "AccessDenied"…), else ""."""
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def translate(err: BaseException, url: S3Url | str, action: str) -> StorageError:
    """Turn a botocore exception into one of our errors, with a message saying what to do."""
    from botocore import exceptions as bexc

    if isinstance(err, StorageError):
        return err
    err = _unwrap(err)
    if isinstance(err, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return NoCredentialsError(
            f"{action} {url}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
            "or an instance role); for a public bucket pass --no-sign-request")
    code = error_code(err)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return NoCredentialsError(f"{action} {url}: the AWS credentials were rejected ({code}); check them, or pass "
                                  "--no-sign-request for a public bucket")
    if code == "NoSuchBucket":
        bucket = url.bucket if isinstance(url, S3Url) else url
        return NotFoundError(f"{action} {url}: no such bucket {bucket!r}")
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFoundError(f"{action} {url}: no such key")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return AccessDeniedError(f"{action} {url}: access denied; the credentials in use may not do this (S3 also "
                                 "answers 403 for a missing key when listing is not allowed)")
    if code in ("PreconditionFailed", "412"):
        return ObjectChangedError(f"{action} {url}: the object changed during the transfer; run again to start over")
    if isinstance(err, bexc.EndpointConnectionError):
        return StorageError(f"{action} {url}: cannot connect to the endpoint ({err})")
    return StorageError(f"{action} {url}: {type(err).__name__}: {err}")


def _unwrap(err: BaseException) -> BaseException:
    """boto3's transfer manager re-raises failures as S3UploadFailedError/RetriesExceededError with the
    original (a ClientError or connection error) as the context: look at that one."""
    if type(err).__name__ in ("S3UploadFailedError", "RetriesExceededError"):
        inner = err.__cause__ or err.__context__ or getattr(err, "last_exception", None)
        if inner is not None:
            return inner
    return err


def is_transient(err: BaseException) -> bool:
    """True for failures worth retrying: broken connections, timeouts, throttling and server errors."""
    from botocore import exceptions as bexc

    err = _unwrap(err)
    if isinstance(err, (bexc.ConnectionError, bexc.HTTPClientError, bexc.ReadTimeoutError,
                        bexc.IncompleteReadError, bexc.ResponseStreamingError, ConnectionError, TimeoutError)):
        return True
    try:  # urllib3's errors surface unwrapped from streamed bodies
        from urllib3 import exceptions as u3
        if isinstance(err, (u3.ProtocolError, u3.ReadTimeoutError, u3.IncompleteRead)):
            return True
    except ImportError:  # pragma: no cover - urllib3 always comes with botocore
        pass
    code = error_code(err)
    return code in ("500", "502", "503", "504", "InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout")


def is_unreachable(err: BaseException) -> bool:
    """True if `err` (or what it was raised from) means the endpoint could not be reached at all: connection
    refused, no route, DNS failure or a connect timeout — not a failure of one request on a live server."""
    from botocore import exceptions as bexc

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = _unwrap(current)
        if isinstance(inner, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def backoff_delay(attempt: int, base: float, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (spreads retries of many clients): uniform in [0, base·2^attempt]."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def with_retries(fn: Callable[[], T], retries: int, backoff: float, url: S3Url | str, action: str) -> T:
    """Call `fn`, retrying transient failures up to `retries` times with backoff; others are translated."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - sorted out below
            if attempt >= retries or not is_transient(err):
                raise translate(err, url, action) from err
            time.sleep(backoff_delay(attempt, backoff))
    raise AssertionError("unreachable")
