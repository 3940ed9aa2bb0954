"""`bort agora`: Agora on a task from a grid file (task, candidate, data, pool Θ) and a reference model.

    bort agora grid.json --reference path/to/finetuned_reference --holdout 136 --replay 1 --output-dir out

Writes `rounds.jsonl` (one record per round: pool and scores, errors, points added, training-set size),
`agora.json`, `generated.jsonl`, `agora.png` and the final model in `best/` (with its tokenizer). The output
directory is held for the run (`bort.train.run_dir`); one holding an earlier run's outputs is refused unless
`--overwrite`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..checkpoint import load_pretrained, save_pretrained
from ..tokenization import load_tokenizer
from ..train.metrics import JsonlLogger
from ..train.recipe import Recipe
from ..train.settings import Settings, boolean, one_of, optional, positive_int, setting
from .agora import Agora, write_report
from .augment import MLMInfill, TokenPerturbation, vocabulary_words
from .batching import encode_task_examples
from .grid import load_grid
from .heads import load_model_for, model_task
from .runner import read_splits, task_tokenizer
from .trainer import evaluate, predict

# What a run writes into its output directory (refused when present, removed by --overwrite).
ARTEFACTS = ("rounds.jsonl", "agora.json", "generated.jsonl", "agora.png", "best")
GENERATORS = ("perturb", "mlm")


@dataclass
class AgoraSettings(Settings):
    """Every knob of an Agora run (`bort agora`'s flags map one to one); each field's constraint is declared
    beside it. The task, candidate, data and pool Θ come from the grid file."""

    grid: str = setting(help="grid file: task, candidate model, data and the pool Θ (its grid)")
    reference: str = setting(check=lambda v: None if isinstance(v, str) and v else
                             f"must name the fine-tuned model that labels the generated points, got {v!r}",
                             help="fine-tuned reference model that labels generated points")
    reference_tokenizer: str | None = setting(None, help="default: the reference's directory")
    generator: str = setting("perturb", check=one_of(*GENERATORS),
                             help="token-level perturbations, or infilling by mlm_teacher's masked-LM head")
    mlm_teacher: str | None = setting(None, help="checkpoint with an MLM head for generator mlm")
    per_error: int = setting(2, check=positive_int(), help="new points per evaluation error")
    max_new_per_round: int | None = setting(None, check=optional(positive_int()))
    replay: int = setting(0, check=positive_int(0), help="re-run the rounds K more times")
    holdout: int = setting(0, check=positive_int(0),
                           help="rows of the evaluation set kept out of Agora for a final, unbiased test")
    output_dir: str = "agora_output"
    overwrite: bool = setting(False, check=boolean())

    def check_settings(self) -> list[str]:
        if self.generator == "mlm" and not self.mlm_teacher:
            return ["--generator mlm needs --mlm-teacher (a checkpoint with a masked-LM head)"]
        return []


def reference_labeller(task: Any, reference: str, tokenizer_path: str | None, max_length: int):
    """A function labelling examples with the reference model's predictions (its own tokenizer)."""
    model = load_pretrained(reference, task=model_task(task.kind))
    tokenizer = load_tokenizer(tokenizer_path or reference)

    def label(examples: Sequence[Any]) -> list[Any]:
        items = encode_task_examples(tokenizer, examples, max_length)
        return predict(model, items, task.kind, tokenizer.pad_token_id)

    return label


class AgoraRecipe(Recipe):
    """Agora on the grid file's task and pool (`bort.finetune.agora`), in `Recipe`'s shape: the output
    directory is held for the run; one holding an earlier run's outputs is refused unless `overwrite`."""

    artefacts = ARTEFACTS

    def setup(self) -> None:
        """Read the grid file, claim the output directory, read and split the data, build the generator and
        the reference labeller."""
        from ..data.tasks import get_task

        settings = self.settings
        self.spec = load_grid(settings.grid)
        shared = self.spec.settings
        self.task = get_task(shared.task)
        self.out = self.claim(settings.output_dir, overwrite=settings.overwrite)
        self.train_examples, dev, _, _ = read_splits(self.task, shared)
        self.holdout: list[Any] = []
        if settings.holdout:
            if not 0 < settings.holdout < len(dev):
                raise ValueError(f"--holdout {settings.holdout} must leave evaluation rows (the set has {len(dev)})")
            dev, self.holdout = dev[:-settings.holdout], dev[-settings.holdout:]
        self.dev = dev
        self.tokenizer = tokenizer = task_tokenizer(shared)
        if settings.generator == "mlm":
            self.generator = MLMInfill(load_pretrained(settings.mlm_teacher, task="mlm"),
                                       load_tokenizer(settings.mlm_teacher))
        else:
            self.generator = TokenPerturbation(vocabulary_words(tokenizer, limit=20000))
        self.label = reference_labeller(self.task, settings.reference, settings.reference_tokenizer,
                                        shared.max_length)

    def train(self) -> dict[str, Any]:
        """The rounds (rounds.jsonl), the final model on the holdout rows, then `save`; returns the summary."""
        settings, shared, task, tokenizer = self.settings, self.spec.settings, self.task, self.tokenizer
        log = JsonlLogger(self.out / "rounds.jsonl")
        try:
            agora = Agora(task, lambda: load_model_for(task, shared.model, shared.config),
                          lambda exs: encode_task_examples(tokenizer, exs, shared.max_length), self.label,
                          self.generator, tokenizer.pad_token_id, per_error=settings.per_error,
                          max_new_per_round=settings.max_new_per_round,
                          fit_options={"patience": shared.patience, "eval_interval": shared.eval_interval,
                                       "max_steps": shared.max_steps},
                          log=log)
            self.model, self.result = agora.run(self.spec.trials(), self.train_examples, self.dev,
                                                replay=settings.replay)
        finally:
            log.close()
        self.holdout_metrics = None
        if self.holdout:
            items = encode_task_examples(tokenizer, self.holdout, shared.max_length)
            self.holdout_metrics, _ = evaluate(self.model, task, items, self.holdout, tokenizer.pad_token_id)
        self.save()
        result = self.result
        return {"task": task.name, "hparams": result.hparams.as_dict(), "dev": result.dev,
                "holdout": self.holdout_metrics, "trainings": result.trainings, "added": len(result.added)}

    def save(self) -> Path:
        """best/ (the final model with its tokenizer), agora.json, generated.jsonl and agora.png."""
        save_pretrained(self.model, self.out / "best")
        self.tokenizer.save(self.out / "best")
        extra = {"holdout": self.holdout_metrics, "holdout_examples": len(self.holdout),
                 "generator": self.settings.generator, "replay": self.settings.replay,
                 "pool": len(self.spec.trials())}
        write_report(self.result, self.out, self.task, extra)
        return self.out / "best"


def run_agora(settings: AgoraSettings) -> dict[str, Any]:
    """Run Agora as `settings` say (`AgoraRecipe`); returns the summary."""
    return AgoraRecipe(settings).run()


__all__ = ["AgoraRecipe", "AgoraSettings", "run_agora", "reference_labeller"]
