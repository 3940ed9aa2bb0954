"""Errors of the S3 checkpoint store: one type per thing a user can act on, each with a message saying what."""
from __future__ import annotations


class StorageError(RuntimeError):
    """A pull or push failed; the message names the URL and what to do about it."""


class NoCredentialsError(StorageError):
    """No AWS credentials were found, or the ones found were rejected."""


class NotFoundError(StorageError):
    """The bucket or the key does not exist."""


class AccessDeniedError(StorageError):
    """The credentials in use may not read or write the object."""


class ChecksumMismatchError(StorageError):
    """The downloaded bytes do not match the object's ETag or `.sha256` sidecar.

    The bytes stay in `DEST.part` (never renamed to DEST) so a user can inspect them; `--restart` discards them.
    """


class ObjectChangedError(StorageError):
    """The object was replaced while it was being downloaded (its ETag changed)."""


class TransferError(StorageError):
    """The connection failed more times in a row than the retry budget allows; the partial file is kept."""


class UnsafeKeyError(StorageError):
    """A key (or a URL) names a local path that would land outside its destination directory, or that is not a
    plain relative path (`..`, `.`, empty segments, an absolute path, a backslash, a control character, one of
    our own bookkeeping names). Nothing is downloaded: a prefix with one such key is refused whole."""
