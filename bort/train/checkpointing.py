"""Training checkpoints: everything needed to continue bit for bit, written so a crash never damages one and
read so that a planted file cannot run code.

A checkpoint is a directory `step-NNNNNNN/` holding the model (e.g. native format: config.json +
model.safetensors) and `trainer.pt` (optimiser, schedule, loss-module parameters, RNG states, step and
counters). It is assembled under a temporary name and renamed into place, so a directory with the final
name is always complete; a kill mid-write leaves only a `.tmp-…` directory that is ignored and cleaned. A
write that fails (disk full…) raises `WriteError` naming the checkpoint, the file and the errno, and leaves no
partial checkpoint.

`trainer.pt` is untrusted input: checkpoints travel through buckets (`--push-to`) and shared disks. It is read
with `torch.load(weights_only=True)`, whose unpickler builds only tensors, numbers, strings and plain
containers and refuses every other Python object (where a pickle could run code); a file that needs anything
else is refused with a `CheckpointError` naming it.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..atomic import WriteError, os_error_in, raise_write_error
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


def save_torch_state(state: Mapping[str, Any], path: Path) -> None:
    """`torch.save` through a file object we opened, then fsync: given a path, torch writes through C++ streams
    and a full disk surfaces as `unexpected pos …` with the errno lost; through Python's file object the
    OSError survives in the exception's context, for `raise_write_error` to report."""
    with open(path, "wb") as handle:
        torch.save(dict(state), handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_checkpoint(root: str | os.PathLike, step: int, write_model: Callable[[Path], Any],
                     trainer_state: Mapping[str, Any], keep: int = 3) -> Path:
    """Write checkpoint `step` atomically: `write_model(directory)` writes the model files, then the trainer
    state goes to `trainer.pt`; the directory is renamed into place, and only the newest `keep` are kept
    (0: all). A failed write raises `WriteError` (the partial checkpoint removed, earlier ones intact)."""
    root = Path(root)
    final = root / f"step-{step:07d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:07d}-", dir=root))
    except OSError as exc:
        raise_write_error(exc, root, f"creating checkpoint {final.name}")
        raise
    current = final
    try:
        write_model(tmp)
        current = final / TRAINER_STATE
        save_torch_state(trainer_state, tmp / TRAINER_STATE)
        current = final
        if final.exists():  # the same step saved again (e.g. a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        found = os_error_in(exc)
        if found is not None:
            failed = exc.filename if isinstance(exc, WriteError) and exc.filename else current
            failed = str(failed).replace(str(tmp), str(final))  # where the file was going, not the temporary
            raise WriteError(found[0], found[1], failed, f"writing checkpoint {final.name}",
                             "the partial checkpoint was removed; earlier checkpoints are intact") from exc
        raise
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a run that was killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    keep: int = 3) -> Path:
    """Write checkpoint `step` of a Bort model (native format) atomically; keep the newest `keep`."""
    return write_checkpoint(root, step, lambda directory: save_pretrained(model, directory), trainer_state, keep)


def load_trainer_state(checkpoint: Path, required: Mapping[str, type | tuple[type, ...]] | None = None
                       ) -> dict[str, Any]:
    """The trainer state of `checkpoint`, loaded without running code (see the module's docstring).

    `required` maps the keys the caller needs to their types; a missing key or a value of another type is
    a `CheckpointError` naming the file and the key, as is any file that is not a weights-only dict."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {checkpoint} is not a complete training checkpoint") from None
    except Exception as err:  # a damaged zip/pickle raises many types; a refused object UnpicklingError
        reason = _unpickler_reason(str(err))
        if "GLOBAL" in str(err):  # the file asks for a Python object (class or function): what runs code
            raise CheckpointError(f"{path}: refused: the file holds Python objects other than tensors, numbers, "
                                  f"strings and plain containers ({reason}); a training state never does, so it "
                                  "was altered or not written by bort; it was not loaded") from None
        raise CheckpointError(f"{path}: cannot read training state ({type(err).__name__}"
                              f"{': ' + reason if reason else ''}); the file is damaged or not a bort "
                              "training state") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of training state, got {type(state).__name__}")
    for key, kind in (required or {}).items():
        if key not in state:
            raise CheckpointError(f"{path}: training state has no {key!r} (keys: {', '.join(map(str, state))})")
        if not isinstance(state[key], kind) or (isinstance(state[key], bool) and kind in (int, float)):
            names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"{path}: training state {key!r} should be {names}, got "
                                  f"{type(state[key]).__name__}")
    return state


_TORCH_BOILERPLATE = ("weights only load failed", "please file an issue", "check the documentation")


def _unpickler_reason(text: str) -> str:
    """The line of a `torch.load` error that says what was wrong, without torch's advice around it (which
    suggests `weights_only=False`, the very thing not to do with an untrusted file)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.lower().startswith(_TORCH_BOILERPLATE)]
    reason = (useful or lines or [""])[0]
    return reason.removeprefix("WeightsUnpickler error:").strip() or (useful[1] if len(useful) > 1 else "")
