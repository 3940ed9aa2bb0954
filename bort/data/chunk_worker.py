"""The work done on one chunk of input text, in a worker process: split, tokenise, make instances, frame.

A `ChunkProcessor` is built once in the parent and handed to each worker; `process(index, data)` returns the
chunk's records already framed for RecordIO (so the parent only writes bytes) and the chunk's counts.
"""
from __future__ import annotations

import gc
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from .instance_format import encode_instance
from .instances import InstanceBuilder, InstanceSettings, chunk_rng
from .recordio import frame
from .text_chunks import split_documents

__all__ = ["ChunkProcessor", "ChunkResult", "init_worker", "run_chunk"]

# Sentences per call into the Rust tokenizer: large enough to amortise the call, small enough that the
# `Encoding` objects (which carry offsets and strings besides the ids) stay a few MB.
ENCODE_BATCH = 2048


@dataclass
class ChunkResult:
    """What one chunk produced: framed records in order, and its counts."""

    index: int
    input_bytes: int
    records: list[bytes]
    counts: Counter = field(default_factory=Counter)


class ChunkProcessor:
    """Everything a worker needs to turn a chunk into records; picklable (the tokenizer pickles itself)."""

    def __init__(self, backend: Any, settings: InstanceSettings, cls_id: int, sep_id: int, mask_id: int,
                 vocab_size: int, special_ids: list[int], max_line_chars: int, ids_u32: bool,
                 positions_u32: bool) -> None:
        self.backend = backend  # a tokenizers.Tokenizer
        self.settings = settings
        self.builder_args = (settings, cls_id, sep_id, mask_id, vocab_size, tuple(special_ids))
        self.max_line_chars = max_line_chars
        # A sentence can never contribute more than this many tokens to an instance.
        self.max_sentence_tokens = settings.max_seq_length - 3
        self.ids_u32 = ids_u32
        self.positions_u32 = positions_u32
        self.special_array = np.array(sorted(set(special_ids) | {cls_id, sep_id, mask_id}), dtype=np.int64)
        self._builder: InstanceBuilder | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_builder"] = None  # rebuilt on arrival: its replacement-id list is cheap to make, big to send
        return state

    @property
    def builder(self) -> InstanceBuilder:
        """The instance builder, made on first use in each process."""
        if self._builder is None:
            self._builder = InstanceBuilder(*self.builder_args)
        return self._builder

    def _tokenize(self, documents: list[list[str]], counts: Counter
                  ) -> tuple[list[list[list[int]]], list[list[list[bool]]] | None, set[int]]:
        """(documents of token-id sentences, their word starts or None, indices of documents whose text
        holds special ids)."""
        wwm = self.settings.whole_word_mask
        flat: list[str] = []
        cut: set[int] = set()  # lines counted as truncated
        for doc in documents:
            for line in doc:
                if len(line) > self.max_line_chars:
                    # Bounded before tokenising, so a huge line never becomes a huge token list.
                    line = line[: self.max_line_chars]
                    cut.add(len(flat))
                flat.append(line)
        encode = self.backend.encode_batch
        if not wwm and hasattr(self.backend, "encode_batch_fast"):
            encode = self.backend.encode_batch_fast  # no offsets needed: ~15% faster
        ids: list[list[int]] = []
        words: list[list[int | None]] = []
        for lo in range(0, len(flat), ENCODE_BATCH):
            encodings = encode(flat[lo:lo + ENCODE_BATCH], add_special_tokens=False)
            ids.extend([e.ids for e in encodings])
            if wwm:
                words.extend([e.word_ids for e in encodings])
        lens = list(map(len, ids))
        cap = self.max_sentence_tokens
        if lens and max(lens) > cap:
            for k, n in enumerate(lens):
                if n > cap:
                    ids[k] = ids[k][:cap]
                    lens[k] = cap
                    cut.add(k)
        starts: list[list[bool]] = []
        if wwm:
            for w, n in zip(words, lens):
                starts.append([True] + [w[j] != w[j - 1] for j in range(1, n)])

        # Sentences holding special ids ("<mask>" typed in the text, WordPiece's [UNK]) need the slow,
        # checking path when masking; find them with one vectorised pass over the chunk.
        flat_ids = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=sum(lens))
        hits = np.flatnonzero(np.isin(flat_ids, self.special_array))
        special_sentences = set(np.searchsorted(np.cumsum(lens), hits, side="right").tolist()) if hits.size else set()

        out_ids: list[list[list[int]]] = []
        out_starts: list[list[list[bool]]] | None = [] if wwm else None
        dirty: set[int] = set()
        pos = 0
        for doc in documents:
            stop = pos + len(doc)
            keep = [k for k in range(pos, stop) if lens[k]]  # a line that tokenises to nothing is dropped
            if keep:
                if special_sentences and not special_sentences.isdisjoint(keep):
                    dirty.add(len(out_ids))
                out_ids.append([ids[k] for k in keep])
                if out_starts is not None:
                    out_starts.append([starts[k] for k in keep])
            else:
                counts["empty_documents"] += 1
            pos = stop
        counts["lines_truncated"] += len(cut)
        counts["sentences"] += pos
        counts["tokens"] += sum(lens)
        return out_ids, out_starts, dirty

    def process(self, index: int, data: bytes) -> ChunkResult:
        """Records (framed) and counts of chunk number `index` with text `data`."""
        # Hundreds of thousands of small lists and no reference cycles: the cyclic collector would only
        # rescan them over and over (it cost a third of the instance-building time).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._process(index, data)
        finally:
            if enabled:
                gc.enable()

    def _process(self, index: int, data: bytes) -> ChunkResult:
        counts: Counter = Counter()
        documents = split_documents(data, counts)
        docs, starts, dirty = self._tokenize(documents, counts)
        counts["documents"] += len(docs)
        records: list[bytes] = []
        for dupe in range(self.settings.dupe_factor):
            rng = chunk_rng(self.settings.random_seed, index, dupe)
            for inst in self.builder.build(docs, rng, starts, dirty):
                records.append(frame(encode_instance(inst.input_ids, inst.masked_positions, inst.masked_ids,
                                                     inst.is_random_next, self.ids_u32, self.positions_u32)))
                counts["instance_tokens"] += len(inst.input_ids)
                counts["masked_tokens"] += len(inst.masked_positions)
        counts["instances"] += len(records)
        return ChunkResult(index, len(data), records, counts)


_PROCESSOR: ChunkProcessor | None = None


def init_worker(processor: ChunkProcessor) -> None:
    """Pool initializer: keep the processor; the tokenizer runs single-threaded (the workers are the
    parallelism; nested Rust threads would only contend for the same cores)."""
    global _PROCESSOR
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent
    _PROCESSOR = processor


def run_chunk(index: int, data: bytes) -> ChunkResult:
    """Pool task: process one chunk with the worker's processor."""
    assert _PROCESSOR is not None, "init_worker was not called"
    return _PROCESSOR.process(index, data)
