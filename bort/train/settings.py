"""Recipe settings: one dataclass per recipe, every field's constraint declared beside it, validated one way.

A recipe's settings class is a dataclass deriving from `Settings`; a field with a constraint is declared with
`setting(default, check=..., coerce=...)`:

    @dataclass
    class MySettings(Settings):
        train: list[str] = setting(coerce=as_list)
        batch_size: int = setting(8, check=positive_int())
        precision: str = setting("fp32", check=one_of("fp32", "bf16", "fp16"))

Construction validates (`__post_init__` calls `validate()`): every field's check runs and all problems are
reported at once in one `SettingsError` (a `ValueError`), each naming the field, the value given and what is
allowed. A check is a function `value -> problem or None`; the factories below cover the common kinds, so the
"an int, not a bool, above 0" test is written once. Checks on several fields together go in `check_settings`
(override it and return problems). `coerce` normalises a value before the checks (e.g. one path → a list).

Why not pydantic: the settings are plain dataclasses the command-line flags map onto one to one and that
`dataclasses.asdict` writes into results and resume records; a validator that needs no second class hierarchy
keeps them that way.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

Check = Callable[[Any], "str | None"]

_MISSING = dataclasses.MISSING


class SettingsError(ValueError):
    """Settings a recipe cannot run with; the message lists every problem found."""


def setting(default: Any = _MISSING, *, default_factory: Any = _MISSING, check: Check | None = None,
            coerce: Callable[[Any], Any] | None = None, help: str = "") -> Any:
    """A dataclass field carrying its constraint (`check`), its normalisation (`coerce`) and a short help."""
    metadata = {"check": check, "coerce": coerce, "help": help}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def optional(check: Check) -> Check:
    """`check`, with None also allowed (a setting left to a preset or a default elsewhere)."""
    def run(value: Any) -> str | None:
        return None if value is None else check(value)
    return run


def positive_int(minimum: int = 1) -> Check:
    """An integer (not a bool) ≥ `minimum`."""
    def run(value: Any) -> str | None:
        if not _is_int(value) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            return f"must be {what}, got {value!r}"
        return None
    return run


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
    """A finite real number (not a bool) in the interval given; open ends exclude the bound."""
    def run(value: Any) -> str | None:
        ok = _is_real(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if ok:
            return None
        if low is not None and high is not None:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f"{'<' if high_open else '<='} {high:g}"
        else:
            where = "a finite number"
        return f"must be {where}, got {value!r}"
    return run


def one_of(*choices: Any) -> Check:
    """One of `choices` (the message lists them)."""
    def run(value: Any) -> str | None:
        if value in choices:
            return None
        return f"{value!r} is not one of {', '.join(str(c) for c in choices)}"
    return run


def boolean() -> Check:
    """True or False (not 0/1 or a string: a JSON or YAML typo should not flip a switch)."""
    def run(value: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    return run


def as_list(value: Any) -> Any:
    """One string → a one-element list (a single path or pattern where a list is expected)."""
    return [value] if isinstance(value, str) else value


class Settings:
    """Base of every recipe's settings dataclass: validates on construction (see the module docstring)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            coerce = f.metadata.get("coerce")
            if coerce is not None:
                # object.__setattr__: works for frozen settings classes too.
                object.__setattr__(self, f.name, coerce(getattr(self, f.name)))
        self.validate()

    def problems(self) -> list[str]:
        """Every problem of these settings, field by field, then the cross-field ones."""
        found = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is None:
                continue
            problem = check(getattr(self, f.name))
            if problem:
                found.append(f"{f.name} {problem}")
        return found + list(self.check_settings())

    def check_settings(self) -> Iterable[str]:
        """Problems involving several fields (override; none by default)."""
        return ()

    def validate(self) -> None:
        """Raise `SettingsError` listing every problem (the class name first, so a log line says whose)."""
        found = self.problems()
        if found:
            raise SettingsError(f"{type(self).__name__}: " + "; ".join(found))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (what results and resume records store)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> Any:
        """Build from a mapping (a JSON file's object); unknown names are refused, listing the known ones."""
        if not isinstance(values, dict):
            raise SettingsError(f"{source}: expected an object of setting names to values, got "
                                f"{type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**values)

    def help_of(self, name: str) -> str:
        """The declared one-line help of field `name` ('' when none)."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == name:
                return f.metadata.get("help", "")
        raise KeyError(name)
