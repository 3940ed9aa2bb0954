"""Model kinds beyond `bort.model.TASK_MODELS` that the native format saves and `load_pretrained` opens.

A kind is a task name in config.json ("task": "lra") whose model is defined outside `bort.model` and whose
config is a `BortConfig` subclass carrying the model's own settings (e.g. `bort.lra.config.LRAConfig`). The
packages that define kinds import `bort.checkpoint` themselves (errors, the safetensors reader), so `KINDS`
names each by import path and the package is imported only when a checkpoint of its kind is read or written:
importing it here at load time would be a cycle.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..config import BortConfig

__all__ = ["KINDS", "ModelKind", "get_kind", "kind_of_config", "kind_of_model", "legacy_kind"]


@dataclass(frozen=True)
class ModelKind:
    """How the checkpoint code handles one kind of model.

    `config_class`: its config (a `BortConfig` subclass, what config.json is read into); `build(config)`: a
    fresh model of that config; `model_config(model)`: the config to save for `model`, or None when `model` is
    not of this kind; `read_legacy(directory)`: (config, state dict) of a directory in an older layout of this
    kind (the marker file of `LEGACY_FILES` names it), for kinds that had one."""

    task: str
    config_class: type[BortConfig]
    build: Callable[[BortConfig], nn.Module]
    model_config: Callable[[nn.Module], BortConfig | None]
    read_legacy: Callable[[Path], tuple[BortConfig, dict[str, torch.Tensor]]] | None = None


# task → "module:attribute" of its `ModelKind`; the legacy marker files let a directory in an older layout be
# recognised without importing the kind's package.
KINDS: dict[str, str] = {"lra": "bort.lra.model:LRA_KIND"}
LEGACY_FILES: dict[str, str] = {"lra_config.json": "lra"}


def get_kind(task: Any) -> ModelKind | None:
    """The kind called `task`, or None (a `TASK_MODELS` task, or not a task at all)."""
    target = KINDS.get(task) if isinstance(task, str) else None
    if target is None:
        return None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def kind_of_config(config: BortConfig) -> ModelKind | None:
    """The kind whose config class `config` is, or None for a plain `BortConfig`."""
    if type(config) is BortConfig:  # the common case: no kind's package imported
        return None
    return next((kind for kind in map(get_kind, KINDS) if isinstance(config, kind.config_class)), None)


def kind_of_model(model: nn.Module) -> tuple[ModelKind, BortConfig] | None:
    """(its kind, the config to save) for a model of a kind, else None."""
    for task in KINDS:
        kind = get_kind(task)
        config = kind.model_config(model)
        if config is not None:
            return kind, config
    return None


def legacy_kind(directory: Path) -> ModelKind | None:
    """The kind whose older layout `directory` holds (by its marker file), or None."""
    for name, task in LEGACY_FILES.items():
        if (directory / name).is_file():
            return get_kind(task)
    return None
