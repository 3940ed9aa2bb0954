"""The names of the built-in attention mechanisms and the module that registers each, without importing them.

`BortConfig.validate` checks `config.attention` against these, and `bort presets` prints a validated config,
so naming a mechanism must not cost importing torch (the mechanisms' modules do). The registry imports a
built-in's module the first time its class or schema is asked for; a test holds this table equal to what the
modules register.
"""
from __future__ import annotations

import sys

# name → module below bort.attention that registers it
BUILTIN_ATTENTION: dict[str, str] = {
    "dense": "dense",
    "dam_s": "dam", "dam_u": "dam",
    "fixed_mask": "fixed_mask",
    "strided": "masked", "fixed": "masked", "longformer": "masked", "logsparse": "masked", "bigbird": "masked",
    "star": "masked",
    "yoso": "yoso", "yoso_e": "yoso",
}


def known_attention() -> list[str]:
    """Every mechanism name: the built-ins and any registered at run time (only possible once the registry,
    and with it torch, is loaded, so looking there never imports it)."""
    registry = sys.modules.get(f"{__package__}.registry")
    registered = set(registry.registered_names()) if registry is not None else set()
    return sorted(set(BUILTIN_ATTENTION) | registered)
