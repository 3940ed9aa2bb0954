"""The search space: candidate ⟨D, A, H, I⟩ = ⟨layers, heads, hidden, intermediate⟩ below a maximum point.

A space is declared in JSON (see `docs/search.md`):

    {"max_point": "bert-large",                       # preset, JSON path, inline dict; default: the teacher's config
     "base": "bort_4_8_768_1024",                     # other fields of each student (default: the maximum point)
     "axes": {"layers": [2, 4], "heads": {"min": 4, "max": 16, "step": 4}, "hidden": [256, 512],
              "intermediate": [512, 1024]},           # any axis left out gets the default grid below the maximum
     "epsilon": 0.5, ...}

Candidates above the maximum point or with a hidden size not divisible by the head count are skipped and
counted, never silently dropped.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from ..config import BortConfig, ConfigError
from ..jsonfile import read_json

AXES = ("layers", "heads", "hidden", "intermediate")
# axis → the BortConfig field it sets
AXIS_FIELDS = {"layers": "num_hidden_layers", "heads": "num_attention_heads", "hidden": "hidden_size",
               "intermediate": "intermediate_size"}
# Fractions of the maximum point used for axes the space leaves out (our grid; see docs/search.md).
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, order=True)
class Candidate:
    """One point ⟨D, A, H, I⟩ of the space."""

    layers: int
    heads: int
    hidden: int
    intermediate: int

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. `D4_A8_H768_I1024`."""
        return f"D{self.layers}_A{self.heads}_H{self.hidden}_I{self.intermediate}"

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.layers, self.heads, self.hidden, self.intermediate)

    def dominated_by(self, other: "Candidate") -> bool:
        """True when `other` is at least as large on every axis (the capacity order of the FPTAS)."""
        return all(a <= b for a, b in zip(self.as_tuple(), other.as_tuple()))

    def config(self, base: BortConfig) -> BortConfig:
        """`base` with this candidate's four sizes."""
        return dataclasses.replace(base, **{AXIS_FIELDS[a]: v for a, v in zip(AXES, self.as_tuple())})

    @classmethod
    def from_config(cls, cfg: BortConfig) -> "Candidate":
        return cls(*(getattr(cfg, AXIS_FIELDS[a]) for a in AXES))


@dataclass
class Enumeration:
    """Feasible candidates plus what was skipped and why."""

    candidates: list[Candidate]
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass
class SearchSpace:
    """Axes (sorted value lists) below a maximum point, and the base config of the students."""

    axes: dict[str, list[int]]
    max_point: BortConfig
    base: BortConfig
    options: dict[str, Any] = field(default_factory=dict)  # the file's other fields (epsilon, speed, distill…)
    source: str = "space"
    head_sizes: list[int] | None = None  # when given, only candidates whose hidden / heads is one of these

    @property
    def max_candidate(self) -> Candidate:
        return Candidate.from_config(self.max_point)

    def enumerate(self) -> Enumeration:
        """Every combination of axis values, skipping (and counting) the infeasible ones."""
        top = self.max_candidate
        result = Enumeration([])
        for values in itertools.product(*(self.axes[a] for a in AXES)):
            cand = Candidate(*values)
            reasons = [f"{a} above the maximum point" for a, v, m in zip(AXES, values, top.as_tuple()) if v > m]
            if cand.hidden % cand.heads:
                reasons.append("hidden not divisible by heads")
            elif self.head_sizes is not None and cand.hidden // cand.heads not in self.head_sizes:
                reasons.append(f"head size not in {self.head_sizes}")
            if reasons:
                for reason in reasons[:1]:  # count each candidate once, under its first reason
                    result.skipped[reason] = result.skipped.get(reason, 0) + 1
                    examples = result.skipped_examples.setdefault(reason, [])
                    if len(examples) < 3:
                        examples.append(cand.key)
                continue
            result.candidates.append(cand)
        return result


def default_axis(axis: str, maximum: int) -> list[int]:
    """Our default grid for an axis: fractions 1/4, 1/2, 3/4, 1 of the maximum, rounded (hidden and intermediate
    to multiples of 64 when the maximum allows, so head sizes stay whole for the usual head counts)."""
    unit = 64 if axis in ("hidden", "intermediate") and maximum >= 256 else 1
    values = {max(unit, int(round(maximum * f / unit)) * unit) for f in DEFAULT_FRACTIONS}
    return sorted(v for v in values if v <= maximum)


