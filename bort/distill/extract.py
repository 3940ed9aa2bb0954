"""Initialise a smaller student as a sub-network of its teacher (`bort distill --student-init extract`).

A student narrower than its teacher cannot copy the teacher's tensors, but it can take a slice of each: some of
the teacher's residual-stream dimensions, some of each mapped layer's heads and some of its FFN neurons, the same
choice in every tensor that reads or writes them, so the student starts as the teacher with units removed
(structured pruning as an initialisation; cf. "weight subcloning", Samragh et al. 2023, and DistilBERT's layer
copy, Sanh et al. 2019). Distillation then repairs what the removal broke, which random initialisation would
have to learn from scratch.

Which units are kept is decided from the teacher's weights alone (no data), by magnitude:

- a residual dimension d scores Σ |γ_d| over every LayerNorm of the encoder (each LayerNorm's output scale in d);
- a head h of a layer scores ‖W_V[h]‖ · ‖W_O[:, h]‖ (the Frobenius norms of what it reads into and writes out of
  the residual stream);
- an FFN neuron j scores ‖W_in[j, :]‖ · ‖W_out[:, j]‖.

The top scorers are kept in their original order. Heads are kept whole, so the student's head size must equal
the teacher's; positions and token types keep the first rows. A student as large as its teacher gets an exact
copy of the mapped layers (what `--student-init teacher` does). Tensors with no counterpart in the teacher (an
MLM head the teacher lacks, a pooler, an attention mechanism's own parameters) keep their random initialisation
and are listed in the returned report.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn

from ..checkpoint.errors import CheckpointError
from ..config import BortConfig

# What each axis of a tensor indexes: "hidden" (the residual stream), "inner" (the attention heads' dimensions),
# "ffn" (FFN neurons), "rows" (the first rows: positions, token types) or "all" (vocabulary: kept whole).
_LAYER_ROLES: dict[str, tuple[str, ...]] = {
    "attention.self.query.weight": ("inner", "hidden"), "attention.self.query.bias": ("inner",),
    "attention.self.key.weight": ("inner", "hidden"), "attention.self.key.bias": ("inner",),
    "attention.self.value.weight": ("inner", "hidden"), "attention.self.value.bias": ("inner",),
    "attention.output.dense.weight": ("hidden", "inner"), "attention.output.dense.bias": ("hidden",),
    "attention.output.LayerNorm.weight": ("hidden",), "attention.output.LayerNorm.bias": ("hidden",),
    "intermediate.dense.weight": ("ffn", "hidden"), "intermediate.dense.bias": ("ffn",),
    "output.dense.weight": ("hidden", "ffn"), "output.dense.bias": ("hidden",),
    "output.LayerNorm.weight": ("hidden",), "output.LayerNorm.bias": ("hidden",),
}
_OTHER_ROLES: dict[str, tuple[str, ...]] = {
    "bort.embeddings.word_embeddings.weight": ("all", "hidden"),
    "bort.embeddings.position_embeddings.weight": ("rows", "hidden"),
    "bort.embeddings.token_type_embeddings.weight": ("rows", "hidden"),
    "bort.embeddings.LayerNorm.weight": ("hidden",), "bort.embeddings.LayerNorm.bias": ("hidden",),
    "bort.encoder.final_layer_norm.weight": ("hidden",), "bort.encoder.final_layer_norm.bias": ("hidden",),
    "bort.pooler.dense.weight": ("hidden", "hidden"), "bort.pooler.dense.bias": ("hidden",),
    "lm_head.dense.weight": ("hidden", "hidden"), "lm_head.dense.bias": ("hidden",),
    "lm_head.layer_norm.weight": ("hidden",), "lm_head.layer_norm.bias": ("hidden",), "lm_head.bias": ("all",),
}
_LAYER_KEY = re.compile(r"^bort\.encoder\.layer\.(\d+)\.(.+)$")


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` largest scores (ties: the lower index), in ascending order."""
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return torch.sort(order).values


