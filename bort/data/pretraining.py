"""Create Bort pretraining data: text files → shards `part-NNN.rec` (+ `.idx`) of masked-LM instances.

    python create_pretraining_data.py --input_file 'corpus/*.txt' --output_dir data/train \\
        --vocab roberta-base/vocab.json --num_workers 4 --num_outputs 8

The input is read in chunks of whole documents (`--chunk_size_mb`), at most `--max_buffer_mb` of text in
flight, so memory does not grow with the input. Worker processes (`--num_workers`) split, tokenise (the Rust
tokenizer single-threaded inside each) and build instances; the parent writes the records in chunk order,
instance n to shard n mod `--num_outputs`. Each chunk's random stream comes from (seed, chunk number,
duplicate number), so the shards are byte-identical whatever the number of workers. Shards are written to
temporary files (unique names) and renamed when complete: a crash never leaves a damaged shard behind, and a
failed or interrupted run removes its temporary files. The output directory is held for the run
(`bort.train.run_dir`): a second run into it is refused, naming the first one's pid. Shards of an earlier run
in the directory are replaced, each atomically (rerunning is how data are remade); shards it does not rewrite
are listed as stale in the summary.

Instances follow Bort's script (see `bort.data.instances`); the record layout and the header record are in
`bort.data.instance_format`; `PretrainingDataset` and `collate` read them back. A summary of what was read,
skipped, truncated and written is printed and saved as `summary.json` in the output directory.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ..atomic import atomic_write_text, raise_write_error
from ..train.run_dir import lock_output_dir
from .chunk_worker import ChunkProcessor, ChunkResult, init_worker, run_chunk
from .instance_format import FORMAT, FORMAT_VERSION, encode_header, needs_u32, vocab_hash
from .instances import InstanceSettings
from .npz_shards import rec_to_npz
from .pretraining_dataset import PretrainingDataError, PretrainingDataset, PretrainingShard, collate, open_shard
from .recordio import RecordIOWriter
from .text_chunks import iter_chunks, resolve_inputs

__all__ = ["InstanceSettings", "create_pretraining_data", "add_args", "run", "PretrainingShard",
           "PretrainingDataset", "PretrainingDataError", "collate", "DATASET_VOCABULARIES"]

# The original's --dataset_name values and the vocabulary each one means (nothing is downloaded here; Bort's own
# is shipped with the package, the others must be given with --vocab).
BORT_DATASET = "openwebtext_ccnews_stories_books_cased"
DATASET_VOCABULARIES = {
    "openwebtext_ccnews_stories_books_cased":
        ("bpe", "the RoBERTa byte-level BPE vocabulary Bort uses (vocab.json + merges.txt, 50,265 ids)"),
    "book_corpus_wiki_en_uncased": ("wordpiece", "BERT's uncased WordPiece vocab.txt (30,522 ids)"),
    "book_corpus_wiki_en_cased": ("wordpiece", "BERT's cased WordPiece vocab.txt (28,996 ids)"),
    "wiki_multilingual_uncased": ("wordpiece", "multilingual BERT's uncased WordPiece vocab.txt"),
    "wiki_multilingual_cased": ("wordpiece", "multilingual BERT's cased WordPiece vocab.txt"),
    "wiki_cn_cased": ("wordpiece", "Chinese BERT's WordPiece vocab.txt"),
}
MB = 1 << 20
OUTPUT_FORMATS = ("rec", "npz")


class _Shards:
    """The output shards: a header record each, then instance n in shard n mod count."""

    def __init__(self, output_dir: Path, count: int, header: dict[str, Any]) -> None:
        self.writers: list[RecordIOWriter] = []
        try:
            for i in range(count):
                writer = RecordIOWriter(output_dir / f"part-{i:03d}.rec")
                self.writers.append(writer)
                writer.write(encode_header({**header, "shard_index": i, "num_shards": count}))
        except BaseException:
            self.abort()
            raise
        self.instances = [0] * count
        self._next = 0

    def write_framed(self, framed: bytes) -> None:
        k = self._next % len(self.writers)
        try:
            self.writers[k].write_framed(framed)
        except OSError as exc:  # disk full…: name the shard and the errno
            raise_write_error(exc, self.writers[k].path, "writing a pretraining shard")
            raise
        self.instances[k] += 1
        self._next += 1

    def close(self) -> None:
        for w in self.writers:
            try:
                w.close()
            except BaseException as exc:
                self.abort()  # the shards not yet closed leave no temporary file behind
                raise_write_error(exc, w.path, "finishing a pretraining shard")
                raise

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


def _processor(tokenizer: Any, settings: InstanceSettings, max_line_chars: int) -> ChunkProcessor:
    if tokenizer.mask_token_id is None:
        raise ValueError("the vocabulary has no mask token; masked-LM data needs one (e.g. <mask> or [MASK])")
    return ChunkProcessor(tokenizer.backend, settings, tokenizer.cls_token_id, tokenizer.sep_token_id,
                          tokenizer.mask_token_id, tokenizer.vocab_size, sorted(tokenizer.all_special_ids),
                          max_line_chars, ids_u32=needs_u32(tokenizer.vocab_size - 1),
                          positions_u32=needs_u32(settings.max_seq_length - 1))


def shard_header(tokenizer: Any, settings: InstanceSettings, chunk_size_mb: float, max_line_chars: int
                 ) -> dict[str, Any]:
    """The header record's content (without the shard number): everything that decides the output."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer_kind": tokenizer.kind,
        "lowercase": tokenizer.lowercase,
        "vocab_hash": vocab_hash(tokenizer.get_vocab()),
        "vocab_size": tokenizer.vocab_size,
        "special_ids": {"cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id,
                        "pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
                        "mask": tokenizer.mask_token_id},
        "id_dtype": "uint32" if needs_u32(tokenizer.vocab_size - 1) else "uint16",
        "position_dtype": "uint32" if needs_u32(settings.max_seq_length - 1) else "uint16",
        "settings": {**settings.to_dict(), "chunk_size_mb": chunk_size_mb, "max_line_chars": max_line_chars},
    }


