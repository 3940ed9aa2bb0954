"""What a download is checked against: a `.sha256` sidecar, the ETag (plain MD5 or multipart), or nothing.

S3's ETag of a single-part upload is the MD5 of the bytes; of a multipart upload it is
`md5(md5(part 1) ‖ … ‖ md5(part N))-N`, which can only be recomputed knowing the part size. We take it from
the object itself (`HeadObject` with `PartNumber=1` gives part 1's length), from the part size our own pushes
record in the metadata, or, failing both, try the part sizes common tools use that give N parts.
Objects encrypted with SSE-KMS or SSE-C have ETags that are not MD5s and are verified only by a sidecar.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ChecksumMismatchError

MiB = 1 << 20
# Metadata key our pushes set so a multipart ETag can be recomputed exactly.
PART_SIZE_META = "bort-part-size"
# Part sizes of common clients (boto3/AWS CLI 8 MiB, minimum 5 MiB, s3cmd 15 MiB, rclone/others 16, 64, 100…).
COMMON_PART_SIZES = [8 * MiB, 5 * MiB, 16 * MiB, 15 * MiB, 32 * MiB, 64 * MiB, 100 * MiB, 128 * MiB, 256 * MiB,
                     512 * MiB, 10 * MiB, 50 * MiB]
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART = re.compile(r"^([0-9a-f]{32})-(\d+)$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_sha256_sidecar(text: str) -> str | None:
    """The digest of a `sha256sum`-style sidecar ("HEX" or "HEX  name"), lower-case; None if malformed."""
    first = text.strip().split()[0] if text.strip() else ""
    return first.lower() if _SHA256.match(first) else None


def multipart_etag(path: str | os.PathLike, part_size: int) -> str:
    """The multipart ETag ("hex-N") of a file cut into `part_size` parts."""
    hasher = PartMd5(part_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            hasher.update(chunk)
    return hasher.hexdigest()


class PartMd5:
    """Incremental multipart ETag: MD5 per `part_size` bytes, then the MD5 of the concatenated digests."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.digests: list[bytes] = []
        self.current = hashlib.md5()
        self.filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            take = min(len(view), self.part_size - self.filled)
            self.current.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self.digests.append(self.current.digest())
                self.current, self.filled = hashlib.md5(), 0

    def hexdigest(self) -> str:
        digests = self.digests + ([self.current.digest()] if self.filled or not self.digests else [])
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


@dataclass
class Verifier:
    """Hashes the bytes of a download as they arrive and checks them at the end.

    kind: "sha256" (sidecar), "md5" (single-part ETag), "multipart" (part size known), "multipart-guess"
    (part size unknown: checked after the download by re-reading the file), or "none".
    """

    kind: str
    expected: str = ""
    part_size: int = 0
    size: int = 0
    _hasher: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "sha256":
            self._hasher = hashlib.sha256()
        elif self.kind == "md5":
            self._hasher = hashlib.md5()
        elif self.kind == "multipart":
            self._hasher = PartMd5(self.part_size)

    @property
    def streaming(self) -> bool:
        """True if `check` needs every byte passed to `update` in order; False if it reads the file itself
        ("multipart-guess") or checks nothing ("none")."""
        return self._hasher is not None

    def update(self, data: bytes | memoryview) -> None:
        if self._hasher is not None:
            self._hasher.update(data)

    def describe(self) -> str:
        return {"sha256": "sha256 sidecar", "md5": "ETag (MD5)", "multipart": f"multipart ETag, {self.part_size}-byte parts",
                "multipart-guess": "multipart ETag, part size inferred", "none": "unverified"}[self.kind]

    def check(self, path: Path, url: str) -> str:
        """Raise ChecksumMismatchError unless the bytes at `path` match; returns how they were verified."""
        if self.kind == "none":
            return self.describe()
        if self.kind == "multipart-guess":
            count = int(self.expected.rsplit("-", 1)[1])
            tried = candidate_part_sizes(self.size, count)
            for part_size in tried:
                if multipart_etag(path, part_size) == self.expected:
                    self.part_size = part_size
                    return f"multipart ETag, {part_size}-byte parts (inferred)"
            raise ChecksumMismatchError(
                f"{url}: checksum mismatch: no part size in {[s // MiB for s in tried]} MiB reproduces the multipart "
                f"ETag {self.expected}; the bytes are kept in {path} (delete it or pass --restart to download again)")
        got = self._hasher.hexdigest()
        if got != self.expected:
            raise ChecksumMismatchError(
                f"{url}: checksum mismatch ({self.describe()}): expected {self.expected}, got {got}; the bytes are "
                f"kept in {path} (delete it or pass --restart to download again)")
        return self.describe()


def candidate_part_sizes(size: int, count: int) -> list[int]:
    """Part sizes that cut `size` bytes into exactly `count` parts: common sizes, then the even split rounded
    up to a MiB (what tools that pick the part size from the file size do)."""
    candidates = list(COMMON_PART_SIZES)
    if count > 0:
        even = -(-size // count)
        candidates += [even, -(-even // MiB) * MiB]
    out = []
    for part in candidates:
        if part > 0 and -(-size // part) == max(count, 1) and part not in out:
            out.append(part)
    return out


def plan_verification(head: dict[str, Any], sidecar_sha256: str | None, part_size: int | None) -> Verifier:
    """Choose how to verify an object from its HeadObject reply, its sidecar digest and its part size."""
    size = int(head.get("ContentLength", 0))
    if sidecar_sha256:
        return Verifier("sha256", sidecar_sha256, size=size)
    etag = str(head.get("ETag", "")).strip('"').lower()
    encrypted = head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm")
    if encrypted or not etag:
        return Verifier("none", size=size)
    if _MD5.match(etag):
        return Verifier("md5", etag, size=size)
    match = _MULTIPART.match(etag)
    if match:
        count = int(match.group(2))
        if part_size and -(-size // part_size) == count:
            return Verifier("multipart", etag, part_size=part_size, size=size)
        return Verifier("multipart-guess", etag, size=size)
    return Verifier("none", size=size)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (for the sidecars our pushes write)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()
