"""Hugging Face BERT/RoBERTa checkpoints: config translation, parameter names, import and export.

Our parameter names are HF BERT's, so the translation is a prefix (`bert.`/`roberta.` ↔ `bort.`) plus
the MLM head (`cls.predictions.*` or `lm_head.*` ↔ `lm_head.*`). Export writes a directory that
`transformers.AutoModel*.from_pretrained` loads with no custom code.

Bort's sentence head (first token → Dense + tanh → Dense, `classifier.dense`/`classifier.out_proj`) computes in
eval exactly what HF BERT's pooler + `classifier` compute, so a Bort classifier exports to
`BertForSequenceClassification` and a Bort multiple-choice model to `*ForMultipleChoice` with the head's first
Dense stored as the pooler. What HF cannot hold in its own fields (our `type_vocab_size` 0, that the pooler was
our head) is kept under the config key "bort" and restored on import, so a round trip does not drift.

An encoder without a pooler (Bort) exports as a `BertModel` without pooler weights: `AutoModel.from_pretrained`
always builds a pooler and would initialise it randomly, so load it with `add_pooling_layer=False` (its
`last_hidden_state` is ours either way; only `pooler_output` would be noise).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..config import BortConfig, ConfigError
from ..atomic import atomic_path, atomic_write_text
from .errors import CheckpointError
from .native import read_safetensors

BERT_TYPES = ("bert",)
ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

logger = logging.getLogger(__name__)


def config_from_hf(values: dict[str, Any], source: str = "config.json",
                   state: dict[str, torch.Tensor] | None = None) -> BortConfig:
    """Translate an HF BERT/RoBERTa config dict; `state` (when given) decides whether a pooler exists."""
    model_type = values.get("model_type")
    if model_type not in BERT_TYPES + ROBERTA_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported; "
                              f"expected one of {', '.join(BERT_TYPES + ROBERTA_TYPES)}")
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type {values['position_embedding_type']!r} "
                              "is not supported (only 'absolute')")
    pad = values.get("pad_token_id", 0 if model_type in BERT_TYPES else 1)
    pad = 0 if pad is None else pad  # HF writes null for "no padding token"
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise CheckpointError(f"{source}: pad_token_id must be an integer >= 0 or null, got {pad!r:.80}")
    fields = dict(
        vocab_size=values.get("vocab_size"),
        hidden_size=values.get("hidden_size"),
        num_hidden_layers=values.get("num_hidden_layers"),
        num_attention_heads=values.get("num_attention_heads"),
        intermediate_size=values.get("intermediate_size"),
        hidden_act=values.get("hidden_act", "gelu"),
        hidden_dropout_prob=values.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=values.get("attention_probs_dropout_prob", 0.1),
        max_position_embeddings=values.get("max_position_embeddings", 512),
        type_vocab_size=values.get("type_vocab_size", 2),
        layer_norm_eps=values.get("layer_norm_eps", 1e-12),
        initializer_range=values.get("initializer_range", 0.02),
        pad_token_id=pad,
        position_offset=pad + 1 if model_type in ROBERTA_TYPES else 0,
        embedding_style="bert",
        add_pooler=True if state is None else any(k.endswith("pooler.dense.weight") for k in state),
        num_labels=_num_labels(values),
        problem_type=values.get("problem_type") if values.get("problem_type") != "multi_label_classification" else None,
        classifier_dropout=values.get("classifier_dropout"),
    )
    bort_extra = values.get("bort", {})
    if isinstance(bort_extra, dict):  # our own fields survive an export → import round trip
        fields.update({k: v for k, v in bort_extra.items() if k in ("attention", "attention_params", "embedding_style",
                                                                     "decoder_layer_norm_eps")})
    try:
        return BortConfig(**fields)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: cannot build a config: {err}") from None


def _num_labels(values: dict[str, Any]) -> Any:
    """HF keeps the label count as `id2label` (older files, and ours: also `num_labels`)."""
    if isinstance(values.get("id2label"), dict) and values["id2label"]:
        return len(values["id2label"])
    return values.get("num_labels", 2)


def read_hf_state(directory: Path) -> dict[str, torch.Tensor]:
    for name in HF_WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                return read_safetensors(path)
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises many types for a damaged pickle/zip
                raise CheckpointError(f"{path}: cannot read PyTorch weights ({type(err).__name__}: {err})") from None
    if (directory / "model.safetensors.index.json").is_file():
        raise CheckpointError(f"{directory}: sharded checkpoints are not supported yet (model.safetensors.index.json)")
    raise CheckpointError(f"{directory}: no weights file; expected one of {', '.join(HF_WEIGHT_FILES)}")


def state_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names → our canonical names (`bort.` encoder prefix, `lm_head.*`, `classifier.*`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.replace(".gamma", ".weight").replace(".beta", ".bias")  # TF-era LayerNorm names
        for prefix in ("bert.", "roberta."):
            if key.startswith(prefix):
                key = "bort." + key[len(prefix):]
        if key.startswith("cls.predictions."):
            rest = key[len("cls.predictions."):]
            key = {"transform.dense.weight": "lm_head.dense.weight", "transform.dense.bias": "lm_head.dense.bias",
                   "transform.LayerNorm.weight": "lm_head.layer_norm.weight",
                   "transform.LayerNorm.bias": "lm_head.layer_norm.bias", "bias": "lm_head.bias"}.get(rest, "")
        elif key in ("lm_head.decoder.weight", "lm_head.decoder.bias") or key.startswith("cls.seq_relationship"):
            key = ""  # tied decoder weight, its bias alias, the NSP head: nothing of ours
        if key:
            out[key] = value
    return out


def load_hf_dir(directory: Path, values: dict[str, Any]) -> tuple[BortConfig, dict[str, torch.Tensor]]:
    """An HF checkpoint directory whose config.json holds `values` → (config, canonical state)."""
    state = state_from_hf(read_hf_state(directory))
    values = restore_bort_layout(values, state, str(directory / "config.json"))
    return config_from_hf(values, str(directory / "config.json"), state), state


def restore_bort_layout(values: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Undo what `export_hf` changed to fit HF's classes, as recorded under "bort" in config.json: the pooler
    that was our head's first Dense goes back into `classifier.dense` (`state` is edited in place), and a
    token-type table of one zero row becomes "no token types" again. Returns the config values to build from."""
    extra = values.get("bort")
    if not isinstance(extra, dict):
        return values  # a checkpoint HF or someone else wrote: take it as it is
    values = dict(values)
    pooler_was_head = extra.get("add_pooler") is False
    if pooler_was_head and "bort.pooler.dense.weight" in state and "classifier.weight" in state:
        for part in ("weight", "bias"):
            if f"bort.pooler.dense.{part}" in state:
                state[f"classifier.dense.{part}"] = state.pop(f"bort.pooler.dense.{part}")
            if f"classifier.{part}" in state:
                state[f"classifier.out_proj.{part}"] = state.pop(f"classifier.{part}")
    if extra.get("type_vocab_size") == 0 and values.get("type_vocab_size") == 1:
        # a head's encoder is under "bort.", an exported bare encoder has no prefix
        key = next((k for k in ("bort.embeddings.token_type_embeddings.weight",
                                "embeddings.token_type_embeddings.weight") if k in state), "")
        table = state.get(key)
        if table is None or not bool(table.count_nonzero() == 0):
            # Trained since (e.g. fine-tuned in HF): the row is real now, keep the table it needs.
            logger.info("%s: the token-type row is no longer zero; keeping type_vocab_size 1", source)
        else:
            state.pop(key, None)
            values["type_vocab_size"] = 0
    return values


