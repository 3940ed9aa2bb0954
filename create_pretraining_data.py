"""Pretraining data generator for Bort, with the original script's flags.

    python create_pretraining_data.py --input_file 'corpus/*.txt' --output_dir data/train \
        --vocab roberta-base/vocab.json --num_workers 4 --num_outputs 8

Writes `part-NNN.rec` (+ `.idx`) shards of masked-LM instances in MXNet RecordIO framing and a
`summary.json`; see `bort.data.pretraining` and `bort.data.cli` (also `bort create-pretraining-data`).
"""
import sys

from bort.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
