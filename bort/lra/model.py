"""The LRA classifier: token + position embeddings, our pre-LN encoder, mean pooling, a two-layer head.

The shape is the one every LRA paper shares (2 layers, width 64, FFN 128, 2 heads, pre-LN, GELU, dropout
0.1), built from `BortConfig` so any registered attention mechanism runs in it by name. Departures from the
reference implementations, on purpose:

- mean pooling divides by the number of real tokens (the YOSO/Nystromformer code averages over every
  position, padding included, which makes the pooled vector depend on how a batch was padded; with
  length-bucketed batches it must not);
- no dropout between the two FFN projections (BERT's layer, which our encoder is).

Both are options for reproducing the original (the "paper" recipe, `tasks.RECIPES`): `pooling="mean_padded"`
sums the real tokens and divides by the position table's rows, the fixed length every original input is
zero-padded to (ListOps: 2000 symbols + 48 zeros = 2048), so the pooled vector equals the original's whatever
the batch width; `ffn_dropout` > 0 inserts that dropout after the FFN activation.

Initialisation follows the reference code, not BERT (`LRAClassifier.init_linear`): embeddings N(0, 0.02),
every Linear PyTorch's default (uniform ±1/√fan_in, ~3.6× BERT's 0.02 at width 64). It matters at LRA's
lengths: with BERT's 0.02 the attention logits start ~13× smaller, attention stays uniform and the model sits
at the majority class far longer. Measured with peak lr 1e-3, dense: on generated 500-2000-symbol ListOps
(`bench/lra_listops_long.py`) it left the plateau at step ~1000 (BERT's init: still there at 1300); trained on
the first 501 symbols of the same rows (warmup 100), at step 500 (BERT's: still there at 800); on real ListOps
(`bench/lra_listops.py`, 1000 steps) its test accuracy rose from 35.1% to 40.2%.

Retrieval, a pair task, uses `LRADualClassifier`: the same encoder embeds both documents, and a head over
[u, v, u∗v, u−v] classifies the pair.

A saved model is a native checkpoint (`bort.checkpoint.native`): `model.safetensors` and `config.json`, whose
`"lra"` block records the task, architecture ("single" or "dual"), pooling, FFN dropout and vocabulary
(`bort.lra.config`), so `bort.checkpoint.load_pretrained` and `bort convert` open it as task "lra" (`LRA_KIND`).
`load_lra_model` also reads the layout written before, `lra_config.json` beside the same weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint.errors import CheckpointError
from ..checkpoint.kinds import ModelKind
from ..checkpoint.native import (CONFIG_NAME, FORMAT_KEY, WEIGHTS_NAME, native_config_from_values, read_json_config,
                                 read_safetensors, save_native)
from ..config import BortConfig, ConfigError
from ..model import BortEncoder, BortPreTrainedModel, HeadOutput, check_mask_shape, check_inputs
from .config import LEGACY_CONFIG_NAME, LEGACY_FORMAT_KEY, LRA_TASK, LRAConfig
from .tasks import LRATask

POOLINGS = ("mean", "mean_padded")

# The LRA encoder shape (all tasks).
LRA_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 layer_norm_eps=1e-5, initializer_range=0.02, type_vocab_size=0, position_offset=0,
                 embedding_style="bert", layer_norm_position="pre", add_pooler=False)


def lra_config(task: LRATask, vocab_size: int, attention: str = "dense",
               attention_params: dict[str, Any] | None = None, pad_token_id: int = 0,
               **overrides: Any) -> BortConfig:
    """The LRA encoder config for `task`: `LRA_SHAPE`, the task's length and classes, `attention` by name.

    `attention_params` None takes the task's defaults for that mechanism (e.g. YOSO's hash length);
    `overrides` replace any BortConfig field (e.g. hidden_size for a bigger model).
    """
    params = dict(task.attention_defaults.get(attention, {})) if attention_params is None else dict(attention_params)
    values = dict(LRA_SHAPE, vocab_size=vocab_size, max_position_embeddings=task.max_length,
                  num_labels=task.num_classes, pad_token_id=pad_token_id, attention=attention,
                  attention_params=params)
    values.update(overrides)
    return BortConfig(**values)


class LRAEmbeddings(nn.Module):
    """word + learned position → dropout (no LayerNorm: with pre-LN the first block normalises its input)."""

    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(f"input length {n} exceeds the model's {self.position_embeddings.num_embeddings} "
                             "positions (max_position_embeddings)")
        positions = torch.arange(n, device=input_ids.device)
        return self.dropout(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class LRAHead(nn.Module):
    """Pooled vector → Dense(intermediate_size) → ReLU → Dense(classes), the LRA classification head."""

    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.out_proj = nn.Linear(config.intermediate_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.relu(self.dense(pooled)))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `hidden` (batch, seq, dim) over the real tokens of each row (all tokens when no mask)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def mean_pool_padded(hidden: torch.Tensor, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor:
    """The original LRA code's pooling: the real tokens of `hidden` (batch, seq, dim) summed (padding zeroed,
    as its encoder multiplies the output by the mask) and divided by `length`, the fixed length it pads every
    input to, padding included."""
    if attention_mask is not None:
        hidden = hidden * attention_mask.to(hidden.dtype).unsqueeze(-1)
    return hidden.sum(dim=1) / length


class ActivationDropout(nn.Module):
    """An FFN activation followed by dropout: the original LRA block's Linear → GELU → Dropout → Linear."""

    def __init__(self, activation: Any, p: float) -> None:
        super().__init__()
        self.activation = activation
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(x))