# Temporary files of the shard writers and of summary.json (unique names beside their destination), and the
# fixed names earlier versions used.
_TEMPORARIES = (".part-*.tmp", "part-*.tmp", ".summary.json.*.tmp")


def _remove_temporaries(out: Path) -> None:
    for pattern in _TEMPORARIES:
        for path in out.glob(pattern):
            with contextlib.suppress(OSError):
                if path.is_dir():  # the staging directory of an npz run killed outright
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _holding_output_dir(create):
    """Hold `output_dir` for the whole call (a second run into it is refused with the owner's pid) and leave
    no temporary file in it, whether the run succeeds, fails or is interrupted; temporaries of a run killed
    outright (kill -9) are removed by the next one. The inputs are resolved first, so a wrong pattern creates
    no directory."""

    @functools.wraps(create)
    def wrapper(input_files: str | Sequence[str], output_dir: str | os.PathLike[str], *args: Any, **kwargs: Any):
        resolve_inputs(input_files)  # FileNotFoundError listing every pattern that matches nothing
        run_dir = lock_output_dir(output_dir)
        try:
            _remove_temporaries(run_dir.path)
            return create(input_files, output_dir, *args, **kwargs)
        finally:
            _remove_temporaries(run_dir.path)
            run_dir.release()

    return wrapper


def _executor(num_workers: int, processor: ChunkProcessor) -> ProcessPoolExecutor:
    # fork shares the loaded tokenizer and libraries with the workers at no cost; elsewhere spawn.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method),
                               initializer=init_worker, initargs=(processor,))


