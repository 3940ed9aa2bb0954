#!/usr/bin/env python3
"""Fine-tune a pretrained checkpoint on a GLUE, SuperGLUE or RACE task (the original entry point's name).

    python run_finetune.py --task SST-2 --data-dir DATA_ROOT --model CHECKPOINT --output-dir out

The original `finetune_bort.py` command lines work too (`--task_name SST --pretrained_parameters model/bort.params
--ramp_up_epochs 1 …`); docs/original_commands.md maps each of its flags.
"""
import sys

from bort.finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