class LRAClassifier(BortPreTrainedModel):
    """Sequence classifier for the LRA tasks over `BortEncoder` (pre-LN by the LRA config).

    `pooling`: "mean" (over the real tokens) or "mean_padded" (the original's, see `mean_pool_padded`);
    `ffn_dropout`: the probability of a dropout between the two FFN projections of every layer (0: none, our
    default; the original uses its hidden dropout, 0.1)."""

    def __init__(self, config: BortConfig, pooling: str = "mean", ffn_dropout: float = 0.0) -> None:
        super().__init__(config)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        if isinstance(ffn_dropout, bool) or not isinstance(ffn_dropout, (int, float)) or \
                not 0.0 <= ffn_dropout < 1.0:
            raise ValueError(f"ffn_dropout must be a probability in [0, 1), got {ffn_dropout!r}")
        self.pooling = pooling
        self.ffn_dropout = float(ffn_dropout)
        self.embeddings = LRAEmbeddings(config)
        self.encoder = BortEncoder(config)
        if self.ffn_dropout:
            # The encoder layer applies `intermediate.act` between its two FFN projections; wrapping it adds
            # the dropout without changing any parameter name.
            for layer in self.encoder.layer:
                layer.intermediate.act = ActivationDropout(layer.intermediate.act, self.ffn_dropout)
        self.classifier = LRAHead(config)
        self.init_weights()

    def init_linear(self, module: nn.Linear) -> None:
        """The LRA reference code's Linear initialisation, PyTorch's default U(±1/√fan_in) (module docstring)."""
        module.reset_parameters()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state (batch, seq, width), its mean over the real tokens (batch, width)) of
        `input_ids` (batch, seq); `attention_mask` is 1 on real tokens."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        check_mask_shape(attention_mask, tuple(input_ids.shape))
        check_inputs(self.config, input_ids, attention_mask)  # ids in the vocabulary, a 0/1 mask: named errors
        # None when nothing is padded: the mechanisms' fast path.
        key_padding = None if attention_mask is None or bool(attention_mask.bool().all()) else attention_mask.bool()
        x = self.encoder(self.embeddings(input_ids), key_padding).last_hidden_state
        if self.pooling == "mean_padded":
            return x, mean_pool_padded(x, key_padding, self.config.max_position_embeddings)
        return x, mean_pool(x, key_padding)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> HeadOutput:
        """Logits (batch, classes) for `input_ids` (batch, seq); `attention_mask` is 1 on real tokens;
        with `labels` also the mean cross-entropy."""
        x, pooled = self.encode(input_ids, attention_mask)
        logits = self.classifier(pooled)
        loss = F.cross_entropy(logits.float(), labels.long().view(-1)) if labels is not None else None
        return HeadOutput(logits=logits, loss=loss, last_hidden_state=x)


