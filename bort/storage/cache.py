"""Prefixes and the local cache: `load_pretrained("s3://…")` reads from `$BORT_CACHE/s3/BUCKET/KEY`.

A URL names either one object (e.g. `bort.params`) or a prefix holding a checkpoint directory
(`config.json`, `model.safetensors`, …). Files already in the cache are reused when the object's size and
ETag are those recorded when it was fetched; anything else is downloaded (resuming a partial one).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .download import SIDECAR_SUFFIX, FetchResult, fetch, head_object
from .errors import NotFoundError, StorageError
from .s3 import S3Url, make_client, parse_s3_url, translate

CACHE_ENV = "BORT_CACHE"


def cache_dir() -> Path:
    """`$BORT_CACHE`, default `~/.cache/bort`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bort")


def list_objects(client: Any, url: S3Url) -> list[S3Url]:
    """Objects under `url` taken as a prefix ("KEY/"), without `.sha256` sidecars."""
    prefix = url.key.rstrip("/") + "/" if url.key else ""
    found: list[S3Url] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=prefix):
            found += [S3Url(url.bucket, obj["Key"]) for obj in page.get("Contents", [])
                      if not obj["Key"].endswith(("/", SIDECAR_SUFFIX))]
    except Exception as err:  # noqa: BLE001
        raise translate(err, url, "list") from err
    return found


def fetch_prefix(url: str | S3Url, dest: str | os.PathLike, *, client: Any = None, **kwargs: Any
                 ) -> list[FetchResult]:
    """Fetch every object under the prefix `url` into `dest`, keeping relative paths."""
    url = parse_s3_url(url) if isinstance(url, str) else url
    client = client or make_client(kwargs.pop("endpoint_url", None), kwargs.pop("no_sign_request", None))
    objects = list_objects(client, url)
    if not objects:
        raise NotFoundError(f"fetch {url}: no such key, and no objects under the prefix {url.key.rstrip('/')}/")
    base = url.key.rstrip("/") + "/" if url.key else ""
    return [fetch(obj, Path(dest) / obj.key[len(base):], client=client, **kwargs) for obj in objects]


def fetch_any(url: str | S3Url, dest: str | os.PathLike | None = None, *, client: Any = None, **kwargs: Any
              ) -> tuple[Path, list[FetchResult]]:
    """Fetch `url` as one object if it exists, else as a prefix (a checkpoint directory).

    Returns the local path (file or directory) and one FetchResult per object."""
    url = parse_s3_url(url) if isinstance(url, str) else url
    client = client or make_client(kwargs.pop("endpoint_url", None), kwargs.pop("no_sign_request", None))
    if url.key and not url.key.endswith("/"):
        try:
            head_object(client, url)
        except NotFoundError as err:
            if "no such bucket" in str(err):
                raise
        else:
            result = fetch(url, dest, client=client, **kwargs)
            return result.dest, [result]
    name = url.key.rstrip("/").rsplit("/", 1)[-1] or url.bucket
    target = Path(dest) if dest is not None else Path(name)
    return target, fetch_prefix(url, target, client=client, **kwargs)


def cached_path(url: str, **kwargs: Any) -> Path:
    """The local copy of `url` in the cache (fetched or refreshed first): a file or a directory."""
    parsed = parse_s3_url(url)
    if ".." in parsed.key.split("/"):
        raise StorageError(f"{url}: '..' in a key would escape the cache directory")
    local = cache_dir() / "s3" / parsed.bucket / parsed.key.rstrip("/")
    kwargs.setdefault("skip_existing", True)
    kwargs.setdefault("progress", None)
    path, _ = fetch_any(parsed, local, **kwargs)
    return path
