"""Command-line flags of `bort create-pretraining-data` / `create_pretraining_data.py`: text files → pretraining
shards. Every flag of the original `create_pretraining_data.py` is accepted with its meaning (`--input_file`,
`--dupe_factor`, …; the dashed spelling `--input-file` is the one `--help` shows)."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from ..cli import add_no_progress, run_reporting, script_parser
from .instances import InstanceSettings
from .pretraining import (BORT_DATASET, DATASET_VOCABULARIES, OUTPUT_FORMATS, create_pretraining_data, format_summary,
                          open_shard)


def add_args(parser: argparse.ArgumentParser) -> None:
    """The original script's flags (plus the streaming and vocabulary options)."""
    d = InstanceSettings()
    a = parser.add_argument
    a("--input-file", required=True, help='input text files, comma-separated globs (e.g. "~/data/*.txt"); one '
                                          "sentence a line, a blank line between documents")
    a("--output-dir", required=True, help="where part-NNN.rec/.idx and summary.json go")
    a("--vocab", "--tokenizer", dest="vocab", default=None,
      help="vocabulary: vocab.json (+ merges.txt beside it), vocab.txt, tokenizer.json, GluonNLP vocab JSON or a "
           "directory")
    a("--merges", default=None, help="BPE merges file when not beside the vocabulary")
    a("--dataset-name", default=None, choices=sorted(DATASET_VOCABULARIES),
      help="the original's vocabulary name; only checked against --vocab (nothing downloads)")
    a("--whole-word-mask", action="store_true", help="mask whole words rather than subwords")
    a("--max-seq-length", type=int, default=d.max_seq_length, help="maximum sequence length")
    a("--max-predictions-per-seq", type=int, default=d.max_predictions_per_seq,
      help="maximum masked positions per sequence")
    a("--random-seed", type=int, default=d.random_seed, help="random seed")
    a("--dupe-factor", type=int, default=d.dupe_factor, help="times to use the input, with different masks")
    a("--masked-lm-prob", type=float, default=d.masked_lm_prob, help="masked LM probability")
    a("--short-seq-prob", type=float, default=d.short_seq_prob, help="probability of a shorter target length")
    a("--random-next-prob", type=float, default=d.random_next_prob,
      help="probability that segment B comes from another document (the original's 0.5)")
    a("--num-workers", type=int, default=1, help="worker processes")
    a("--num-outputs", type=int, default=1, help="number of output shards")
    a("--chunk-size-mb", type=float, default=1.0, help="text per unit of work; part of what decides the output")
    a("--max-buffer-mb", type=float, default=8.0, help="text in flight at most; bounds memory")
    a("--verbose", action="store_true", help="print the first instance")
    add_no_progress(parser)
    a("--output-format", choices=OUTPUT_FORMATS, default="rec",
      help="rec: our RecordIO shards; npz: the original Bort's part-NNN.npz layout, which its "
           "get_pretrain_data_npz loads")


def _load_tokenizer(args: argparse.Namespace) -> Any:
    from ..tokenization import load_tokenizer

    expected = DATASET_VOCABULARIES.get(args.dataset_name) if args.dataset_name else None
    if args.vocab is None and args.dataset_name == BORT_DATASET:
        from ..tokenization import BORT_VOCABULARY

        return load_tokenizer(BORT_VOCABULARY)  # shipped with the package: the original's meaning, offline
    if args.vocab is None:
        if expected is not None:
            raise ValueError(f"--dataset_name {args.dataset_name} means {expected[1]}; nothing is downloaded, "
                             "so give that file with --vocab")
        raise ValueError("give the vocabulary with --vocab (e.g. roberta-base/vocab.json for Bort)")
    tok = load_tokenizer(args.vocab, merges=args.merges)
    if expected is not None and tok.kind != expected[0]:
        print(f"warning: --dataset_name {args.dataset_name} means {expected[1]}, but {args.vocab} is a "
              f"{tok.kind} vocabulary; using {args.vocab}", file=sys.stderr)
    return tok


def _print_first_instance(output_dir: Path, tokenizer: Any) -> None:
    first = output_dir / "part-000.rec"
    shard = open_shard(first if first.exists() else output_dir / "part-000.npz")
    if len(shard):
        inst = shard[0]
        print("first instance:\n  tokens: " + " ".join(tokenizer.id_to_token(int(i)) or "?" for i in inst["input_ids"]))
        print("  masked positions: " + " ".join(map(str, inst["masked_positions"].tolist())))
        print("  masked tokens: " + " ".join(tokenizer.id_to_token(int(i)) or "?" for i in inst["masked_ids"]))


@contextlib.contextmanager
def _sigterm_as_exit():
    """While in the block, SIGTERM (a job scheduler, `kill`) ends the run as Ctrl-C does: through the cleanup
    that removes temporary files, rather than at once."""

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, leave)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    """Run `create_pretraining_data.py` / `bort create-pretraining-data`; a user error raises (the caller reports
    it in one line)."""
    tokenizer = _load_tokenizer(args)
    settings = InstanceSettings(
        max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_prob=args.masked_lm_prob, short_seq_prob=args.short_seq_prob,
        random_next_prob=args.random_next_prob, whole_word_mask=args.whole_word_mask,
        dupe_factor=args.dupe_factor, random_seed=args.random_seed)
    with _sigterm_as_exit():
        summary = create_pretraining_data(
            args.input_file, args.output_dir, tokenizer, settings, num_workers=args.num_workers,
            num_outputs=args.num_outputs, chunk_size_mb=args.chunk_size_mb, max_buffer_mb=args.max_buffer_mb,
            progress=args.progress, output_format=args.output_format)
    print(format_summary(summary))
    if args.verbose:
        _print_first_instance(Path(args.output_dir), tokenizer)
    return 0


PROG = "create_pretraining_data.py"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `create_pretraining_data.py`."""
    parser = script_parser(PROG, "Pretraining data generator for Bort (masked-LM instances in RecordIO shards)",
                           add_args)
    return run_reporting(PROG, run, parser.parse_args(argv))