def _full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the `bort.` / `lm_head.` names of a BortForMaskedLM, whatever its class."""
    state = model.state_dict()
    if any(k.startswith("bort.") for k in state):
        return state
    return {f"bort.{k}": v for k, v in state.items()}  # a bare BortModel


def _check_shapes(student: BortConfig, teacher: BortConfig) -> None:
    problems = []
    for field in ("hidden_size", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        s, t = getattr(student, field), getattr(teacher, field)
        if s > t:
            problems.append(f"{field} {s} is larger than the teacher's {t}")
    if student.vocab_size != teacher.vocab_size:
        problems.append(f"vocab_size {student.vocab_size} differs from the teacher's {teacher.vocab_size}")
    s_head = student.hidden_size // student.num_attention_heads
    t_head = teacher.hidden_size // teacher.num_attention_heads
    if s_head != t_head:
        problems.append(f"head size {s_head} (hidden {student.hidden_size} / {student.num_attention_heads} heads) "
                        f"differs from the teacher's {t_head} ({teacher.hidden_size} / {teacher.num_attention_heads});"
                        f" heads are kept whole, so use {student.hidden_size // t_head} heads"
                        if student.hidden_size % t_head == 0 else
                        f"head size {s_head} differs from the teacher's {t_head} and hidden {student.hidden_size} is "
                        f"not a multiple of it")
    for field in ("embedding_style", "layer_norm_position", "hidden_act"):
        if getattr(student, field) != getattr(teacher, field):
            problems.append(f"{field} {getattr(student, field)!r} differs from the teacher's "
                            f"{getattr(teacher, field)!r}")
    if problems:
        raise CheckpointError("cannot extract the student from the teacher: " + "; ".join(problems))


def choose_units(teacher_state: Mapping[str, torch.Tensor], teacher: BortConfig, student: BortConfig,
                 teacher_layers: list[int]) -> dict[str, Any]:
    """The kept residual dimensions, and per teacher layer (0-based) the kept heads' dimensions and FFN neurons."""
    gammas = [v.float().abs() for k, v in teacher_state.items()
              if k.endswith("LayerNorm.weight") or k.endswith("final_layer_norm.weight")]
    gammas = [g for g in gammas if g.shape == (teacher.hidden_size,)]
    hidden = _top(torch.stack(gammas).sum(0), student.hidden_size)
    head_size = teacher.hidden_size // teacher.num_attention_heads
    inner, ffn = {}, {}
    for t in teacher_layers:
        p = f"bort.encoder.layer.{t}."
        value = teacher_state[p + "attention.self.value.weight"].float()
        out = teacher_state[p + "attention.output.dense.weight"].float()
        heads = torch.stack([value[h * head_size:(h + 1) * head_size].norm() *
                             out[:, h * head_size:(h + 1) * head_size].norm()
                             for h in range(teacher.num_attention_heads)])
        kept = _top(heads, student.num_attention_heads)
        inner[t] = torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in kept.tolist()])
        w_in = teacher_state[p + "intermediate.dense.weight"].float()
        w_out = teacher_state[p + "output.dense.weight"].float()
        ffn[t] = _top(w_in.norm(dim=1) * w_out.norm(dim=0), student.intermediate_size)
    return {"hidden": hidden, "inner": inner, "ffn": ffn}


def _slice(tensor: torch.Tensor, roles: tuple[str, ...], shape: torch.Size, index: dict[str, torch.Tensor]
           ) -> torch.Tensor:
    for axis, role in enumerate(roles):
        if role == "rows":
            tensor = tensor.narrow(axis, 0, shape[axis])
        elif role != "all":
            tensor = tensor.index_select(axis, index[role])
    return tensor


@torch.no_grad()
def extract_student(student: nn.Module, teacher: nn.Module, layer_map: list[tuple[int, int]]) -> dict[str, Any]:
    """Fill `student` (a BortForMaskedLM) with a sub-network of `teacher`; student layer j takes teacher layer
    `layer_map`'s partner of j (1-based pairs as `uniform_layer_map`; (0, 0) is the embeddings). Returns what was
    kept: `hidden` (residual dimensions), per student layer the teacher layer, heads and FFN neurons, and the
    student tensors left at their initialisation."""
    s_cfg: BortConfig = student.config
    t_cfg: BortConfig = teacher.config
    _check_shapes(s_cfg, t_cfg)
    t_state = _full_state(teacher)
    pairs = {s - 1: t - 1 for s, t in layer_map if s > 0}
    units = choose_units(t_state, t_cfg, s_cfg, sorted(set(pairs.values())))
    own = student.state_dict()
    copied, kept_initial = 0, []
    for key, target in own.items():
        match = _LAYER_KEY.match(key)
        if match and int(match.group(1)) in pairs and match.group(2) in _LAYER_ROLES:
            t = pairs[int(match.group(1))]
            source_key, roles = f"bort.encoder.layer.{t}.{match.group(2)}", _LAYER_ROLES[match.group(2)]
            index = {"hidden": units["hidden"], "inner": units["inner"][t], "ffn": units["ffn"][t]}
        elif key in _OTHER_ROLES:
            source_key, roles, index = key, _OTHER_ROLES[key], {"hidden": units["hidden"]}
        else:
            kept_initial.append(key)
            continue
        if source_key not in t_state:
            kept_initial.append(key)
            continue
        value = _slice(t_state[source_key], roles, target.shape, index)
        if value.shape != target.shape:  # a table above that disagrees with the model: a bug, not bad input
            raise CheckpointError(f"extracting {key} from the teacher's {source_key}: got {tuple(value.shape)}, "
                                  f"the student needs {tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
        copied += 1
    head_size = t_cfg.hidden_size // t_cfg.num_attention_heads
    return {"hidden": units["hidden"].tolist(), "copied": copied, "kept_initial": kept_initial,
            "layers": [{"student": s, "teacher": t,
                        "heads": sorted({int(i) // head_size for i in units["inner"][t].tolist()}),
                        "ffn": units["ffn"][t].tolist()} for s, t in sorted(pairs.items())]}
