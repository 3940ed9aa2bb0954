"""The attention registry: mechanisms are chosen by name in `BortConfig.attention`.

Every mechanism is an `nn.Module` built as `cls(config, layer_idx)` and called as
`forward(q, k, v, key_padding_mask=None, need_weights=False) -> (output, probabilities or None)` on
tensors of shape (batch, heads, seq, head_dim); `key_padding_mask` is (batch, seq) bool with True for real
tokens. The projections around it (query/key/value/output) belong to the encoder layer, so a mechanism
never owns parameters that a checkpoint of another mechanism would lack, unless it is learned (DAM).

Parameters: a mechanism declares what `config.attention_params` may hold as a frozen dataclass derived from
`AttentionParams`, given to the registry beside the class: `@register_attention("name", params=Schema)`.
Each field is one parameter: its annotation is the type (`int`, `float`, `bool`, `str`, optionally
`| None`), its default the default, and `param(...)` adds a one-line help and the allowed values (choices,
bounds). `attention_params(name, config)` checks the given values against the schema in this one place (an
unknown name lists the valid ones, a bad value names the parameter, the value and what is allowed) and
returns the validated instance, which the mechanism reads; `AttentionParams.resolve` adds what depends on
the rest of the config (defaults taken from it, checks across parameters). A mechanism registered without a
schema takes no parameters and ignores `attention_params` (dense softmax).

Optional hooks, found by the model on any submodule (a mechanism or the encoder-level module it shares,
see `shared_state`), so that a trainer never needs to know a mechanism:
- `regularization() -> Tensor`: a term the trainer adds to the loss times its weight (DAM's mask penalty);
  `BortPreTrainedModel.attention_regularization()` sums them (None when no module has one);
- `statistics() -> dict[str, float]`: values logged with the training loss (DAM's "mask_density");
  `BortPreTrainedModel.attention_statistics()` merges them;
- `no_weight_decay() -> set[str]`: parameters, by name relative to the module, exempt from weight decay
  (DAM's mask logits are not weights); `train.optim.decay_param_groups` honours it.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from ..config import ConfigError
from .names import BUILTIN_ATTENTION, known_attention

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["AttentionParams", "attention_params", "attention_schema", "available_attention", "get_attention",
           "is_integer", "param", "register_attention"]

_REGISTRY: dict[str, type[nn.Module]] = {}
_SCHEMAS: dict[str, type["AttentionParams"] | None] = {}

M = TypeVar("M", bound="type[nn.Module]")
P = TypeVar("P", bound="AttentionParams")


def is_integer(value: Any) -> bool:
    """An int that is not a bool: JSON `true` is not the integer 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters (a hostile config can hold a megabyte-long string)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def param(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, minimum: float | None = None,
          maximum: float | None = None, above: float | None = None) -> Any:
    """A schema field: `default`, a one-line `help`, and the allowed values: `choices` (for strings), an
    inclusive `minimum`/`maximum` or an exclusive lower bound `above` (for numbers)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum,
                                                        "maximum": maximum, "above": above})


@dataclasses.dataclass(frozen=True)
class AttentionParams:
    """Base of a mechanism's parameter schema (see the module docstring); no parameters of its own.

    `refused` names parameters that are refused with a reason rather than as unknown names (a DAM search's
    penalty given to the fixed mask it exported).
    """

    refused: ClassVar[dict[str, str]] = {}

    def resolve(self: P, config: Any) -> P:
        """This instance completed from the rest of `config` (defaults that depend on it) and checked across
        parameters; raise ValueError (the registry names the mechanism). The base has nothing to add."""
        return self

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Parameter name → its one-line help (with the allowed values where declared)."""
        return {f.name: _field_help(f) for f in dataclasses.fields(cls)}


def _field_help(f: dataclasses.Field) -> str:
    choices = f.metadata.get("choices")
    text = f.metadata.get("help", "")
    return f"{text}; one of {', '.join(map(str, choices))}" if choices else text


def _kind(annotation: Any) -> tuple[type, bool]:
    """(base type, None allowed) of a field annotation such as `int` or `int | None`."""
    args = typing.get_args(annotation)
    if args:
        bases = [a for a in args if a is not type(None)]
        return bases[0], len(bases) < len(args)
    return annotation, False


def _expected(kind: type, meta: dict[str, Any]) -> str:
    """What a value of this field must be, in words ("a positive integer", "> 0", …)."""
    low, high, above = meta.get("minimum"), meta.get("maximum"), meta.get("above")
    if kind is bool:
        return "true or false"
    if kind is int:
        if high is not None:
            return f"an integer in {low if low is not None else '…'}..{high}"
        if low == 1:
            return "a positive integer"
        return f"an integer >= {low}" if low is not None else "an integer"
    if kind is float:
        bounds = [f"> {above:g}" if above is not None else None, f">= {low:g}" if low is not None else None,
                  f"<= {high:g}" if high is not None else None]
        return "a finite number" + "".join(f" {b}" for b in bounds if b)
    return f"a {kind.__name__}"


