"""Model configuration: one dataclass for Bort, BERT and RoBERTa encoders, with named presets.

Field names follow Hugging Face's `BertConfig` so that users can type what they already know and so that
configs convert to and from HF `config.json` files without a translation table for the common fields.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonfile import read_json

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "silu")
EMBEDDING_STYLES = ("bert", "gluon")
LAYER_NORM_POSITIONS = ("post", "pre")


class ConfigError(ValueError):
    """A configuration that cannot describe a model (wrong sizes, unknown names)."""


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
        """Raise `ConfigError` naming every field that cannot work."""
        problems = []
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.hidden_size % self.num_attention_heads != 0:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads} (head size would be {self.hidden_size / self.num_attention_heads:g})")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            problems.append(f"type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}")
        if not isinstance(self.position_offset, int) or self.position_offset < 0:
            problems.append(f"position_offset must be an integer >= 0, got {self.position_offset!r}")
        elif isinstance(self.max_position_embeddings, int) and self.position_offset >= self.max_position_embeddings:
            problems.append(f"position_offset {self.position_offset} leaves no positions in "
                            f"max_position_embeddings {self.max_position_embeddings}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.embedding_style not in EMBEDDING_STYLES:
            problems.append(f"embedding_style {self.embedding_style!r} is not one of {', '.join(EMBEDDING_STYLES)}")
        if self.layer_norm_position not in LAYER_NORM_POSITIONS:
            problems.append(f"layer_norm_position {self.layer_norm_position!r} is not one of "
                            f"{', '.join(LAYER_NORM_POSITIONS)}")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            problems.append(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.problem_type not in (None, "regression", "single_label_classification"):
            problems.append(f"problem_type {self.problem_type!r} is not 'regression' or 'single_label_classification'")
        if problems:
            raise ConfigError("invalid BortConfig: " + "; ".join(problems))

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows (RoBERTa loses `position_offset` slots)."""
        return self.max_position_embeddings - self.position_offset

    # --- presets ---------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "bort_4_8_768_1024", **overrides: Any) -> "BortConfig":
        """A named configuration, optionally with fields overridden (unknown fields are an error)."""
        key = name.lower().replace("_", "-")
        matches = [p for p in PRESETS if p.lower().replace("_", "-") == key]
        if not matches:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        values = dict(PRESETS[matches[0]])
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
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
        unknown = sorted(set(values) - known)
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
        text = os.fspath(spec)
        if text.lstrip().startswith("{"):
            try:
                return cls.resolve(json.loads(text))
            except json.JSONDecodeError as err:
                raise ConfigError(f"inline config is not valid JSON at column {err.colno}: {err.msg}") from None
        if Path(text).is_file() or text.endswith(".json"):
            return cls.load(text)
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
