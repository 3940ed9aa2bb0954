"""The one error type every checkpoint reader raises for a file it cannot use."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint is unreadable, malformed or does not fit the model.

    The message names the file and, where it applies, the byte offset, the array and what was expected,
    so a user can tell a truncated download from a file of another format.
    """
