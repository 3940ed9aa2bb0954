"""Load and save checkpoints from three worlds: ours (safetensors), Hugging Face, and Gluon `.params`.

`load_pretrained(path, config=None, task=None)` looks at `path` and picks the reader:
a directory with our `config.json` (native; an LRA model's too, see `kinds.py`), a directory in an older
layout of a model kind (an LRA run's `lra_config.json`), a directory with an HF `config.json` and weights, or a
Gluon `.params` file (whose config comes from `config`: a preset name, a JSON path, a dict or a `BortConfig`;
without one, sizes are inferred from the shapes and the rest comes from the default Bort preset).
An `s3://bucket/key-or-prefix` is first fetched (verified) into the cache directory (`BORT_CACHE`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..config import BortConfig, ConfigError
from .errors import CheckpointError
from .hf import export_hf, hf_task, load_hf_dir
from .native import (FORMAT_KEY, WEIGHTS_NAME, is_native_dir, native_config_from_values, read_json_config,
                     read_safetensors, save_native)
from .kinds import KINDS, ModelKind, get_kind, kind_of_config, legacy_kind
from .state import load_state_exact, load_state_into

logger = logging.getLogger(__name__)

ConfigSpec = BortConfig | str | os.PathLike | dict[str, Any] | None

__all__ = ["CheckpointError", "checkpoint_task", "load_pretrained", "model_for_task", "read_checkpoint",
           "save_pretrained"]


def read_checkpoint(path: str | os.PathLike, config: ConfigSpec = None
                    ) -> tuple[BortConfig, dict[str, torch.Tensor], str | None]:
    """Read any supported checkpoint: (config, canonical state dict, task it was saved as or None)."""
    path = _localise(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file() and path.name == WEIGHTS_NAME and is_native_dir(path.parent):
        path = path.parent
    if path.is_dir():
        values = read_json_config(path / "config.json") if (path / "config.json").is_file() else None
        if values is not None and FORMAT_KEY in values:
            base, saved_task = native_config_from_values(values, path / "config.json")
            state = read_safetensors(path / WEIGHTS_NAME)
        elif values is not None and "model_type" in values:
            base, state = load_hf_dir(path, values)
            saved_task = hf_task(values)
        elif values is not None:
            raise CheckpointError(f"{path / 'config.json'}: neither a bort config (no {FORMAT_KEY!r}) nor a "
                                  "Hugging Face config (no 'model_type')")
        elif (kind := legacy_kind(path)) is not None:  # e.g. an LRA run's lra_config.json
            base, state = kind.read_legacy(path)
            saved_task = kind.task
        else:
            raise CheckpointError(
                f"{path}: not a checkpoint directory; expected config.json with model.safetensors (bort or "
                f"Hugging Face) or pytorch_model.bin (Hugging Face); found: "
                f"{', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}")
        return _apply_config(base, config, str(path)), state, saved_task
    if path.suffix == ".params":
        from .gluon import (GLUONNLP_083_DECODER_LAYER_NORM_EPS, gluon_to_bort_state_dict, infer_gluon_config,
                            read_params)

        params = read_params(path)
        inferred = infer_gluon_config(params)
        if config is None or (isinstance(config, dict) and "preset" not in config):
            try:
                cfg = BortConfig.preset("bort_4_8_768_1024", **inferred)
            except ConfigError as err:  # shapes no Bort model has (a damaged file, or another model's)
                raise CheckpointError(f"{path}: the array shapes imply an impossible config "
                                      f"({', '.join(f'{k}={v}' for k, v in inferred.items())}): {err}") from None
            # A dict of fields overrides the sizes read off the shapes, as it overrides a directory's stored
            # config (e.g. {"num_labels": 3} from the fine-tuning recipe, or the head count shapes cannot tell).
            cfg = _apply_config(cfg, config, str(path))
        else:
            cfg = _resolve(config, str(path))
        saved_task = None
        if "num_labels" in inferred:  # a fine-tuned BortClassifier: its last layer's rows are the labels
            # The original trains a regression (STS-B) as its only one-output task.
            saved_task = "regression" if inferred["num_labels"] == 1 else "classification"
            cfg = _replace(cfg, str(path), num_labels=inferred["num_labels"],
                           problem_type="regression" if saved_task == "regression" else None)
        if cfg.decoder_layer_norm_eps is None:  # the released bort.params is GluonNLP 0.8.3's (docs/gluon.md)
            cfg = _replace(cfg, str(path), decoder_layer_norm_eps=GLUONNLP_083_DECODER_LAYER_NORM_EPS)
        return cfg, gluon_to_bort_state_dict(params, cfg.num_hidden_layers, str(path)), saved_task
    raise CheckpointError(f"{path}: unrecognised checkpoint; expected a directory (bort or Hugging Face) "
                          "or a Gluon .params file")


def _localise(path: str | os.PathLike) -> Path:
    """`path` itself, or for an `s3://` URL its verified copy in the cache (fetched or reused)."""
    if isinstance(path, str) and path.startswith("s3://"):
        from ..storage import StorageError, cached_path

        try:
            return cached_path(path)
        except StorageError as err:  # one error type for every checkpoint problem (the CLI reports it)
            raise CheckpointError(str(err)) from err
    return Path(path)


def checkpoint_task(state: dict[str, torch.Tensor]) -> str | None:
    """The head a canonical state dict carries: "mlm", "classification" or None (encoder only)."""
    if any(k.startswith("lm_head.") for k in state):
        return "mlm"
    if any(k.startswith("classifier.") for k in state):
        return "classification"
    return None


def load_pretrained(path: str | os.PathLike, config: ConfigSpec = None, task: str | None = None,
                    strict_heads: bool = False) -> torch.nn.Module:
    """Build the model for `task` (None: `BortModel`; "mlm", "classification", "regression",
    "multiple_choice"; "lra": an LRA classifier) and load the checkpoint at `path` into it.

    A checkpoint of a model kind (`kinds.KINDS`: an LRA run's best/ or checkpoints/step-N, in either of its
    layouts) opens as its own model with `task` None, since it has no bare-encoder form.

    For a directory checkpoint, a dict `config` overrides fields of the stored config (e.g.
    `{"num_labels": 3}` or `{"attention": ...}`); any other `config` replaces it. Shapes are checked
    and every mismatch is reported; a head the checkpoint lacks is initialised fresh (logged), unless
    `strict_heads`.
    """
    _check_task(task)  # before reading: a typo should not cost a 300 MB read
    cfg, state, _ = read_checkpoint(path, config)
    return model_for_task(cfg, state, task, _weights_source(path), strict_heads=strict_heads)


def _weights_source(path: str | os.PathLike) -> str:
    """How errors about the tensors of `path` name it: the weights file of a directory checkpoint (a missing or
    misshapen parameter is a fault of that file, not of the config beside it), else `path` itself."""
    if isinstance(path, str) and path.startswith("s3://"):
        return path
    weights = Path(path) / WEIGHTS_NAME
    return str(weights) if weights.is_file() else str(path)


def model_for_task(cfg: BortConfig, state: dict[str, torch.Tensor], task: str | None, source: str,
                   strict_heads: bool = False) -> torch.nn.Module:
    """Build the model for `task` from a config and load an already-read (canonical) state into it — for
    callers that looked at the checkpoint first (e.g. to see which head it has) and should not read it twice."""
    from ..model import TASK_MODELS

    _check_task(task)
    kind = kind_of_config(cfg)
    if kind is not None or get_kind(task) is not None:
        return _kind_model(cfg, state, task, kind, source)
    if task == "regression" and cfg.num_labels != 1:
        cfg = dataclasses.replace(cfg, num_labels=1, problem_type="regression")
    try:
        model = TASK_MODELS[task](cfg)
    except ValueError as err:  # a config field the mechanism refuses (e.g. attention_params) names the source
        raise CheckpointError(f"{source}: cannot build the model from its config: {err}") from None
    load_state_into(model, state, source, strict_heads=strict_heads)
    return model.eval()


def _kind_model(cfg: BortConfig, state: dict[str, torch.Tensor], task: str | None, kind: ModelKind | None,
                source: str) -> torch.nn.Module:
    """The model of a kind (`kinds.py`) built from its config and loaded whole."""
    if kind is None:  # the task names a kind, the config is a plain BortConfig: the settings are not there
        raise CheckpointError(f"{source}: task {task!r} needs a {task} checkpoint (config.json with task "
                              f"{task!r}); this one is a plain bort model")
    if task not in (None, kind.task):
        raise CheckpointError(f"{source}: a {kind.task} checkpoint opens only as task {kind.task!r} (or None), "
                              f"not {task!r}")
    try:
        model = kind.build(cfg)
    except ValueError as err:  # a setting the model refuses (e.g. a pooling) names the source
        raise CheckpointError(f"{source}: cannot build the model from its config: {err}") from None
    load_state_exact(model, state, source)
    return model.eval()


def _check_task(task: str | None) -> None:
    from ..model import TASK_MODELS

    if task not in TASK_MODELS and task not in KINDS:
        raise ValueError(f"unknown task {task!r}; expected one of "
                         f"{', '.join([str(t) for t in TASK_MODELS] + list(KINDS))}")


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike, format: str = "native") -> Path:
    """Save `model` to `directory` as "native" (config.json + model.safetensors) or "hf" (loadable by
    `transformers`), or, with "gluon", to the file `directory` (a name ending in `.params`) in the original
    Bort's names, loadable by its MXNet code (see `bort.checkpoint.gluon_export`). Every file is written to a
    temporary name and renamed."""
    if format == "native":
        return save_native(model, directory)
    if format == "hf":
        return export_hf(model, directory)
    if format == "gluon":
        from .gluon_export import export_gluon

        return export_gluon(model, directory)
    raise ValueError(f"unknown checkpoint format {format!r}; expected 'native', 'hf' or 'gluon'")


def _resolve(spec: ConfigSpec, source: str) -> BortConfig:
    try:
        return BortConfig.resolve(spec)
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None


def _replace(cfg: BortConfig, source: str, **fields: Any) -> BortConfig:
    try:
        return dataclasses.replace(cfg, **fields)
    except ConfigError as err:  # e.g. a head too large for the config's limits
        raise CheckpointError(f"{source}: {err}") from None


def _apply_config(base: BortConfig, spec: ConfigSpec, source: str) -> BortConfig:
    if spec is None:
        return base
    if isinstance(spec, dict) and "preset" not in spec:
        try:
            return dataclasses.replace(base, **spec)
        except TypeError as err:
            raise CheckpointError(f"{source}: bad config override: {err}") from None
        except ConfigError as err:
            raise CheckpointError(f"{source}: {err}") from None
    return _resolve(spec, source)
