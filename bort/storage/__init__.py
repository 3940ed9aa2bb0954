"""The S3 checkpoint store: resumable, verified pulls and multipart pushes on boto3.

    from bort.storage import fetch, push, cached_path
    fetch("s3://bucket/bort.params", "model/")            # parallel ranged GETs, resumes the missing parts of
                                                          # model/bort.params.part, verifies, renames
    push("out/checkpoints/step-0001000", "s3://bucket/run1/step-0001000")
    cached_path("s3://bucket/run1/step-0001000")            # $BORT_CACHE/s3/bucket/run1/step-0001000

boto3 is imported only when a transfer starts, so `import bort` does not need it.
"""
from __future__ import annotations

from .cache import CACHE_ENV, cache_dir, cached_path, fetch_any, fetch_prefix
from .download import FetchResult, fetch
from .errors import (AccessDeniedError, ChecksumMismatchError, NoCredentialsError, NotFoundError, ObjectChangedError,
                     StorageError, TransferError, UnsafeKeyError)
from .s3 import S3Url, is_s3_url, make_client, parse_s3_url
from .upload import PushCancelledError, PushResult, push
from .uploader import CheckpointUploader

__all__ = ["AccessDeniedError", "CACHE_ENV", "CheckpointUploader", "ChecksumMismatchError", "FetchResult",
           "NoCredentialsError", "NotFoundError", "ObjectChangedError", "PushCancelledError", "PushResult", "S3Url",
           "StorageError", "TransferError", "UnsafeKeyError", "cache_dir", "cached_path", "fetch", "fetch_any",
           "fetch_prefix", "is_s3_url", "make_client", "parse_s3_url", "push"]