@_holding_output_dir
def create_pretraining_data(
    input_files: str | Sequence[str],
    output_dir: str | os.PathLike[str],
    tokenizer: Any,
    settings: InstanceSettings = InstanceSettings(),
    *,
    num_workers: int = 1,
    num_outputs: int = 1,
    chunk_size_mb: float = 1.0,
    max_buffer_mb: float = 8.0,
    max_line_chars: int | None = None,
    progress: bool = True,
    output_format: str = "rec",
) -> dict[str, Any]:
    """Write `num_outputs` shards of pretraining instances made from `input_files` (comma-separated globs
    or a list) with `tokenizer` (a `BortTokenizer`) into `output_dir`; returns the summary (also written
    to `output_dir/summary.json`).

    `chunk_size_mb` is the unit of work and of randomness (part of the output's identity, recorded in the
    header); `max_buffer_mb` bounds the text in flight; `max_line_chars` (default 16 × max_seq_length) cuts
    longer lines before tokenising. `output_format` "npz" writes `part-NNN.npz` shards in the original Bort's
    layout instead (see `bort.data.npz_shards`). Raises FileNotFoundError when a pattern matches no file.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if output_format == "npz":
        return _create_npz_shards(input_files, Path(output_dir), tokenizer, settings, num_workers=num_workers,
                                  num_outputs=num_outputs, chunk_size_mb=chunk_size_mb, max_buffer_mb=max_buffer_mb,
                                  max_line_chars=max_line_chars, progress=progress)
    if num_workers < 1 or num_outputs < 1:
        raise ValueError(f"num_workers and num_outputs must be >= 1, got {num_workers} and {num_outputs}")
    if chunk_size_mb <= 0 or max_buffer_mb <= 0:
        raise ValueError("chunk_size_mb and max_buffer_mb must be positive")
    start = time.perf_counter()
    files = resolve_inputs(input_files)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_line_chars = max_line_chars or 16 * settings.max_seq_length
    processor = _processor(tokenizer, settings, max_line_chars)
    header = shard_header(tokenizer, settings, chunk_size_mb, max_line_chars)
    chunk_bytes = max(1, int(chunk_size_mb * MB))
    in_flight = max(1, int(max_buffer_mb // chunk_size_mb))
    counts: Counter = Counter()
    total_bytes = sum(f.stat().st_size for f in files)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pretraining data", disable=not progress,
               file=sys.stderr)
    shards = _Shards(out, num_outputs, header)

    def consume(result: ChunkResult) -> None:
        for framed in result.records:
            shards.write_framed(framed)
        counts.update(result.counts)
        counts["chunks"] += 1
        bar.update(min(result.input_bytes, bar.total - bar.n))

    # Blocks are read lazily as chunks are submitted, so reading never runs ahead of the buffer.
    chunks = iter_chunks(files, chunk_bytes, 4 * max_line_chars, counts)
    saved_env = os.environ.get("TOKENIZERS_PARALLELISM")
    executor = None
    try:
        if num_workers == 1:
            for index, data in enumerate(chunks):
                consume(processor.process(index, data))
        else:
            # Set while the workers are forked: they inherit it and tokenize single-threaded, silently.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            executor = _executor(num_workers, processor)
            pending: deque[Future] = deque()
            for index, data in enumerate(chunks):
                pending.append(executor.submit(run_chunk, index, data))
                while len(pending) >= in_flight:
                    consume(pending.popleft().result())
            while pending:
                consume(pending.popleft().result())
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            executor = None
        shards.abort()
        bar.close()
        raise
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
        if saved_env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved_env
    if not any(shards.instances):  # all inputs empty or blank: an error, not an empty dataset that trains nothing
        shards.abort()
        bar.close()
        shown = ", ".join(map(str, files[:5])) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        raise PretrainingDataError(
            f"no pretraining instances were made from {shown}: {counts['bytes_read']} bytes read, "
            f"{counts['documents']} documents, {counts['tokens']} tokens; expected text, one sentence a line, "
            "a blank line between documents")
    shards.close()
    bar.close()

    seconds = time.perf_counter() - start
    names = [w.path.name for w in shards.writers]
    stale = sorted(p.name for p in out.glob("part-*.rec") if p.name not in names)
    summary = {
        "output_dir": str(out),
        "input_files": [str(f) for f in files],
        "shards": [{"file": n, "instances": c} for n, c in zip(names, shards.instances)],
        "counts": {k: counts[k] for k in sorted(counts)},
        "header": header,
        "num_workers": num_workers,
        "seconds": round(seconds, 3),
        "input_mb_per_s": round(counts["bytes_read"] / MB / seconds, 3) if seconds > 0 else None,
        "stale_shards": stale,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _create_npz_shards(input_files: str | Sequence[str], out: Path, tokenizer: Any, settings: InstanceSettings,
                       **options: Any) -> dict[str, Any]:
    """`--output_format npz`: the `.rec` shards are made in a staging directory inside `out` (so the instances
    are those of a `.rec` run, byte for byte) and each is converted to `out/part-NNN.npz`; the staging
    directory is removed whatever happens."""
    staging = Path(tempfile.mkdtemp(prefix=".part-npz-staging-", suffix=".tmp", dir=out))
    try:
        summary = create_pretraining_data.__wrapped__(input_files, staging, tokenizer, settings, **options)
        for shard in summary["shards"]:
            npz_name = shard["file"][:-len(".rec")] + ".npz"
            rec_to_npz(staging / shard["file"], out / npz_name)
            shard["file"] = npz_name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = {s["file"] for s in summary["shards"]}
    summary.update(output_dir=str(out), output_format="npz",
                   stale_shards=sorted(p.name for p in out.glob("part-*.npz") if p.name not in names))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few human-readable lines about a run."""
    c = summary["counts"]
    total = sum(s["instances"] for s in summary["shards"])
    masked = c.get("masked_tokens", 0) / max(1, c.get("instance_tokens", 0))
    lines = [
        f"wrote {total} instances to {len(summary['shards'])} shard(s) in {summary['output_dir']} "
        f"({summary['seconds']:.1f} s, {summary['input_mb_per_s']} MB/s of input)",
        f"read {c.get('files', 0)} file(s), {c.get('bytes_read', 0)} bytes, {c.get('lines', 0)} lines, "
        f"{c.get('documents', 0)} documents, {c.get('tokens', 0)} tokens; {masked:.1%} of instance tokens masked",
        "bad input: " + ", ".join(f"{k.replace('_', ' ')} {c.get(k, 0)}" for k in (
            "lines_non_utf8", "empty_documents", "lines_truncated", "lines_cut_while_reading",
            "documents_split")),
    ]
    if summary.get("stale_shards"):
        lines.append("warning: the output directory also holds shards this run did not write: "
                     + ", ".join(summary["stale_shards"]))
    return "\n".join(lines)