class LRADualHead(nn.Module):
    """Two pooled vectors u, v → [u, v, u∗v, u−v] → Dense(intermediate_size) → ReLU → Dense(classes).

    The interaction and MLP of the YOSO / Nyströmformer LRA code for Retrieval (LRA's JAX head inserts one more
    Dense(mlp/2) + ReLU). The order of u and v matters (u−v), as in both references.
    """

    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(4 * config.hidden_size, config.intermediate_size)
        self.out_proj = nn.Linear(config.intermediate_size, config.num_labels)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.relu(self.dense(torch.cat([u, v, u * v, u - v], dim=-1))))


class LRADualClassifier(LRAClassifier):
    """Pair classifier for LRA Retrieval: one shared encoder embeds both documents (mean pooling), the
    `LRADualHead` combines them. Parameter names are `LRAClassifier`'s (embeddings, encoder, classifier)."""

    def __init__(self, config: BortConfig, pooling: str = "mean", ffn_dropout: float = 0.0) -> None:
        super().__init__(config, pooling, ffn_dropout)
        self.classifier = LRADualHead(config)
        self.init_weights(self.classifier)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                input_ids2: torch.Tensor | None = None, attention_mask2: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> HeadOutput:
        """Logits (batch, classes) for the pairs (`input_ids`, `input_ids2`), each (batch, seq) with its mask;
        with `labels` also the mean cross-entropy. `last_hidden_state` is the first side's."""
        if input_ids2 is None:
            raise ValueError("LRADualClassifier needs both documents: input_ids2 is missing")
        b = input_ids.shape[0]
        if input_ids2.shape[0] != b:
            raise ValueError(f"the two sides have {b} and {input_ids2.shape[0]} rows")
        if input_ids2.shape == input_ids.shape and (attention_mask is None) == (attention_mask2 is None):
            # One encoder pass over both sides stacked: the same result (rows are independent) in half the calls.
            masks = None if attention_mask is None else torch.cat([attention_mask, attention_mask2])
            x, pooled = self.encode(torch.cat([input_ids, input_ids2]), masks)
            x, u, v = x[:b], pooled[:b], pooled[b:]
        else:
            x, u = self.encode(input_ids, attention_mask)
            _, v = self.encode(input_ids2, attention_mask2)
        logits = self.classifier(u, v)
        loss = F.cross_entropy(logits.float(), labels.long().view(-1)) if labels is not None else None
        return HeadOutput(logits=logits, loss=loss, last_hidden_state=x)


ARCHITECTURES = {"single": LRAClassifier, "dual": LRADualClassifier}


def architecture_of(model: LRAClassifier) -> str:
    """"dual" for a `LRADualClassifier`, else "single" (saved as config.json's lra.architecture)."""
    return "dual" if isinstance(model, LRADualClassifier) else "single"


# --- saving and loading ------------------------------------------------------------------------------------
def lra_checkpoint_config(model: LRAClassifier, task: str | None = None,
                          vocab: Sequence[str] | None = None) -> LRAConfig:
    """The config saved for `model`: its encoder's fields and its settings (`bort.lra.config`). `task` and
    `vocab` default to what the model's config already records (a loaded model's; else null)."""
    saved = model.config.lra if isinstance(model.config, LRAConfig) else {}
    return LRAConfig.from_encoder(
        model.config, task=task if task is not None else saved.get("task"), architecture=architecture_of(model),
        pooling=model.pooling, ffn_dropout=model.ffn_dropout,
        vocab=list(vocab) if vocab is not None else saved.get("vocab"))


def lra_model_from_config(config: LRAConfig) -> LRAClassifier:
    """A fresh classifier of `config`'s architecture, pooling and FFN dropout (a bad value: ValueError)."""
    settings = config.lra
    return ARCHITECTURES[settings["architecture"]](config, pooling=settings.get("pooling", "mean"),
                                                  ffn_dropout=settings.get("ffn_dropout", 0.0))


