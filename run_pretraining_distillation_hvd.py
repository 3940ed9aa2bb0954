#!/usr/bin/env python3
"""The distillation trainer launched by an MPI launcher (mpirun, srun, horovodrun) — the original Horovod
entry point's name. Ranks come from the launcher's variables, the rendezvous goes through mpi4py and the
collectives through torch.distributed; the Horovod library itself is not needed.

    mpirun -np 4 python run_pretraining_distillation_hvd.py --train 'train/part-*.rec' --teacher TEACHER

Every flag of the original's `get_argparser` is accepted (`--data --data_eval --teacher_model roberta_24_1024_16
--teacher_ckpt_dir DIR --distillation_temperature 2.0 --use_avg_len …`); docs/original_commands.md maps each.
"""
import sys

from bort.distill.cli import main

if __name__ == "__main__":
    sys.exit(main(launcher="mpi"))