def hf_task(values: dict[str, Any]) -> str | None:
    """The head an HF config's `architectures` names ("mlm", "classification", "regression",
    "multiple_choice"), or None (an encoder, or a head we have none of: then the weights decide)."""
    architectures = values.get("architectures")
    name = architectures[0] if isinstance(architectures, list) and architectures and \
        isinstance(architectures[0], str) else ""
    if name.endswith("ForMaskedLM"):
        return "mlm"
    if name.endswith("ForMultipleChoice"):
        return "multiple_choice"
    if name.endswith("ForSequenceClassification"):
        regression = values.get("problem_type") == "regression" or _num_labels(values) == 1
        return "regression" if regression else "classification"
    return None


def hf_config_dict(config: BortConfig, architecture: str) -> dict[str, Any]:
    """Our config as HF `config.json` values (BERT when positions start at 0, RoBERTa otherwise)."""
    if config.position_offset == 0:
        model_type = "bert"
    elif config.position_offset == config.pad_token_id + 1:
        model_type = "roberta"
    else:
        raise CheckpointError(f"cannot export position_offset {config.position_offset} with pad_token_id "
                              f"{config.pad_token_id}: HF supports 0 (BERT) or pad_token_id + 1 (RoBERTa)")
    prefix = "Bert" if model_type == "bert" else "Roberta"
    return {
        "model_type": model_type,
        "architectures": [prefix + architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "max_position_embeddings": config.max_position_embeddings,
        # HF BERT always has a token-type table; one zero row is exactly "no token types".
        "type_vocab_size": max(config.type_vocab_size, 1),
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "num_labels": config.num_labels,
        # HF derives its label count from id2label on load; without it every head would come back with 2.
        "id2label": {str(i): f"LABEL_{i}" for i in range(config.num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(config.num_labels)},
        "classifier_dropout": config.classifier_dropout,
        **({"problem_type": config.problem_type} if config.problem_type else {}),
        "bort": {"attention": config.attention, "attention_params": config.attention_params,
                 "embedding_style": config.embedding_style,
                 # what HF's fields cannot say: no token-type table, and no pooler of our own (a pooler in
                 # the file is then our head's first Dense, see export_hf)
                 "type_vocab_size": config.type_vocab_size, "add_pooler": config.add_pooler,
                 # transformers' LM head uses layer_norm_eps; ours may differ (GluonNLP 0.8.3, docs/gluon.md)
                 "decoder_layer_norm_eps": config.decoder_layer_norm_eps},
    }


def export_hf(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write `model` as an HF checkpoint (config.json + model.safetensors), each file atomically."""
    from ..model import BortForMaskedLM, BortForMultipleChoice, BortForSequenceClassification, BortModel

    config: BortConfig = model.config
    if config.attention != "dense":
        # HF has no such mechanism: the file would load but compute dense attention silently.
        raise CheckpointError(f"cannot export attention {config.attention!r} to Hugging Face format "
                              "(HF models only run dense attention); use the native format")
    if getattr(config, "layer_norm_position", "post") != "post":
        # HF BERT/RoBERTa are post-LN: the weights would load and compute a different function.
        raise CheckpointError(f"cannot export a {config.layer_norm_position}-LN encoder to Hugging Face format "
                              "(HF BERT/RoBERTa are post-LN); use the native format")
    architecture = {BortModel: "Model", BortForMaskedLM: "ForMaskedLM",
                    BortForSequenceClassification: "ForSequenceClassification",
                    BortForMultipleChoice: "ForMultipleChoice"}[type(model)]
    values = hf_config_dict(config, architecture)
    base = "bert." if values["model_type"] == "bert" else "roberta."
    # HF's BERT classifier and every HF multiple-choice model score pooler → Linear; our dense-tanh head
    # computes the same in eval, so its first Dense becomes the pooler (RoBERTa's classifier has our layout).
    head_as_pooler = getattr(model, "use_pooler", None) is False and \
        (values["model_type"] == "bert" or isinstance(model, BortForMultipleChoice))
    encoder = model if isinstance(model, BortModel) else model.bort
    state: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict().items():
        state[("" if isinstance(model, BortModel) else base) + key] = value
    enc_prefix = "" if isinstance(model, BortModel) else base
    if config.type_vocab_size == 0:
        state[enc_prefix + "embeddings.token_type_embeddings.weight"] = torch.zeros(1, config.hidden_size)
    if isinstance(model, BortForMaskedLM):
        head = model.lm_head
        word = encoder.embeddings.word_embeddings.weight
        if values["model_type"] == "bert":
            names = {"cls.predictions.transform.dense": head.dense,
                     "cls.predictions.transform.LayerNorm": head.layer_norm}
            decoder = "cls.predictions.decoder"
            state["cls.predictions.bias"] = head.bias
        else:
            names = {"lm_head.dense": head.dense, "lm_head.layer_norm": head.layer_norm}
            decoder = "lm_head.decoder"
            state["lm_head.bias"] = head.bias
        for name, module in names.items():
            state[name + ".weight"], state[name + ".bias"] = module.weight, module.bias
        state[decoder + ".weight"] = word
        state[decoder + ".bias"] = head.bias
    elif not isinstance(model, BortModel):
        for key, value in model.state_dict().items():
            if not key.startswith("bort."):
                state[key] = value
        if head_as_pooler:
            for part in ("weight", "bias"):
                state[f"{base}pooler.dense.{part}"] = state.pop(f"classifier.dense.{part}")
                state[f"classifier.{part}"] = state.pop(f"classifier.out_proj.{part}")
    # safetensors refuses aliased tensors (tied weights): store independent copies.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(directory / "config.json", json.dumps(values, indent=2, sort_keys=True) + "\n")
    return directory