def _value_problem(kind: type, value: Any, meta: dict[str, Any]) -> str | None:
    """None when `value` fits the field, else what is wrong, in words."""
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if kind is str:
        choices = meta.get("choices")
        if not isinstance(value, str) or (choices and value not in choices):
            return (f"is not one of the valid values: {', '.join(choices)}" if choices else "must be a string")
        return None
    if kind is int:
        low, high = meta.get("minimum"), meta.get("maximum")
        ok = is_integer(value) and (low is None or value >= low) and (high is None or value <= high)
        return None if ok else f"must be {_expected(int, meta)}"
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not (math.isfinite(value) if isinstance(value, float) else abs(value) < 1 << 1000):
            return "must be a finite number"
        low, high, above = meta.get("minimum"), meta.get("maximum"), meta.get("above")
        for bound, fits, words in ((above, lambda b: value > b, "> {:g}"), (low, lambda b: value >= b, ">= {:g}"),
                                   (high, lambda b: value <= b, "<= {:g}")):
            if bound is not None and not fits(bound):
                return "must be " + words.format(bound)
        return None
    return None


def register_attention(name: str, params: type[AttentionParams] | None = None) -> Callable[[M], M]:
    """Class decorator adding a mechanism to the registry under `name`, with its parameter schema `params`
    (None: the mechanism takes no parameters)."""
    if params is not None and not (isinstance(params, type) and issubclass(params, AttentionParams)
                                   and dataclasses.is_dataclass(params)):
        raise TypeError(f"attention {name!r}: params must be an AttentionParams dataclass, got {params!r}")

    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attention mechanism {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        _SCHEMAS[name] = params
        return cls

    return decorate


def get_attention(name: str) -> type[nn.Module]:
    """The mechanism class registered under `name` (a built-in's module is imported on first use); an unknown
    name lists the known ones."""
    if name not in _REGISTRY and isinstance(name, str) and name in BUILTIN_ATTENTION:
        importlib.import_module(f"{__package__}.{BUILTIN_ATTENTION[name]}")
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attention mechanism {name!r}; known: {', '.join(available_attention())}") from None


def attention_schema(name: str) -> type[AttentionParams] | None:
    """The parameter schema registered with mechanism `name` (None: it takes no parameters)."""
    get_attention(name)  # an unknown name lists the known ones
    return _SCHEMAS[name]


def attention_params(name: str, config: Any) -> AttentionParams | None:
    """`config.attention_params` validated against mechanism `name`'s schema, defaults filled in.

    Raises `ConfigError` (a ValueError) prefixed "attention '<name>': " for a refused or unknown parameter
    (listing the valid ones), a value of the wrong type or out of range (naming the parameter, the value and
    what is allowed) or a problem across parameters (`AttentionParams.resolve`). None for a mechanism
    without a schema.
    """
    schema = attention_schema(name)
    if schema is None:
        return None
    given = getattr(config, "attention_params", None) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"attention {name!r}: attention_params must be an object of parameter names to values, "
                          f"got {type(given).__name__}")
    for key, reason in schema.refused.items():
        if key in given:
            raise ConfigError(f"attention {name!r}: {key}={_short(given[key])} has nothing to act on: {reason}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(given) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"attention {name!r}: unknown attention_params {', '.join(map(str, unknown))}; "
                          f"valid parameters: {', '.join(sorted(fields)) or '(none)'}")
    hints = typing.get_type_hints(schema)
    values = {}
    for key, value in given.items():
        f = fields[key]
        kind, nullable = _kind(hints[key])
        problem = None if value is None and nullable else _value_problem(kind, value, f.metadata)
        if problem:
            raise ConfigError(f"attention {name!r}: attention_params {key}={_short(value)} {problem}"
                              f"{' (or null)' if nullable and problem.startswith('must') else ''}; "
                              f"{key}: {f.metadata.get('help', '')}")
        values[key] = float(value) if kind is float and value is not None else value
    try:
        return schema(**values).resolve(config)
    except ConfigError as err:
        raise ConfigError(f"attention {name!r}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"attention {name!r}: {err}") from None


def available_attention() -> list[str]:
    """Every mechanism name, built-in (registered or not yet imported) or registered at run time."""
    return known_attention()


def registered_names() -> list[str]:
    """The names registered so far (`names.known_attention` adds them to the built-ins)."""
    return sorted(_REGISTRY)
