"""Distillation losses: hard MLM, logit KD (ours and Bort's original), hidden-state and attention matching.

Conventions shared by every function here:

- Masked-LM tensors are gathered at the masked positions: logits (batch, P, vocab) — or already flat
  (N, vocab) — with `masked_ids` and `masked_weights` of the leading shape. A weight is 1 for a real
  prediction and 0 for padding (records hold at most `max_predictions_per_seq` predictions).
- "Normalised by the number of masked tokens" means: sum the per-token losses times their weights, then
  divide by `sum(masked_weights) + 1e-8`, exactly as the original Bort script does (the 1e-8 makes a batch
  without predictions give 0 instead of NaN and changes nothing else measurable).
- Everything is computed in float32 whatever the input dtype (bf16/fp16 autocast), and teacher tensors are
  detached: the teacher is a fixed target.
- Hidden states follow `BortModel`'s indexing: `hidden_states[0]` is the embedding output and
  `hidden_states[j]` the output of layer j (1-based); `attentions[j - 1]` is layer j's probabilities.
  A layer map is a list of `(student_index, teacher_index)` pairs in that indexing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# The original script's normaliser is `masked_weight.sum() + 1e-8`.
MASK_COUNT_EPS = 1e-8
# MXNet's KLDivLoss takes log(label + 1e-12).
MXNET_KL_EPS = 1e-12
# Floor for attention probabilities before the log: float32 underflows to exact zeros far from the max.
PROB_EPS = 1e-12

LayerMap = Sequence[tuple[int, int]]


# ---------------------------------------------------------------------------------------------------------
# Masked-position helpers


def _flatten_masked(logits: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(…, V) logits and (…) weights → (N, V) float32 and (N,) float32, checking they line up."""
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_weights = weights.reshape(-1).to(torch.float32)
    if flat_weights.numel() != flat_logits.shape[0]:
        raise ValueError(f"masked_weights {tuple(weights.shape)} do not match logits {tuple(logits.shape)}: "
                         f"{flat_weights.numel()} weights for {flat_logits.shape[0]} predictions")
    return flat_logits, flat_weights


def _mask_count(weights: torch.Tensor) -> torch.Tensor:
    return weights.sum() + MASK_COUNT_EPS


def _check_same_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"logit KD needs one vocabulary: the student predicts {student_logits.shape[-1]} ids, "
                         f"the teacher {teacher_logits.shape[-1]}; set the KD weight to 0 and match hidden "
                         f"states/attentions instead")
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} are not at the same masked positions")


# ---------------------------------------------------------------------------------------------------------
# Logit losses


def mlm_loss(student_logits: torch.Tensor, masked_ids: torch.Tensor, masked_weights: torch.Tensor) -> torch.Tensor:
    """Hard masked-LM cross-entropy: Σ_i w_i · (−log softmax(z_i)[y_i]) / (Σ_i w_i + 1e-8).

    Summed over masked tokens i (weighted), averaged over the number of masked tokens; the vocabulary axis
    is the softmax axis, not averaged. Ids at zero-weight (padding) slots may hold any value.
    """
    logits, weights = _flatten_masked(student_logits, masked_weights)
    ids = masked_ids.reshape(-1).long()
    if ids.numel() != logits.shape[0]:
        raise ValueError(f"masked_ids {tuple(masked_ids.shape)} do not match logits {tuple(student_logits.shape)}")
    # Padding slots may carry -1, -100 or a pad id past the vocabulary; any valid index does, weight 0 drops it.
    ids = torch.where(weights > 0, ids, torch.zeros_like(ids))
    per_token = F.cross_entropy(logits, ids, reduction="none")
    return (per_token * weights).sum() / _mask_count(weights)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, masked_weights: torch.Tensor,
            temperature: float = 2.0) -> torch.Tensor:
    """Logit distillation: T² · Σ_i w_i · KL(p_t,i ‖ p_s,i) / (Σ_i w_i + 1e-8), p = softmax(z / T).

    The KL divergence of each masked token is a *sum* over the vocabulary
    (Σ_v p_t,v (log p_t,v − log p_s,v)); tokens are *averaged* (weighted by `masked_weights`). T² keeps the
    gradient scale independent of the temperature (Hinton et al.). Zero when student and teacher logits agree.
    """
    _check_same_vocab(student_logits, teacher_logits)
    student, weights = _flatten_masked(student_logits, masked_weights)
    teacher, _ = _flatten_masked(teacher_logits.detach(), masked_weights)
    log_ps = F.log_softmax(student / temperature, dim=-1)
    log_pt = F.log_softmax(teacher / temperature, dim=-1)
    # log_target keeps entries with p_t = 0 exact (0 · log 0 = 0) instead of NaN.
    per_token = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return temperature ** 2 * (per_token * weights).sum() / _mask_count(weights)


