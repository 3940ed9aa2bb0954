"""Model configuration: one dataclass for Bort, BERT and RoBERTa encoders, with named presets.

Field names follow Hugging Face's `BertConfig` so that users can type what they already know and so that
configs convert to and from HF `config.json` files without a translation table for the common fields.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonfile import parse_json, read_json

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "silu")
EMBEDDING_STYLES = ("bert", "gluon")
LAYER_NORM_POSITIONS = ("post", "pre")


class ConfigError(ValueError):
    """A configuration that cannot describe a model (wrong sizes, unknown names)."""


# Plausible ranges of the integer fields, inclusive. The upper bounds are generous (far above any released
# encoder: BERT-large has 24 layers of width 1024, XLM-R a 250k vocabulary, LRA inputs reach 16k tokens); they
# exist to refuse a typo or a hostile file before its sizes reach the allocator.
INT_RANGES: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 1 << 24),
    "hidden_size": (1, 1 << 16),
    "num_hidden_layers": (1, 256),
    "num_attention_heads": (1, 1 << 16),
    "intermediate_size": (1, 1 << 18),
    "max_position_embeddings": (1, 1 << 20),
    "type_vocab_size": (0, 1 << 16),
    "num_labels": (1, 1 << 20),
}
# Number fields: (low, high, low included, high included).
FLOAT_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "hidden_dropout_prob": (0.0, 1.0, True, False),
    "attention_probs_dropout_prob": (0.0, 1.0, True, False),
    "layer_norm_eps": (0.0, 1.0, False, True),
    "initializer_range": (0.0, 1.0, True, True),
}
# The whole model (estimated_parameters) must stay below this: 2^33 ≈ 8.6e9 parameters, 34 GB in float32,
# about 25 times BERT-large. Each size can be plausible while their product is not (1000 layers of width 8192).
MAX_PARAMETERS = 1 << 33
# attention_params are small JSON objects; deeper nesting is garbage (and would overflow the stack on copy).
MAX_PARAMS_DEPTH = 8


def _short(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: a hostile file can hold a megabyte-long string."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _int_problem(name: str, value: Any, low: int, high: int | None) -> str | None:
    """None when `value` is an integer in low..high (no upper bound when `high` is None), else the message."""
    if _is_int(value) and value >= low and (high is None or value <= high):
        return None
    if high is None:
        expected = "a positive integer" if low == 1 else f"an integer >= {low}"
    else:
        expected = f"a positive integer no larger than {high}" if low == 1 else f"an integer in {low}..{high}"
    got = _short(value) if _is_int(value) else f"{_short(value)} ({type(value).__name__})"
    return f"{name} must be {expected}, got {got}"


def _float_problem(name: str, value: Any, low: float, high: float, low_in: bool, high_in: bool) -> str | None:
    """None when `value` is a finite number in the interval, else the message (NaN and inf are refused)."""
    interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{name} must be a number in {interval}, got {_short(value)} ({type(value).__name__})"
    # An int beyond float range (10**400 from a hostile file) is out of range, not an OverflowError.
    finite = math.isfinite(value) if isinstance(value, float) else abs(value) < 1 << 1000
    if not (finite and (low <= value if low_in else low < value) and (value <= high if high_in else value < high)):
        return f"{name} must be in {interval}, got {_short(value)}"
    return None


def _json_like_problem(value: Any, where: str, depth: int) -> str | None:
    """None when `value` is made of JSON values (objects with string keys, arrays, strings, numbers, booleans,
    null) nested at most MAX_PARAMS_DEPTH deep, else the message naming where the first problem lies."""
    if depth > MAX_PARAMS_DEPTH:
        return f"{where} is nested more than {MAX_PARAMS_DEPTH} levels deep"
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, dict):
        bad_keys = [k for k in value if not isinstance(k, str)]
        if bad_keys:
            return f"{where} has a key {_short(bad_keys[0])} that is not a string"
        items = value.items()
    else:
        return f"{where} holds {_short(value)} ({type(value).__name__}), which is not a JSON value"
    for key, item in items:
        problem = _json_like_problem(item, f"{where}[{key!r}]", depth + 1)
        if problem:
            return problem
    return None


@dataclass
class BortConfig:
    """Hyper-parameters of an encoder and its heads.

    `embedding_style` picks the embedding graph: "bert" is LayerNorm(word + position + type) → dropout
    (Hugging Face BERT/RoBERTa); "gluon" is word → dropout → + position → dropout → LayerNorm (GluonNLP's
    Bort). Both are equal in eval mode; they differ only in where dropout is applied during training.
    `position_offset` is added to position ids (RoBERTa uses `pad_token_id + 1` = 2; BERT and Bort use 0).
    `type_vocab_size` 0 means no token-type embedding (Bort).
    `layer_norm_position` "post" (BERT, Bort: LayerNorm after each residual sum) or "pre" (LayerNorm on each
    block's input, residual stream left unnormalised, one final LayerNorm after the last layer: the LRA
    models).
    `decoder_layer_norm_eps` is the epsilon of the MLM decoder's LayerNorm (`lm_head.layer_norm`); None means
    `layer_norm_eps` (HF BERT, GluonNLP 0.10.0). GluonNLP 0.8.3, which trained the released `bort.params`, used
    1e-12 there while its encoder used 1e-5, so a Gluon `.params` file is read with 1e-12 unless its config says
    otherwise (docs/gluon.md).

    Every field is validated on construction (and so by `from_dict`, `load` and `dataclasses.replace`),
    before any model is allocated, by type (`true` is not an integer) and against a plausible range:
    vocab_size 1..2^24, hidden_size 1..65536 (a multiple of num_attention_heads), num_hidden_layers 1..256,
    intermediate_size 1..2^18, max_position_embeddings 1..2^20, type_vocab_size 0..65536, num_labels 1..2^20,
    pad_token_id a token of the vocabulary, position_offset below max_position_embeddings; dropouts in [0, 1),
    layer_norm_eps in (0, 1], initializer_range in [0, 1] (finite numbers); the names from their lists;
    `attention` a registered mechanism and `attention_params` a JSON object at most 8 levels deep. On top,
    `estimated_parameters` (encoder and every head) must not exceed `MAX_PARAMETERS` (2^33).
    """

    vocab_size: int = 50265
    hidden_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 768
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-5
    decoder_layer_norm_eps: float | None = None  # None: layer_norm_eps
    initializer_range: float = 0.02
    pad_token_id: int = 1
    # ours
    position_offset: int = 0
    embedding_style: str = "gluon"
    layer_norm_position: str = "post"
    add_pooler: bool = False
    attention: str = "dense"
    attention_params: dict[str, Any] = field(default_factory=dict)
    num_labels: int = 2
    problem_type: str | None = None  # "regression" or "single_label_classification"; None = infer
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise `ConfigError` naming every field that cannot work, its value and what was expected.

        Every field is checked by type (`bool` is not an integer; an integer is a number) and against a
        plausible range before anything is allocated, so that a hostile or mistyped config.json
        (`vocab_size: 1e12`, `num_hidden_layers: 1e6`, `num_labels: "3"`) is refused with its field named
        instead of failing in the allocator. The upper bounds (`INT_RANGES`) are far above any real encoder;
        on top of them the whole model (encoder, pooler and every head, `estimated_parameters`) must stay
        within `MAX_PARAMETERS`, which refuses e.g. 256 layers of width 8192 as well.
        """
        problems = []
        for name, (low, high) in INT_RANGES.items():
            problem = _int_problem(name, getattr(self, name), low, high)
            if problem:
                problems.append(problem)
        sizes_ok = not problems
        if sizes_ok and self.hidden_size % self.num_attention_heads != 0:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads} (head size would be {self.hidden_size / self.num_attention_heads:g})")
        problems += self._dependent_int_problems()
        for name, bounds in FLOAT_RANGES.items():
            problem = _float_problem(name, getattr(self, name), *bounds)
            if problem:
                problems.append(problem)
        if self.decoder_layer_norm_eps is not None:
            problem = _float_problem("decoder_layer_norm_eps", self.decoder_layer_norm_eps,
                                     *FLOAT_RANGES["layer_norm_eps"])
            if problem:
                problems.append(problem + " (or null for layer_norm_eps)")
        if self.classifier_dropout is not None:
            problem = _float_problem("classifier_dropout", self.classifier_dropout, 0.0, 1.0, True, False)
            if problem:
                problems.append(problem + " (or null for hidden_dropout_prob)")
        for name, choices in (("hidden_act", ACTIVATIONS), ("embedding_style", EMBEDDING_STYLES),
                              ("layer_norm_position", LAYER_NORM_POSITIONS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                problems.append(f"{name} {value!r} is not one of {', '.join(choices)}")
        if not isinstance(self.add_pooler, bool):
            problems.append(f"add_pooler must be true or false, got {self.add_pooler!r}")
        if not isinstance(self.problem_type, (str, type(None))) or \
                self.problem_type not in (None, "regression", "single_label_classification"):
            problems.append(f"problem_type {self.problem_type!r} is not 'regression' or 'single_label_classification'")
        problems += self._attention_problems()
        if sizes_ok and self.estimated_parameters > MAX_PARAMETERS:
            problems.append(
                f"the model would have about {self.estimated_parameters:.3g} parameters "
                f"(vocab_size {self.vocab_size}, hidden_size {self.hidden_size}, num_hidden_layers "
                f"{self.num_hidden_layers}, intermediate_size {self.intermediate_size}, "
                f"max_position_embeddings {self.max_position_embeddings}, num_labels {self.num_labels}); "
                f"expected at most {MAX_PARAMETERS:.3g}")
        if problems:
            raise ConfigError("invalid BortConfig: " + "; ".join(problems))

    def _dependent_int_problems(self) -> list[str]:
        """Integer fields whose range depends on another field (checked only once that field is valid)."""
        problems = []
        vocab_ok = _int_problem("vocab_size", self.vocab_size, *INT_RANGES["vocab_size"]) is None
        problem = _int_problem("pad_token_id", self.pad_token_id, 0, self.vocab_size - 1 if vocab_ok else None)
        if problem:
            problems.append(problem + (" (a token id of the vocabulary)" if vocab_ok else ""))
        positions_ok = _int_problem("max_position_embeddings", self.max_position_embeddings,
                                    *INT_RANGES["max_position_embeddings"]) is None
        problem = _int_problem("position_offset", self.position_offset, 0, None)
        if problem:
            problems.append(problem)
        elif positions_ok and self.position_offset >= self.max_position_embeddings:
            problems.append(f"position_offset {self.position_offset} leaves no positions in "
                            f"max_position_embeddings {self.max_position_embeddings}")
        return problems

    def _attention_problems(self) -> list[str]:
        """The mechanism must be registered and its parameters a JSON-like object of bounded depth. Their
        names and values are checked against the mechanism's declared schema by the registry
        (`attention.registry.attention_params`) when the model is built, not here: some depend on sizes
        checked here first (DAM's logits), and a config naming a mistyped parameter must stay loadable so
        that its checkpoint error can name the file."""
        from .attention.names import known_attention  # torch-free: the names only

        problems = []
        if not isinstance(self.attention, str) or self.attention not in known_attention():
            problems.append(f"unknown attention mechanism {_short(self.attention)}; known: "
                            f"{', '.join(known_attention())}")
        if not isinstance(self.attention_params, dict):
            problems.append(f"attention_params must be an object of parameter names to values, got "
                            f"{type(self.attention_params).__name__} {_short(self.attention_params)}")
        else:
            problem = _json_like_problem(self.attention_params, "attention_params", 0)
            if problem:
                problems.append(problem)
        return problems

    @property
    def estimated_parameters(self) -> int:
        """About the number of parameters of the largest model this config builds (encoder, pooler and every
        head together), from the sizes alone: what `validate` compares with `MAX_PARAMETERS`."""
        h, i = self.hidden_size, self.intermediate_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size + 2) * h
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        heads = (h * h + h) + (h * h + 3 * h + self.vocab_size) + (h * h + h + (h + 1) * self.num_labels)
        return embeddings + self.num_hidden_layers * layer + heads

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows (RoBERTa loses `position_offset` slots)."""
        return self.max_position_embeddings - self.position_offset

    # --- presets ---------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "bort_4_8_768_1024", **overrides: Any) -> "BortConfig":
        """A named configuration, optionally with fields overridden (unknown fields are an error)."""
        if not isinstance(name, str):
            raise ConfigError(f"preset must be a preset name (a string), got {_short(name)} ({type(name).__name__}); "
                              f"known presets: {', '.join(PRESETS)}")
        key = name.lower().replace("_", "-")
        matches = [p for p in PRESETS if p.lower().replace("_", "-") == key]
        if not matches:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        values = dict(PRESETS[matches[0]])
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)}, key=str)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)} for preset {name!r}")
        values.update(overrides)
        return cls(**values)

    @staticmethod
    def presets() -> list[str]:
        return list(PRESETS)

    # --- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "BortConfig":
        """Build from a dict of our fields; unknown keys are an error naming them."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object of config fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(repr(k) if not isinstance(k, str) else k for k in set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {', '.join(unknown)}; "
                              f"known fields: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON atomically (temporary file, then rename)."""
        from .atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_json_string())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BortConfig":
        """Read a JSON file written by `save` (errors name the file and the JSON position)."""
        return cls.from_dict(read_json(path, ConfigError, "config file"), source=str(path))

    @classmethod
    def resolve(cls, spec: "BortConfig | str | os.PathLike | dict[str, Any]") -> "BortConfig":
        """Accept a config, a preset name, a JSON path, inline JSON text or a dict (of our fields, or
        overrides of a preset given as {"preset": name, ...})."""
        if isinstance(spec, BortConfig):
            return spec
        if isinstance(spec, dict):
            values = dict(spec)
            if "preset" in values:
                return cls.preset(values.pop("preset"), **values)
            return cls.from_dict(values)
        if not isinstance(spec, (str, os.PathLike)):
            raise ConfigError(f"a config must be a BortConfig, a preset name, a JSON path, inline JSON or a dict; "
                              f"got {_short(spec)} ({type(spec).__name__})")
        text = os.fspath(spec)
        if isinstance(text, bytes):
            raise ConfigError(f"a config path must be text, got bytes {_short(text)}")
        if text.lstrip().startswith("{"):
            return cls.resolve(parse_json(text, ConfigError, "inline config"))
        if Path(text).is_file() or text.endswith(".json"):
            # The same keys as inline JSON: our fields, or {"preset": name, ...overrides}.
            values = read_json(text, ConfigError, "config file")
            if isinstance(values, dict) and "preset" in values:
                try:
                    return cls.resolve(values)
                except ConfigError as err:
                    raise ConfigError(f"{text}: {err}") from None
            return cls.from_dict(values, source=text)
        return cls.preset(text)


