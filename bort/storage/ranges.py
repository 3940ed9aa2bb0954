"""Which bytes of a partial download are on disk: the `DEST.part.json` sidecar of a parallel ranged fetch.

`DEST.part` is preallocated to the object's size and filled by several ranged GETs at their offsets, so it
is no longer a prefix of the object: holes are possible. The sidecar records the object (URL, ETag, size),
the part size and the byte intervals written so far:

    {"url": "s3://b/k", "etag": "…", "size": 200000000, "part_size": 8388608, "received": [[0, 25165824], …]}

Each stream adds its bytes to the record every time it completes a part (and on any failure it can report,
down to the byte), and the file is replaced atomically, so after a crash — even `kill -9` — a resumed fetch
asks only for what is missing, losing at most the unfinished part of each stream. A record that does not
match the object, is malformed, or belongs to a `.part` of the wrong size is discarded (the download starts
over): the sidecar is a local file and is checked like any other input.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent [start, end) intervals covering the same bytes; empty ones dropped."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class Progress:
    """The received intervals of one download, shared by its streams (thread-safe) and saved to `path`."""

    def __init__(self, path: Path, record: dict[str, Any], part_size: int,
                 received: list[tuple[int, int]] | None = None) -> None:
        self.path, self.record, self.part_size = path, dict(record), part_size
        self.size = int(record["size"])
        self._received = merge(received or [])
        self._lock = threading.Lock()

    # --- loading --------------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, path: Path, part: Path, record: dict[str, Any], part_size: int) -> "Progress":
        """The progress saved at `path` if it is of this object and `part` holds it; else nothing received.

        A sidecar of the earlier sequential fetch (no "received") means `part` is a prefix of the object."""
        saved = _read_json(path)
        fresh = cls(path, record, part_size)
        if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in record.items()):
            return fresh
        on_disk = part.stat().st_size if part.is_file() else None
        if on_disk is None:
            return fresh
        if "received" not in saved:
            return cls(path, record, part_size, [(0, min(on_disk, fresh.size))])
        problem = _check_saved(saved, fresh.size)
        if problem is None and on_disk != fresh.size:
            problem = f"{part} has {on_disk} bytes, not the object's {fresh.size}"
        if problem is not None:
            logger.warning("%s: %s; downloading the object again", path, problem)
            return fresh
        return cls(path, record, int(saved["part_size"]), [(a, b) for a, b in saved["received"]])

    # --- updates (from the streams) -------------------------------------------------------------------------
    def add(self, start: int, end: int, save: bool = True) -> None:
        """Record that bytes [start, end) are written; `save` persists the record at once."""
        if end <= start:
            return
        with self._lock:
            self._received = merge(self._received + [(start, end)])
            if save:
                self._save_locked()

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        data = {**self.record, "part_size": self.part_size, "received": [list(i) for i in self._received]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, self.path)  # a reader (or a crash) sees the old record or the new one, never half

    # --- queries --------------------------------------------------------------------------------------------
    @property
    def received(self) -> int:
        with self._lock:
            return sum(b - a for a, b in self._received)

    def contiguous_end(self, offset: int) -> int:
        """The end of the received run that contains byte `offset` (`offset` itself if it is missing)."""
        with self._lock:
            for start, end in self._received:
                if start <= offset < end:
                    return end
        return offset

    def missing(self) -> list[tuple[int, int]]:
        """The [start, end) intervals not yet received."""
        with self._lock:
            out, cursor = [], 0
            for start, end in self._received:
                if start > cursor:
                    out.append((cursor, start))
                cursor = max(cursor, end)
            if cursor < self.size:
                out.append((cursor, self.size))
            return out

    def parts(self) -> int:
        """How many parts the object has at this part size."""
        return -(-self.size // self.part_size)

    def plan(self, streams: int, max_run_parts: int) -> list[tuple[int, int]]:
        """The missing bytes cut into ranges for `streams` parallel GETs.

        One GET per stream spanning several parts, not one per part: each request costs a round trip before
        its first byte (and a local test server re-reads the whole object for every ranged GET), so a few long
        ranges beat many short ones. A range ends on a part boundary and spans at most `max_run_parts` parts,
        so that with very large objects a slow connection holds back only its share."""
        missing = self.missing()
        total = sum(b - a for a, b in missing)
        if not total:
            return []
        share_parts = min(max_run_parts, max(1, -(-total // (streams * self.part_size))))
        share = share_parts * self.part_size
        runs: list[tuple[int, int]] = []
        for start, end in missing:
            while start < end:
                # cut at the first part boundary at least `share` bytes ahead (a hole may start mid-part)
                cut = min(end, -(-(start + share) // self.part_size) * self.part_size)
                runs.append((start, cut))
                start = cut
        return runs


def _check_saved(saved: dict[str, Any], size: int) -> str | None:
    """What is wrong with a saved progress record, or None."""
    part_size = saved.get("part_size")
    if type(part_size) is not int or part_size <= 0:
        return f"'part_size' is {part_size!r}, expected a positive integer"
    received = saved.get("received")
    if not isinstance(received, list):
        return f"'received' is {type(received).__name__}, expected a list of [start, end] byte offsets"
    for index, item in enumerate(received):
        if (not isinstance(item, list) or len(item) != 2 or any(type(x) is not int for x in item)
                or not 0 <= item[0] < item[1] <= size):
            return f"'received'[{index}] is {item!r}, expected [start, end] with 0 <= start < end <= {size}"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
