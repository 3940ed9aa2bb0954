"""`LRAConfig`: an LRA classifier's config as the native checkpoint format stores it.

An LRA model directory is a native checkpoint (`bort.checkpoint.native`): `model.safetensors` and a
`config.json` holding the encoder's `BortConfig` fields, `"bort_format_version": 1`, `"task": "lra"` and the
classifier's own settings under the key `"lra"` (`LRA_KEY`):

    "lra": {"task": "listops",          the LRA task it was trained on (null: not recorded)
            "architecture": "single",   "single" (`LRAClassifier`) or "dual" (`LRADualClassifier`, Retrieval)
            "pooling": "mean",          `LRAClassifier`'s pooling ("mean" or "mean_padded")
            "ffn_dropout": 0.0,         the dropout between the FFN projections
            "vocab": ["<pad>", ...]}    the token of every id (null: not recorded)

so `bort.checkpoint.load_pretrained` and `bort convert` open it (as task "lra") like any other native
checkpoint. `pooling` and `ffn_dropout` are checked by the classifier that uses them (its messages name the
allowed values); this class checks the block's shape and the architecture it must build.

Runs from before this layout wrote `lra_config.json` instead (`LEGACY_CONFIG_NAME`, read by
`bort.lra.model.load_lra_model`): {"bort_lra_format_version": 1, "encoder": {BortConfig fields}, "task",
"pooling", "ffn_dropout", "architecture", "vocab"} beside the same `model.safetensors`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import BortConfig, ConfigError

__all__ = ["ARCHITECTURE_NAMES", "LEGACY_CONFIG_NAME", "LEGACY_FORMAT_KEY", "LRA_KEY", "LRA_TASK", "LRAConfig"]

LRA_TASK = "lra"  # the native config.json's "task" of an LRA model
LRA_KEY = "lra"  # the config.json key of the classifier's settings
ARCHITECTURE_NAMES = ("single", "dual")
SETTINGS = ("task", "architecture", "pooling", "ffn_dropout", "vocab")
LEGACY_CONFIG_NAME = "lra_config.json"
LEGACY_FORMAT_KEY = "bort_lra_format_version"


@dataclass
class LRAConfig(BortConfig):
    """The encoder's `BortConfig` plus the LRA classifier's settings (`lra`, keys `SETTINGS`, module doc)."""

    lra: dict[str, Any] = field(default_factory=lambda: {"architecture": "single"})

    def validate(self) -> None:
        super().validate()
        problems = _settings_problems(self.lra)
        if problems:
            raise ConfigError("invalid LRAConfig: " + "; ".join(problems))

    @property
    def encoder_config(self) -> BortConfig:
        """The encoder's fields alone, as a plain `BortConfig`."""
        values = self.to_dict()
        values.pop(LRA_KEY)
        return BortConfig(**values)

    @classmethod
    def from_encoder(cls, config: BortConfig, **settings: Any) -> "LRAConfig":
        """`config`'s encoder fields (an `LRAConfig`'s settings dropped) with `settings` as the `lra` block."""
        values = config.to_dict()
        values.pop(LRA_KEY, None)
        return cls(**values, lra=settings)


def _settings_problems(settings: object) -> list[str]:
    if not isinstance(settings, dict):
        return [f"{LRA_KEY} must be an object of {', '.join(SETTINGS)}, got {type(settings).__name__}"]
    problems = []
    unknown = sorted(str(k) for k in settings if k not in SETTINGS)
    if unknown:
        problems.append(f"{LRA_KEY}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    architecture = settings.get("architecture")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURE_NAMES:
        problems.append(f"{LRA_KEY}.architecture {architecture!r} is not one of {', '.join(ARCHITECTURE_NAMES)}")
    task = settings.get("task")
    if task is not None and not isinstance(task, str):
        problems.append(f"{LRA_KEY}.task must be a task name or null, got {task!r}")
    vocab = settings.get("vocab")
    if vocab is not None and not (isinstance(vocab, list) and all(isinstance(t, str) for t in vocab)):
        problems.append(f"{LRA_KEY}.vocab must be a list of token strings or null")
    return problems
