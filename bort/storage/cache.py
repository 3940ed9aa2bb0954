"""Prefixes and the local cache: `load_pretrained("s3://…")` reads from `$BORT_CACHE/s3/BUCKET/KEY`.

A URL names either one object (e.g. `bort.params`) or a prefix holding a checkpoint directory
(`config.json`, `model.safetensors`, …). Files already in the cache are reused when the object's size and
ETag are those recorded when it was fetched; anything else is downloaded (resuming a partial one). Processes
resolving the same URL at once download each object once (a lock per file, see lock.py): with torchrun, one
rank per node transfers and the others wait and reuse.

Every local path comes from remote names (bucket, key, the keys listed under a prefix) and is confined to its
destination (see paths.py): a listing holding one unsafe key is refused before anything is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .download import SIDECAR_SUFFIX, FetchResult, fetch, head_object
from .errors import NotFoundError
from .paths import check_layout, confined_path
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
    """Fetch every object under the prefix `url` into `dest`, keeping relative paths.

    Every key is checked before the first download: one that is not a plain relative path below the prefix
    (`..`, `//`, a backslash, …, see paths.py) or that would resolve outside `dest` refuses the whole prefix
    with an UnsafeKeyError naming it, and nothing is written."""
    url = parse_s3_url(url) if isinstance(url, str) else url
    client = client or make_client(kwargs.pop("endpoint_url", None), kwargs.pop("no_sign_request", None),
                                   pool_size=max(10, kwargs.get("threads", 0)))
    objects = list_objects(client, url)
    if not objects:
        raise NotFoundError(f"fetch {url}: no such key, and no objects under the prefix {url.key.rstrip('/')}/")
    base = url.key.rstrip("/") + "/" if url.key else ""
    relatives = {obj.key: obj.key[len(base):] for obj in objects}
    targets = [confined_path(dest, relatives[obj.key], action="fetch", url=str(url), key=obj.key)
               for obj in objects]
    check_layout(relatives, action="fetch", url=str(url))
    return [fetch(obj, target, client=client, **kwargs) for obj, target in zip(objects, targets)]


def fetch_any(url: str | S3Url, dest: str | os.PathLike | None = None, *, client: Any = None, **kwargs: Any
              ) -> tuple[Path, list[FetchResult]]:
    """Fetch `url` as one object if it exists, else as a prefix (a checkpoint directory).

    Returns the local path (file or directory) and one FetchResult per object."""
    url = parse_s3_url(url) if isinstance(url, str) else url
    client = client or make_client(kwargs.pop("endpoint_url", None), kwargs.pop("no_sign_request", None),
                                   pool_size=max(10, kwargs.get("threads", 0)))
    if url.key and not url.key.endswith("/"):
        try:
            head_object(client, url)
        except NotFoundError as err:
            if "no such bucket" in str(err):
                raise
        else:
            result = fetch(url, dest, client=client, **kwargs)
            return result.dest, [result]
    if dest is not None:
        target = Path(dest)
    else:  # the prefix's last segment names the directory: it must be a plain name (not "..")
        name = url.key.rstrip("/").rsplit("/", 1)[-1] or url.bucket
        target = confined_path(Path("."), name, action="fetch", url=str(url), key=url.key)
    return target, fetch_prefix(url, target, client=client, **kwargs)


def cached_path(url: str, **kwargs: Any) -> Path:
    """The local copy of `url` in the cache (fetched or refreshed first): a file or a directory.

    It lives at `$BORT_CACHE/s3/BUCKET/KEY`; a bucket or key that is not a plain relative path there (`..`,
    `//`, an absolute key, …) is refused with an UnsafeKeyError, as is any key listed under a prefix."""
    parsed = parse_s3_url(url)
    key = parsed.key[:-1] if parsed.key.endswith("/") else parsed.key  # "KEY/" names the prefix KEY
    relative = f"{parsed.bucket}/{key}" if key else parsed.bucket
    local = confined_path(cache_dir() / "s3", relative, action="fetch", url=url, key=relative,
                          what="the bucket and key")
    kwargs.setdefault("skip_existing", True)
    kwargs.setdefault("progress", None)
    path, _ = fetch_any(parsed, local, **kwargs)
    return path
