"""Task heads for fine-tuning: which model a task needs, its scores on a `Batch`, loss and predictions.

The heads are the library's own (`BortForSequenceClassification` for classification and regression,
`BortForMultipleChoice` for COPA / RACE / ReCoRD candidate ranking), so a fine-tuned checkpoint is an ordinary
`save_pretrained` directory. Multiple choice is scored from the flattened choices of a batch (see
`batching`), which also covers ReCoRD's variable number of candidate entities.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_pretrained
from .batching import Batch


def model_task(kind: str) -> str:
    """The `load_pretrained` task for a task kind."""
    if kind not in ("classification", "regression", "multiple_choice"):
        raise ValueError(f"unknown task kind {kind!r}; expected classification, regression or multiple_choice")
    return kind


def load_model_for(task: Any, model_path: str, config: dict[str, Any] | None = None) -> nn.Module:
    """`load_pretrained(model_path)` with the head `task` needs (fresh head weights when the checkpoint has
    none, e.g. an encoder or an MLM checkpoint). `config` overrides fields of the stored config."""
    overrides = dict(config or {})
    if task.kind == "classification":
        overrides["num_labels"] = len(task.labels)
    return load_pretrained(model_path, config=overrides or None, task=model_task(task.kind))


def scores(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits: (examples, labels) for classification, (examples,) for regression, (examples, max choices) for
    multiple choice with −inf where an example has no such choice."""
    # Models without token-type embeddings (RoBERTa, Bort) take none, whatever the tokenizer produced.
    types = batch.token_type_ids if model.uses_token_types else None
    if batch.owner is None:
        out = model(batch.input_ids, batch.attention_mask, types)
        return out.logits.squeeze(-1) if out.logits.shape[-1] == 1 else out.logits
    # Multiple choice: the head of BortForMultipleChoice applied to every real choice once.
    return model.score_choices(batch.input_ids, batch.attention_mask, types, batch.owner, batch.slot,
                               batch.num_examples)


def loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy (classification, multiple choice) or mean squared error (regression)."""
    if kind == "regression":
        return F.mse_loss(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def predictions(logits: torch.Tensor, kind: str) -> list[int | float]:
    """Predicted class / choice indices, or regression values, as Python numbers."""
    if kind == "regression":
        return [float(x) for x in logits.float().tolist()]
    return [int(x) for x in logits.argmax(dim=-1).tolist()]
