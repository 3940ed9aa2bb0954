#!/usr/bin/env python3
"""Distil a student from a teacher (the original Bort entry point's name and flags).

    python run_pretraining_distillation.py --train 'train/part-*.rec' --test 'test/part-*.rec' --teacher TEACHER
    torchrun --nproc-per-node 8 run_pretraining_distillation.py …
"""
import sys

from bort.distill.cli import main

if __name__ == "__main__":
    sys.exit(main())