def bort_compat_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, masked_weights: torch.Tensor,
                        temperature: float = 2.0) -> torch.Tensor:
    """The original Bort KD term, reproduced exactly (the `teacher_ce` of its logs).

    The original feeds MXNet `gluon.loss.KLDivLoss(from_logits=False)` the tempered *probabilities* of the
    student, q_s = softmax(z_s / T), as `pred`, and q_t = softmax(z_t / T) as `label`, with the mask weights
    as `sample_weight` (shape (N, 1)). That loss applies log_softmax to `pred` again (a double softmax) and
    averages — not sums — over the vocabulary:

        row_i = w_i · mean_v[ q_t,iv · (log(q_t,iv + 1e-12) − log_softmax(q_s,i)_v) ]

    and the script then returns T² · Σ_i row_i / (Σ_i w_i + 1e-8).

    Because q_s lies in [0, 1], log_softmax(q_s) is close to −log V everywhere: the term is nearly constant
    and its gradient is about 1/V of a real KL's. Use `kd_loss` unless you need the original numbers.
    """
    _check_same_vocab(student_logits, teacher_logits)
    student, weights = _flatten_masked(student_logits, masked_weights)
    teacher, _ = _flatten_masked(teacher_logits.detach(), masked_weights)
    q_s = F.softmax(student / temperature, dim=-1)
    q_t = F.softmax(teacher / temperature, dim=-1)
    elementwise = q_t * (torch.log(q_t + MXNET_KL_EPS) - F.log_softmax(q_s, dim=-1))
    per_token = (elementwise * weights[:, None]).mean(-1)
    return temperature ** 2 * per_token.sum() / _mask_count(weights)


def bort_teacher_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, masked_weights: torch.Tensor,
                     temperature: float = 2.0) -> torch.Tensor:
    """The original's logged-but-not-trained `teacher_mse`: MXNet `L2Loss` on the tempered distributions.

        T² · Σ_i w_i · mean_v[ ½ (q_t,iv − q_s,iv)² ] / (Σ_i w_i + 1e-8),   q = softmax(z / T)

    (L2Loss halves the squared error and averages over the vocabulary axis.)
    """
    _check_same_vocab(student_logits, teacher_logits)
    student, weights = _flatten_masked(student_logits, masked_weights)
    teacher, _ = _flatten_masked(teacher_logits.detach(), masked_weights)
    q_s = F.softmax(student / temperature, dim=-1)
    q_t = F.softmax(teacher / temperature, dim=-1)
    per_token = (0.5 * (q_t - q_s).square() * weights[:, None]).mean(-1)
    return temperature ** 2 * per_token.sum() / _mask_count(weights)