_BORT = dict(vocab_size=50265, max_position_embeddings=512, type_vocab_size=0, layer_norm_eps=1e-5,
             pad_token_id=1, position_offset=0, embedding_style="gluon", add_pooler=False, hidden_act="gelu")
_BERT = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
             pad_token_id=0, position_offset=0, embedding_style="bert", add_pooler=True, hidden_act="gelu")
_ROBERTA = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                pad_token_id=1, position_offset=2, embedding_style="bert", add_pooler=True, hidden_act="gelu")

PRESETS: dict[str, dict[str, Any]] = {
    # GluonNLP names: units = hidden_size (1024), hidden_size = intermediate_size (768).
    "bort_4_8_768_1024": dict(_BORT, num_hidden_layers=4, num_attention_heads=8, hidden_size=1024,
                              intermediate_size=768),
    "bort_2_16_512_1024": dict(_BORT, num_hidden_layers=2, num_attention_heads=16, hidden_size=1024,
                               intermediate_size=512),
    "bert-base": dict(_BERT, num_hidden_layers=12, num_attention_heads=12, hidden_size=768,
                      intermediate_size=3072),
    "bert-large": dict(_BERT, num_hidden_layers=24, num_attention_heads=16, hidden_size=1024,
                       intermediate_size=4096),
    "roberta-base": dict(_ROBERTA, num_hidden_layers=12, num_attention_heads=12, hidden_size=768,
                         intermediate_size=3072),
    "roberta-large": dict(_ROBERTA, num_hidden_layers=24, num_attention_heads=16, hidden_size=1024,
                          intermediate_size=4096),
}
