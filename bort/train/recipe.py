"""The one shape every recipe has: settings in, `setup → train → cleanup`, a summary out.

    recipe = DistillationRecipe(DistillSettings(...))   # settings are validated when they are built
    summary = recipe.run()                               # setup(), train(), and cleanup() whatever happens

- `setup()` claims the output directory (`claim_output_dir`: one run at a time, no silent reuse of an earlier
  run's outputs), reads data and models, and restores state when resuming. Everything that can fail on bad
  input fails here, before any training.
- `train()` runs the loop and returns the summary (a JSON-able dict); it calls `save()` whenever the recipe
  checkpoints.
- `save()` writes what the recipe keeps (a checkpoint, the best model, the results) and returns where.
- `cleanup()` releases what setup took (process groups, the output directory's lock); it is safe after a
  failed setup and runs even when training raises.

Distillation, fine-tuning, Agora, the architecture search and the LRA trainer all take this shape, so a user
(or a benchmark chaining them) drives each the same way, and the command-line entry points are thin: parse
flags into the settings dataclass, `Recipe(settings).run()`, print the summary.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .run_dir import RunDir, claim_output_dir


class Recipe(ABC):
    """Base class of the recipes (see the module docstring)."""

    #: What a run writes into its output directory: a fresh run refuses a directory holding any of them unless
    #: it resumes or overwrites, and overwriting removes exactly these.
    artefacts: ClassVar[Sequence[str]] = ()

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.run_dir: RunDir | None = None

    def claim(self, output_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              **flags: str) -> Path:
        """Claim `output_dir` for this run (held until `cleanup`) and return it; `flags` name the resume and
        overwrite switches as the recipe's command line spells them (`claim_output_dir`)."""
        self.run_dir = claim_output_dir(output_dir, self.artefacts, resume=resume, overwrite=overwrite, **flags)
        return Path(output_dir)

    @abstractmethod
    def setup(self) -> None:
        """Claim the output directory, read inputs, build models; resume if asked."""

    @abstractmethod
    def train(self) -> dict[str, Any]:
        """Run the loop; return the summary."""

    def save(self) -> Path | None:
        """Write what the recipe keeps now; None when it keeps nothing at this point."""
        return None

    def cleanup(self) -> None:
        """Release what `setup` took; safe after a failed or partial setup."""
        if self.run_dir is not None:
            self.run_dir.release()
            self.run_dir = None

    def run(self) -> dict[str, Any]:
        """`setup`, `train`, and `cleanup` even when either raises."""
        try:
            self.setup()
            return self.train()
        finally:
            self.cleanup()