def _parse_axis(value: Any, axis: str, source: str, name: str | None = None) -> list[int]:
    where = f"{source}: field '{name or 'axes.' + axis}'"
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"min", "max", "step"})
        if unknown or not {"min", "max"} <= set(value):
            raise SearchSpaceError(f"{where}: a range needs 'min' and 'max' (optional 'step'), got keys {sorted(value)}")
        lo, hi, step = value["min"], value["max"], value.get("step", 1)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (lo, hi, step)) or lo > hi:
            raise SearchSpaceError(f"{where}: min, max, step must be positive integers with min <= max, got {value}")
        return list(range(lo, hi + 1, step))
    if isinstance(value, list) and value:
        if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value):
            raise SearchSpaceError(f"{where}: values must be positive integers, got {value}")
        return sorted(set(value))
    raise SearchSpaceError(f"{where}: expected a non-empty list of integers or {{'min', 'max', 'step'}}, "
                           f"got {value!r}")


# Option fields a space file may hold besides the axes (runner settings; the CLI overrides them).
OPTION_FIELDS = ("epsilon", "interval_steps", "intervals", "error_metric", "speed", "distill", "weights", "seed",
                 "eval_batches")
TOP_FIELDS = ("max_point", "base", "axes", "head_size", "description") + OPTION_FIELDS


def _resolve_config(spec: Any, name: str, source: str) -> BortConfig:
    try:
        return BortConfig.resolve(spec)
    except (ConfigError, TypeError) as err:
        raise SearchSpaceError(f"{source}: field '{name}': {err}") from None


def parse_space(values: Any, source: str = "space", teacher_config: BortConfig | None = None) -> SearchSpace:
    """Validate a decoded space; every error names `source` and the offending field."""
    if not isinstance(values, dict):
        raise SearchSpaceError(f"{source}: expected a JSON object, got {type(values).__name__}")
    unknown = sorted(set(values) - set(TOP_FIELDS))
    if unknown:
        raise SearchSpaceError(f"{source}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(TOP_FIELDS)}")
    if "max_point" in values:
        max_point = _resolve_config(values["max_point"], "max_point", source)
    elif teacher_config is not None:
        max_point = teacher_config
    else:
        raise SearchSpaceError(f"{source}: field 'max_point' is missing and no teacher config was given to default to")
    base = _resolve_config(values["base"], "base", source) if "base" in values else max_point
    axes_in = values.get("axes", {})
    if not isinstance(axes_in, dict):
        raise SearchSpaceError(f"{source}: field 'axes' must be an object with keys {', '.join(AXES)}")
    unknown_axes = sorted(set(axes_in) - set(AXES))
    if unknown_axes:
        raise SearchSpaceError(f"{source}: field 'axes' has unknown key(s) {', '.join(unknown_axes)}; "
                               f"valid: {', '.join(AXES)}")
    top = Candidate.from_config(max_point)
    axes = {a: (_parse_axis(axes_in[a], a, source) if a in axes_in else default_axis(a, m))
            for a, m in zip(AXES, top.as_tuple())}
    head_sizes = None
    if "head_size" in values:  # e.g. the teacher's, so that `--student-init extract` can keep whole heads
        spec = values["head_size"]
        head_sizes = _parse_axis([spec] if isinstance(spec, int) and not isinstance(spec, bool) else spec,
                                 "head_size", source, name="head_size")
    options = {k: values[k] for k in OPTION_FIELDS if k in values}
    _check_options(options, source)
    return SearchSpace(axes=axes, max_point=max_point, base=base, options=options, source=source,
                       head_sizes=head_sizes)


def _check_options(options: dict[str, Any], source: str) -> None:
    eps = options.get("epsilon")
    if eps is not None and (not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1):
        raise SearchSpaceError(f"{source}: field 'epsilon' must be a number in (0, 1), got {eps!r}")
    for name in ("interval_steps", "intervals", "eval_batches", "seed"):
        v = options.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "seed" else 1)):
            raise SearchSpaceError(f"{source}: field '{name}' must be a positive integer, got {v!r}")
    for name in ("speed", "distill", "weights"):
        v = options.get(name)
        if v is not None and not isinstance(v, dict):
            raise SearchSpaceError(f"{source}: field '{name}' must be an object, got {type(v).__name__}")


def load_space(path: str | os.PathLike, teacher_config: BortConfig | None = None) -> SearchSpace:
    """Read a space JSON file (errors name the file, and the field or the JSON position)."""
    values = read_json(path, SearchSpaceError, "search space file")
    return parse_space(values, source=str(path), teacher_config=teacher_config)
