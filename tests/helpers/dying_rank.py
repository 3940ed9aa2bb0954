"""Run the distillation CLI, but rank 1 dies abruptly (os._exit) at its third step: the test checks that
the other ranks then exit with an error instead of waiting forever in a collective."""
import os
import sys

from bort.distill import recipe
from bort.distill.cli import main

_step = recipe.DistillationRecipe.train_step


def train_step_or_die(self):
    if self.env.rank == 1 and self.step == 2:
        os._exit(17)
    return _step(self)


recipe.DistillationRecipe.train_step = train_step_or_die

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