def read_legacy_lra(directory: str | os.PathLike) -> tuple[LRAConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of a directory in the layout written before LRA models were native checkpoints:
    `lra_config.json` ({"bort_lra_format_version": 1, "encoder": {BortConfig fields}, "task", "pooling",
    "ffn_dropout", "architecture", "vocab"}; the last four absent from the oldest files: our defaults) and
    `model.safetensors`."""
    directory = Path(directory)
    config_path = directory / LEGACY_CONFIG_NAME
    values = read_json_config(config_path)
    if LEGACY_FORMAT_KEY not in values or "encoder" not in values:
        raise CheckpointError(f"{config_path}: not an LRA model config (no {LEGACY_FORMAT_KEY!r} / 'encoder')")
    try:
        encoder = BortConfig.from_dict(values["encoder"], source=f"{config_path} (encoder)")
        config = LRAConfig.from_encoder(
            encoder, task=values.get("task"), architecture=values.get("architecture", "single"),
            pooling=values.get("pooling", "mean"), ffn_dropout=values.get("ffn_dropout", 0.0),
            vocab=values.get("vocab"))
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    return config, read_safetensors(directory / WEIGHTS_NAME)


def save_lra_model(model: LRAClassifier, directory: str | os.PathLike, task: str,
                   vocab: Sequence[str] | None = None) -> Path:
    """Write `model` as a native checkpoint (`model.safetensors` then `config.json`, each atomically) whose
    config records `task`, `vocab` and the model's settings (`lra_checkpoint_config`)."""
    return save_native(model, directory, config=lra_checkpoint_config(model, task, vocab))


def load_lra_model(directory: str | os.PathLike) -> tuple[LRAClassifier, dict[str, Any]]:
    """(model in eval mode, its settings) from a directory written by `save_lra_model` or, before LRA models
    were native checkpoints, by its predecessor (`read_legacy_lra`). The settings are {"task", "architecture",
    "pooling", "ffn_dropout", "vocab", "encoder": the encoder's BortConfig fields}, whichever the layout."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if config_path.is_file():
        values = read_json_config(config_path)
        if FORMAT_KEY not in values:
            raise CheckpointError(f"{config_path}: not a bort checkpoint config (no {FORMAT_KEY!r})")
        config, task = native_config_from_values(values, config_path)
        if task != LRA_TASK:
            raise CheckpointError(f"{config_path}: a bort checkpoint of task {task!r}, not an LRA model (task "
                                  f"{LRA_TASK!r}); open it with bort.checkpoint.load_pretrained")
        state = read_safetensors(directory / WEIGHTS_NAME)
    elif (directory / LEGACY_CONFIG_NAME).is_file():
        config_path = directory / LEGACY_CONFIG_NAME
        config, state = read_legacy_lra(directory)
    else:
        raise CheckpointError(f"{config_path}: not found; an LRA model directory holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (written by `bort lra` as <output-dir>/best), or {LEGACY_CONFIG_NAME} "
                              f"and {WEIGHTS_NAME} (runs from before LRA models were native checkpoints)")
    try:  # a bad pooling or FFN dropout is the file's fault: named
        model = lra_model_from_config(config)
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{directory / WEIGHTS_NAME}: does not match {config_path}: missing "
                              f"{', '.join(missing[:5]) or 'none'}; unexpected {', '.join(unexpected[:5]) or 'none'}")
    model.eval()
    return model, dict(config.lra, encoder=config.encoder_config.to_dict())


def _model_config(model: torch.nn.Module) -> LRAConfig | None:
    return lra_checkpoint_config(model) if isinstance(model, LRAClassifier) else None


# How bort.checkpoint saves and opens LRA classifiers (task "lra"; bort.checkpoint.kinds).
LRA_KIND = ModelKind(task=LRA_TASK, config_class=LRAConfig, build=lra_model_from_config, model_config=_model_config,
                     read_legacy=read_legacy_lra)
