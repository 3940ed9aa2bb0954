"""bort: an efficient-BERT suite — Bort distillation, sparse/learned/linear attention, on PyTorch.

The public names are imported lazily, so that light entry points (data creation workers, tokenizers)
do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BortConfig": "config", "ConfigError": "config",
    "BortModel": "model", "BortForMaskedLM": "model", "BortForSequenceClassification": "model",
    "BortForMultipleChoice": "model", "EncoderOutput": "model", "HeadOutput": "model",
    "CheckpointError": "checkpoint", "load_pretrained": "checkpoint", "save_pretrained": "checkpoint",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bort' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
