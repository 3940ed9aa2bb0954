"""Streaming input for pretraining data: files → chunks of whole documents → documents of sentences.

The input format is the original's: one sentence per line, a blank (or whitespace-only) line between
documents. The reader never holds more than about two chunks of text, whatever the file or line sizes:

- `iter_chunks` reads fixed-size blocks and cuts them after the last blank line, so each chunk holds whole
  documents. A document longer than two chunks is cut at a line boundary (counted as `documents_split`).
  A line longer than `max_line_bytes` is cut there while reading and the rest of it skipped without being
  kept (counted as `lines_cut_while_reading`); a 10 MB line costs `max_line_bytes` of memory.
- `split_documents` (run in the worker processes) decodes a chunk as UTF-8, replacing invalid bytes
  (counting `lines_non_utf8`), and splits it into documents of stripped, non-empty lines, counting blank
  lines that end no document as `empty_documents`.

Chunk boundaries depend only on the input and `chunk_bytes`, never on the number of workers, so the
instances made from a chunk do not either.
"""
from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["resolve_inputs", "iter_chunks", "split_documents"]


def resolve_inputs(patterns: str | Sequence[str]) -> list[Path]:
    """Files named by comma-separated globs (or a list of globs), in order, each glob's matches sorted.

    Raises FileNotFoundError listing every pattern that matched no file.
    """
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    items = [os.path.expanduser(p.strip()) for p in items if p.strip()]
    if not items:
        raise FileNotFoundError("no input files given")
    files: list[Path] = []
    missing: list[str] = []
    for pattern in items:
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(m)]
        else:
            matches = [Path(pattern)] if os.path.isfile(pattern) else []
        if not matches:
            missing.append(pattern)
        files.extend(matches)
    if missing:
        raise FileNotFoundError("no input file matches " + ", ".join(repr(m) for m in missing))
    return files


def _terminate_document(pending: bytearray) -> None:
    """Make the buffered text end with a blank line, so documents never run on from one file into the next."""
    if not pending:
        return
    tail = bytes(pending[-4:]).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if tail.endswith(b"\n\n"):
        return
    pending += b"\n" if tail.endswith(b"\n") else b"\n\n"


def _cut_long_tail(pending: bytearray, max_line_bytes: int) -> bool:
    """Cut the unfinished last line of `pending` at `max_line_bytes` (at a UTF-8 character boundary);
    True when it was cut, i.e. the rest of that line must be skipped."""
    start = pending.rfind(b"\n") + 1
    if len(pending) - start <= max_line_bytes:
        return False
    cut = start + max_line_bytes
    while cut > start and (pending[cut] & 0xC0) == 0x80:  # do not split a multi-byte character
        cut -= 1
    del pending[cut:]
    pending += b"\n"
    return True


def _document_boundary(pending: bytearray) -> int:
    """End (exclusive) of the last blank line in `pending`, or 0."""
    a = pending.rfind(b"\n\n")
    b = pending.rfind(b"\n\r\n")
    return max(a + 2 if a >= 0 else 0, b + 3 if b >= 0 else 0)


def iter_chunks(paths: Sequence[Path], chunk_bytes: int, max_line_bytes: int, counts: Counter,
                on_read: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Yield the input as chunks of whole documents of about `chunk_bytes` (see the module docstring).

    `counts` receives `files`, `bytes_read`, `lines_cut_while_reading`, `documents_split`; `on_read(n)` is
    called after each block read (for progress bars).
    """
    if chunk_bytes < 1 or max_line_bytes < 1:
        raise ValueError("chunk_bytes and max_line_bytes must be positive")
    pending = bytearray()
    for path in paths:
        skipping = False
        with open(path, "rb") as fh:
            while True:
                block = fh.read(chunk_bytes)
                if not block:
                    break
                counts["bytes_read"] += len(block)
                if on_read is not None:
                    on_read(len(block))
                if skipping:
                    newline = block.find(b"\n")
                    if newline < 0:
                        continue
                    block = block[newline + 1:]
                    skipping = False
                pending += block
                if _cut_long_tail(pending, max_line_bytes):
                    skipping = True
                    counts["lines_cut_while_reading"] += 1
                while len(pending) >= chunk_bytes:
                    end = _document_boundary(pending)
                    if end == 0:
                        if len(pending) < 2 * chunk_bytes:
                            break
                        # One document larger than two chunks: cut it between lines to bound memory.
                        end = pending.rfind(b"\n") + 1
                        if end == 0:
                            break
                        counts["documents_split"] += 1
                    yield bytes(pending[:end])
                    del pending[:end]
        counts["files"] += 1
        _terminate_document(pending)
    if pending:
        yield bytes(pending)


def _decode(data: bytes, counts: Counter) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Only a chunk with bad bytes pays for the line-by-line pass that counts the lines affected.
    lines = data.split(b"\n")
    out = []
    for raw in lines:
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            counts["lines_non_utf8"] += 1
            out.append(raw.decode("utf-8", errors="replace"))
    return "\n".join(out)


def split_documents(data: bytes, counts: Counter) -> list[list[str]]:
    """Documents (lists of stripped, non-empty lines) of one chunk; counts `lines`, `lines_non_utf8`,
    `empty_documents`."""
    text = _decode(data, counts)
    if "\r" in text:  # universal newlines, as the original's text-mode reading
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the piece after the final newline is not a line
    counts["lines"] += len(lines)
    documents: list[list[str]] = []
    current: list[str] = []
    empty = 0
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            documents.append(current)
            current = []
        else:
            empty += 1
    if current:
        documents.append(current)
    counts["empty_documents"] += empty
    return documents
