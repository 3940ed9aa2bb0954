"""Attention mechanisms behind one interface, selected by name (see `registry`).

Importing this package imports no mechanism (and so no torch): `names` lists the built-ins, and the registry
imports a mechanism's module the first time it is asked for (`get_attention`), so that validating a config
stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["available_attention", "get_attention", "register_attention"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