# ---------------------------------------------------------------------------------------------------------
# Intermediate-layer matching


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int,
                      include_embeddings: bool = True) -> list[tuple[int, int]]:
    """Spread the student's layers evenly over the teacher's (TinyBERT's uniform strategy).

    Student layer j (1-based, = `hidden_states[j]`) ↔ teacher layer round(j · T / S), rounding halves up,
    so the last student layer always meets the last teacher layer; embeddings ↔ embeddings as (0, 0).
    """
    if num_student_layers <= 0 or num_teacher_layers <= 0:
        raise ValueError(f"layer counts must be positive, got student {num_student_layers}, "
                         f"teacher {num_teacher_layers}")
    s, t = num_student_layers, num_teacher_layers
    # Integer arithmetic for round-half-up: floor(j·t/s + 1/2) = (2·j·t + s) // (2·s).
    pairs = [(j, (2 * j * t + s) // (2 * s)) for j in range(1, s + 1)]
    return ([(0, 0)] if include_embeddings else []) + pairs


def _real_token_mask(attention_mask: torch.Tensor | None, batch: int, seq: int,
                     device: torch.device) -> torch.Tensor:
    """(batch, seq) float mask of real tokens (1) and padding (0); all ones when no mask is given."""
    if attention_mask is None:
        return torch.ones(batch, seq, dtype=torch.float32, device=device)
    if tuple(attention_mask.shape) != (batch, seq):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match the models' "
                         f"(batch {batch}, seq {seq})")
    return attention_mask.to(device=device, dtype=torch.float32)


def _check_layer_map(layer_map: LayerMap, n_student: int, n_teacher: int, what: str) -> None:
    for s, t in layer_map:
        if not (0 <= s < n_student and 0 <= t < n_teacher):
            raise ValueError(f"layer map pair ({s}, {t}) is out of range for {n_student} student and "
                             f"{n_teacher} teacher {what}")


class HiddenStateLoss(nn.Module):
    """TinyBERT-style hidden-state matching through learned projections.

    For each mapped pair (j_s, j_t) a `nn.Linear(student_dim, teacher_dim)` maps the student state to the
    teacher's width; the loss of a pair is the squared error summed over features and real tokens, divided
    by (number of real tokens · teacher_dim) — the mean over real elements. Padded positions
    (`attention_mask` 0) contribute nothing. Pairs are *averaged* (TinyBERT sums), so the weight need not
    be retuned when the layer map changes length.

    The projections are trainable parameters of this module: give them to the optimiser and save them with
    the trainer's state. They are still used when the widths agree (`project=False` drops them then).
    """

    def __init__(self, student_dim: int, teacher_dim: int, layer_map: LayerMap, project: bool = True) -> None:
        super().__init__()
        if not layer_map:
            raise ValueError("the layer map is empty: nothing to match")
        if not project and student_dim != teacher_dim:
            raise ValueError(f"project=False needs equal widths, got student {student_dim}, teacher {teacher_dim}")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        self.projections = nn.ModuleList(
            nn.Linear(student_dim, teacher_dim) if project else nn.Identity() for _ in self.layer_map)

    def forward(self, student_hidden_states: Sequence[torch.Tensor], teacher_hidden_states: Sequence[torch.Tensor],
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_layer_map(self.layer_map, len(student_hidden_states), len(teacher_hidden_states), "hidden states")
        losses = []
        for (s, t), projection in zip(self.layer_map, self.projections):
            student, teacher = student_hidden_states[s], teacher_hidden_states[t].detach()
            if student.shape[:2] != teacher.shape[:2]:
                raise ValueError(f"student hidden states {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                                 f"cover different tokens: both models must read the same token ids "
                                 f"(the same tokenizer)")
            mask = _real_token_mask(attention_mask, student.shape[0], student.shape[1], student.device)
            error = (projection(student).float() - teacher.float()).square().sum(-1)
            losses.append((error * mask).sum() / (mask.sum().clamp_min(1.0) * self.teacher_dim))
        return torch.stack(losses).mean()


class AttentionLoss(nn.Module):
    """Attention-distribution matching (TinyBERT/MiniLM style) on the models' softmax probabilities.

    `kind="kl"` (MiniLM): for each real query row, KL(A_t ‖ A_s) summed over real keys, averaged over
    (batch, heads, real queries). `kind="mse"`: squared error averaged over real (query, key) pairs and
    heads (TinyBERT uses raw scores; the models here expose probabilities, so this is MSE on those).
    Padded queries and keys are ignored. Pairs of the layer map with index 0 (embeddings have no attention)
    are skipped; pairs are averaged.

    Heads: with equal head counts head h is compared with head h. When they differ, or with
    `average_heads=True`, both sides are averaged over heads first — a head-averaged row is still a
    distribution over keys, so KL stays meaningful — and that single distribution is compared.
    """

    def __init__(self, layer_map: LayerMap, kind: str = "kl", average_heads: bool | None = None) -> None:
        super().__init__()
        if kind not in ("kl", "mse"):
            raise ValueError(f"attention loss kind must be 'kl' or 'mse', got {kind!r}")
        self.kind = kind
        self.average_heads = average_heads
        self.layer_map = [(int(s), int(t)) for s, t in layer_map if s > 0 and t > 0]
        if not self.layer_map:
            raise ValueError(f"the layer map {list(layer_map)} has no pair of attention layers (indices ≥ 1)")

    def forward(self, student_attentions: Sequence[torch.Tensor], teacher_attentions: Sequence[torch.Tensor],
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # Attention tuples have no embedding entry: layer j lives at index j - 1.
        _check_layer_map([(s - 1, t - 1) for s, t in self.layer_map], len(student_attentions),
                         len(teacher_attentions), "attention layers")
        losses = []
        for s, t in self.layer_map:
            student, teacher = student_attentions[s - 1], teacher_attentions[t - 1]
            if student is None or teacher is None:
                raise ValueError("attention probabilities missing: run both models with output_attentions=True")
            losses.append(self._layer_loss(student.float(), teacher.detach().float(), attention_mask))
        return torch.stack(losses).mean()

    def _layer_loss(self, student: torch.Tensor, teacher: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
            raise ValueError(f"student attentions {tuple(student.shape)} and teacher {tuple(teacher.shape)} cover "
                             f"different tokens: both models must read the same token ids (the same tokenizer)")
        average = self.average_heads if self.average_heads is not None else student.shape[1] != teacher.shape[1]
        if average:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        elif student.shape[1] != teacher.shape[1]:
            raise ValueError(f"student has {student.shape[1]} heads, teacher {teacher.shape[1]}: compare "
                             f"head-averaged distributions (average_heads=None or True)")
        heads = student.shape[1]
        real = _real_token_mask(attention_mask, student.shape[0], student.shape[-1], student.device)
        query = real[:, None, :, None]
        key = real[:, None, None, :]
        if self.kind == "kl":
            log_ratio = torch.log(teacher.clamp_min(PROB_EPS)) - torch.log(student.clamp_min(PROB_EPS))
            per_row = (teacher * log_ratio * key).sum(-1, keepdim=True)
            return (per_row * query).sum() / (heads * real.sum()).clamp_min(1.0)
        pairs = query * key
        count = heads * (real.sum(-1) ** 2).sum()
        return ((student - teacher).square() * pairs).sum() / count.clamp_min(1.0)


# ---------------------------------------------------------------------------------------------------------
# The composite objective


class DistillationLoss(nn.Module):
    """mlm_weight · MLM + kd_weight · KD + hidden_weight · hidden + attention_weight · attention.

    `forward` returns `(total, components)`; `components` holds floats for logging: each term's unweighted
    value ("mlm", "kd", "hidden", "attention"), Bort's logged-only "teacher_mse" when the teacher has
    logits, and "total". A term whose weight is 0 is still logged when its inputs are there (computed
    without gradient); it is not added.

    `bort_compat_kd=True` swaps the KD term for `bort_compat_kd_loss`. Logit KD needs the teacher's MLM
    head and the student's vocabulary: for a teacher without one (e.g. a sentence-embedding MiniLM) or with
    another vocabulary, `kd_weight` must be 0 — the constructor raises otherwise. Hidden/attention matching
    needs the modules (see `from_configs`), which own trainable projections: optimise and checkpoint them.
    """

    def __init__(self, mlm_weight: float = 0.1, kd_weight: float = 0.5, hidden_weight: float = 0.0,
                 attention_weight: float = 0.0, temperature: float = 2.0, bort_compat_kd: bool = False,
                 hidden_loss: HiddenStateLoss | None = None, attention_loss: AttentionLoss | None = None,
                 student_vocab_size: int | None = None, teacher_vocab_size: int | None = None,
                 teacher_has_mlm_head: bool = True) -> None:
        super().__init__()
        for name, value in (("mlm_weight", mlm_weight), ("kd_weight", kd_weight),
                            ("hidden_weight", hidden_weight), ("attention_weight", attention_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if kd_weight > 0 and not teacher_has_mlm_head:
            raise ValueError(f"kd_weight is {kd_weight} but the teacher has no MLM head, so there are no teacher "
                             f"logits to distil; set kd_weight 0 and use hidden_weight/attention_weight")
        if (kd_weight > 0 and student_vocab_size is not None and teacher_vocab_size is not None
                and student_vocab_size != teacher_vocab_size):
            raise ValueError(f"kd_weight is {kd_weight} but the vocabularies differ: student {student_vocab_size} "
                             f"ids, teacher {teacher_vocab_size}; logit KD needs one vocabulary — set kd_weight 0 "
                             f"and use hidden_weight/attention_weight")
        if mlm_weight == kd_weight == hidden_weight == attention_weight == 0:
            raise ValueError("every loss weight is 0: nothing to train")
        if hidden_weight > 0 and hidden_loss is None:
            raise ValueError("hidden_weight > 0 needs a HiddenStateLoss (see DistillationLoss.from_configs)")
        if attention_weight > 0 and attention_loss is None:
            raise ValueError("attention_weight > 0 needs an AttentionLoss (see DistillationLoss.from_configs)")
        self.mlm_weight, self.kd_weight = float(mlm_weight), float(kd_weight)
        self.hidden_weight, self.attention_weight = float(hidden_weight), float(attention_weight)
        self.temperature = float(temperature)
        self.bort_compat_kd = bool(bort_compat_kd)
        self.hidden_loss = hidden_loss
        self.attention_loss = attention_loss

    @classmethod
    def from_configs(cls, student_config: Any, teacher_config: Any, *, teacher_has_mlm_head: bool,
                     mlm_weight: float = 0.1, kd_weight: float = 0.5, hidden_weight: float = 0.0,
                     attention_weight: float = 0.0, temperature: float = 2.0, bort_compat_kd: bool = False,
                     layer_map: LayerMap | None = None, attention_kind: str = "kl") -> DistillationLoss:
        """Build the loss for two model configs (`hidden_size`, `num_hidden_layers`, `vocab_size`), with the
        uniform layer map unless one is given."""
        if layer_map is None:
            layer_map = uniform_layer_map(student_config.num_hidden_layers, teacher_config.num_hidden_layers)
        hidden = (HiddenStateLoss(student_config.hidden_size, teacher_config.hidden_size, layer_map)
                  if hidden_weight > 0 else None)
        attention = AttentionLoss(layer_map, kind=attention_kind) if attention_weight > 0 else None
        return cls(mlm_weight=mlm_weight, kd_weight=kd_weight, hidden_weight=hidden_weight,
                   attention_weight=attention_weight, temperature=temperature, bort_compat_kd=bort_compat_kd,
                   hidden_loss=hidden, attention_loss=attention, student_vocab_size=student_config.vocab_size,
                   teacher_vocab_size=teacher_config.vocab_size, teacher_has_mlm_head=teacher_has_mlm_head)

    @property
    def needs_teacher(self) -> bool:
        """Whether any weighted term reads the teacher's outputs. When none does (a teacher given only to
        initialise the student, `--student-init extract` with MLM alone), the teacher is not run."""
        return self.kd_weight > 0 or self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def needs_hidden_states(self) -> bool:
        """Whether both models must run with `output_hidden_states=True`."""
        return self.hidden_weight > 0

    @property
    def needs_attentions(self) -> bool:
        """Whether both models must run with `output_attentions=True` (the slower explicit-softmax path)."""
        return self.attention_weight > 0

    def forward(self, student: Any, teacher: Any | None, masked_ids: torch.Tensor, masked_weights: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """`student`: a `HeadOutput` (`.logits` at masked positions, `.hidden_states`, `.attentions`);
        `teacher`: the same or an `EncoderOutput` (no logits), or None for MLM-only training."""
        components: dict[str, float] = {}
        terms: list[torch.Tensor] = []

        def add(name: str, weight: float, compute) -> None:
            if weight > 0:
                value = compute()
                terms.append(weight * value)
            else:
                with torch.no_grad():
                    value = compute()
            components[name] = float(value.detach())

        logits = student.logits
        add("mlm", self.mlm_weight, lambda: mlm_loss(logits, masked_ids, masked_weights))

        teacher_logits = getattr(teacher, "logits", None) if teacher is not None else None
        if self.kd_weight > 0 and teacher_logits is None:
            raise ValueError(f"kd_weight is {self.kd_weight} but the teacher returned no logits (no MLM head)")
        if teacher_logits is not None and (self.kd_weight > 0 or teacher_logits.shape == logits.shape):
            kd = bort_compat_kd_loss if self.bort_compat_kd else kd_loss
            add("kd", self.kd_weight, lambda: kd(logits, teacher_logits, masked_weights, self.temperature))
            with torch.no_grad():
                components["teacher_mse"] = float(
                    bort_teacher_mse(logits, teacher_logits, masked_weights, self.temperature))

        if self.hidden_weight > 0:
            add("hidden", self.hidden_weight,
                lambda: self.hidden_loss(_need(student, "hidden_states"), _need(teacher, "hidden_states"),
                                         attention_mask))
        if self.attention_weight > 0:
            add("attention", self.attention_weight,
                lambda: self.attention_loss(_need(student, "attentions"), _need(teacher, "attentions"),
                                            attention_mask))

        total = torch.stack(terms).sum() if terms else logits.new_zeros((), dtype=torch.float32)
        components["total"] = float(total.detach())
        return total, components


def _need(output: Any, field: str) -> Sequence[torch.Tensor]:
    value = getattr(output, field, None) if output is not None else None
    if value is None:
        flag = "output_hidden_states" if field == "hidden_states" else "output_attentions"
        raise ValueError(f"the loss needs {field} from both models: run them with {flag}=True")
    return value
