"""Training checkpoints: everything needed to continue bit for bit, written so a crash never damages one.

A checkpoint is a directory `step-NNNNNNN/` holding the model (native format: config.json +
model.safetensors) and `trainer.pt` (optimiser, schedule, loss-module parameters, RNG states, step and
counters). It is assembled under a temporary name and renamed into place, so a directory with the final
name is always complete; a kill mid-write leaves only a `.tmp-…` directory that is ignored and cleaned.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_pretrained
from ..checkpoint.errors import CheckpointError

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d{7,})$")
TRAINER_STATE = "trainer.pt"


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    keep: int = 3) -> Path:
    """Write checkpoint `step` atomically (temporary directory, then rename); keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:07d}-", dir=root))
    try:
        save_pretrained(model, tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        with open(tmp / TRAINER_STATE, "rb") as handle:
            os.fsync(handle.fileno())
        if final.exists():  # the same step saved again (e.g. a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a run that was killed while writing
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {checkpoint} is not a complete training checkpoint") from None
    except Exception as err:  # a damaged zip/pickle raises many types
        raise CheckpointError(f"{path}: cannot read training state ({type(err).__name__}: {err})") from None
