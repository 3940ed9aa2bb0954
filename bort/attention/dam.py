"""Differentiable Attention Masks (SparseBERT's DAM): a per-head attention mask learned by Gumbel-softmax.

Two mechanisms, chosen by `BortConfig.attention`:

- "dam_s" (the released SparseBERT code): 2-class logits (keep, drop) per head and relative offset
  d = |i − j|, so M[h, i, j] = keep[h, |i − j|] — a learned band structure;
- "dam_u": logits per head and position pair, symmetric: the logits used for (i, j) and (j, i) are the mean
  of the two stored entries, and the Gumbel noise of (i, j), i ≤ j, is mirrored to (j, i), so every sample
  is a symmetric mask.

Training mode (the search): one hard Gumbel-softmax sample per forward of the model (fresh noise each time,
temperature τ = 1 by default) with the straight-through estimator: the forward sees exactly the 0/1 mask,
the backward the gradient of the soft sample. It enters attention as the original's additive bias
(1 − M)·(−10000) before the softmax. One difference from hard masking is kept on purpose: a row whose sample
keeps no real key spreads its attention over the dropped keys (they all carry the same bias), as in the
original, where the hard mask of the argmax eval mode gives that row 0.

The penalty (`DAMMask.penalty`, its `regularization` hook: the trainer adds λ times
`model.attention_regularization()` to the loss and logs `model.attention_statistics()`'s "mask_density"),
`attention_params` "penalty":
- "sum" (default, the original): Σ|M| over every entry of the masks of the forward, sets × heads × n × n
  of them (the original's `torch.norm(mask, p=1)` of its one (heads, 128, 128) mask). λ's strength then
  grows with n²: a λ tuned at n = 128 is 16× stronger at n = 512.
- "mean": the same sum divided by the number of entries, so λ means the same at every length. It gives
  the same loss and gradient as "sum" at n = 128 with
      λ_mean = λ_sum × sets × heads × 128 × 128
  (sets: 1 for the shared mask, as the original; the layer count with per_layer). SparseBERT (12 heads,
  one shared mask, λ = 5e-5 by default in its pretraining script) is λ_mean = 5e-5 × 12 × 128² = 9.8304.

Eval mode, `attention_params` "eval_mask":
- "argmax" (default; OUR choice, not the original's): the deterministic mask — keep where the keep-logit
  wins (an exact tie keeps) — run as a hard boolean mask through `masked.masked_attention`. It is what
  `export_mask` returns and what the "fixed_mask" mechanism executes after `bort mask export`, so a searched
  model in eval mode and its export give the same outputs, and two eval passes agree.
- "sample" (the original, whose forward draws a Gumbel sample whatever the mode): a fresh hard sample per
  forward, run as in training (the additive bias), so two evaluations of one model differ (every entry
  whose keep probability is not 0 or 1 can flip). Export and `bort mask export` still binarise by the
  argmax.

Weight decay: `DAMMask.no_weight_decay()` exempts the logits (the original's `alphas` are in a group with
weight decay 0); `train.optim.decay_param_groups` honours it in every trainer.

Sharing: the logits live in one `DAMMask` module that `BortEncoder` builds once (parameter
`encoder.dam.logits`) and every layer's mechanism refers to without registering it (so the state dict holds it
once and round-trips through save_pretrained/load_pretrained). By default one mask serves all layers: layer 0
draws the sample of the forward and the later layers reuse it. With `per_layer` each layer has its own logits
(a leading layer axis) and draws its own sample. A dense checkpoint loads into a DAM model with the logits left
as initialised (`init_if_missing`; the loader logs them as newly initialised).

Cost: the search adds O(n²) elementwise work per forward to attention's (dam_u's logits are per pair, so
a few passes over (heads, n, n) arrays, with transposed reads to symmetrise), and the biased softmax cannot
use the fused kernel, whose mask has no gradient; SparseBERT searched at n = 128. The exported fixed mask
runs at the speed of masked or block-sparse attention.

`attention_params` (`DAMParams`; unknown names are an error listing these):
    max_length   longest sequence the logits cover (default `config.max_position_embeddings`)
    init_keep    initial keep-logit minus drop-logit (default 0.0: each entry kept with probability 1/2)
    init_std     standard deviation of the random initial logits (default 1e-3, as the original)
    temperature  Gumbel-softmax temperature τ (default 1.0)
    per_layer    one mask per layer instead of one shared by all layers (default false)
    penalty      "sum" (default, the original: Σ|M|) or "mean" (Σ|M| / entries: λ independent of length)
    eval_mask    "argmax" (default, ours: the deterministic mask) or "sample" (the original: a fresh sample)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from .masked import masked_attention
from .registry import AttentionParams, attention_params, param, register_attention
from .shared_state import SharedStateAttention

KINDS = ("dam_s", "dam_u")
PENALTIES = ("sum", "mean")
EVAL_MASKS = ("argmax", "sample")
MASK_BIAS = -10000.0  # the original's additive bias for a dropped entry


MAX_MASK_LOGITS = 1 << 28  # 1 GiB of float32 logits (plus as much again for their gradient and Adam's moments)


@dataclass(frozen=True)
class DAMParams(AttentionParams):
    """The `attention_params` of dam_s and dam_u (see the module docstring)."""

    max_length: int | None = param(None, "longest sequence the logits cover (default: config.max_position_embeddings)",
                                   minimum=1)
    init_keep: float = param(0.0, "initial keep-logit minus drop-logit (default 0.0)")
    init_std: float = param(1e-3, "standard deviation of the random initial logits (default 1e-3)", minimum=0.0)
    temperature: float = param(1.0, "Gumbel-softmax temperature (default 1.0)", above=0.0)
    per_layer: bool = param(False, "one mask per layer instead of one shared by all layers (default false)")
    penalty: str = param("sum", "the mask penalty (default sum, the original's Σ|M|)", choices=PENALTIES)
    eval_mask: str = param("argmax", "the mask in eval mode (default argmax; sample is the original's)",
                           choices=EVAL_MASKS)

    kind: ClassVar[str] = ""

    def resolve(self, config: Any) -> "DAMParams":
        """max_length from the config when not given, and the logits' size checked before they are allocated:
        dam_u's grow with max_length², so a large max_length (or the default max_position_embeddings of a
        long-input config) would otherwise die in the allocator."""
        length = int(config.max_position_embeddings) if self.max_length is None else self.max_length
        sets = int(config.num_hidden_layers) if self.per_layer else 1
        pairs = self.kind == "dam_u"
        entries = sets * int(config.num_attention_heads) * length * (length if pairs else 1) * 2
        if entries > MAX_MASK_LOGITS:
            raise ConfigError(f"max_length {length} needs {entries:,} mask logits ({sets} set(s) × "
                              f"{config.num_attention_heads} heads × {length}{' × ' + str(length) if pairs else ''}"
                              f" × 2), more than the {MAX_MASK_LOGITS:,} allowed; set attention_params max_length "
                              "to the longest sequence the model will see"
                              + (" (or use dam_s, one logit pair per offset)" if pairs else ""))
        return replace(self, max_length=length)


@dataclass(frozen=True)
class DAMSParams(DAMParams):
    kind: ClassVar[str] = "dam_s"


@dataclass(frozen=True)
class DAMUParams(DAMParams):
    kind: ClassVar[str] = "dam_u"


def sample_logistic(like: torch.Tensor) -> torch.Tensor:
    """Standard logistic noise shaped like `like` (from the global RNG): the difference of two independent
    standard Gumbel draws, i.e. the Gumbel noise of a 2-class (keep, drop) sample in one draw."""
    u = torch.rand_like(like).clamp_(min=torch.finfo(like.dtype).tiny)
    noise = u.log()
    # In place: at DAM_u's sizes every extra temporary is a fresh page-faulted allocation.
    return noise.sub_(u.neg_().log1p_())


class _StraightThroughKeep(torch.autograd.Function):
    """Hard keep indicator 1[z ≥ 0] of z = (Δ + noise)/τ with the gradient of the soft sample σ(z).

    For two classes, softmax((logits + gumbels)/τ)[keep] = σ((Δ + g_keep − g_drop)/τ) with Δ = keep − drop
    logit, so this is the hard Gumbel-softmax straight-through estimator on one array instead of two (at
    n = 2048, DAM_u's pair masks are 8 heads × 4M entries: halving the passes over them matters).
    """

    @staticmethod
    def forward(ctx, delta: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:
        z = (delta + noise).div_(temperature)
        ctx.save_for_backward(z)
        ctx.temperature = temperature
        return (z >= 0).to(delta.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (z,) = ctx.saved_tensors
        soft = torch.sigmoid(z)
        return grad * soft * (1.0 - soft) / ctx.temperature, None, None


def gumbel_keep(logits: torch.Tensor, temperature: float = 1.0, gumbels: torch.Tensor | None = None) -> torch.Tensor:
    """Hard straight-through Gumbel-softmax sample of the keep class of (…, 2) logits (keep, drop).

    The value is exactly 1.0 (keep) or 0.0 (drop): the argmax of logits + Gumbel noise, a tie keeping. The
    gradient is that of the soft sample softmax((logits + noise)/τ)[…, 0]. `gumbels` (…, 2) fixes the noise;
    by default it is drawn fresh (as its logistic difference, see `sample_logistic`).
    """
    delta = logits[..., 0] - logits[..., 1]
    noise = sample_logistic(delta) if gumbels is None else gumbels[..., 0] - gumbels[..., 1]
    return _StraightThroughKeep.apply(delta, noise, float(temperature))


def _offsets(n: int, device: torch.device) -> torch.Tensor:
    """The (n, n) matrix of |i − j|."""
    idx = torch.arange(n, device=device)
    return (idx[:, None] - idx[None, :]).abs()


class _OffsetsToPairs(torch.autograd.Function):
    """(heads, n) values per offset → (heads, n, n) with M[h, i, j] = x[h, |i − j|]: a symmetric Toeplitz
    expansion. Same result as `x[:, offsets]`; measured here at n = 2048, 8 heads: the strided forward
    3.4× and the index_add backward 6.8× faster than advanced indexing (whose backward sorts 33M indices).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        heads, n = x.shape
        ctx.n = n
        # w[k] = x[|k − (n − 1)|]; row r of the strided view reads w[r:r + n], so row n − 1 − i is query i.
        w = torch.cat([x.flip(-1)[:, :-1], x], dim=-1)
        return w.as_strided((heads, n, n), (2 * n - 1, 1, 1)).flip(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        heads, n = grad.shape[0], ctx.n
        flat_offsets = _offsets(n, grad.device).flatten()
        return grad.new_zeros(heads, n).index_add_(1, flat_offsets, grad.reshape(heads, n * n))


class DAMMask(nn.Module):
    """The mask logits of a whole encoder and the masks drawn from them in the current forward.

    `logits` is (sets, heads, max_length, 2) for dam_s (one entry per offset) and (sets, heads, max_length,
    max_length, 2) for dam_u; sets is 1, or the number of layers with `per_layer`. The last masks handed out
    are kept (with their graph in training) for `penalty` and `density`; they are not state.
    """

    init_if_missing = True  # a checkpoint of another mechanism lacks the logits: keep the fresh ones

    def __init__(self, config: Any, kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown DAM kind {kind!r}; expected one of {', '.join(KINDS)}")
        p: DAMParams = attention_params(kind, config)
        self.kind = kind
        self.max_length: int = p.max_length
        self.temperature = float(p.temperature)
        self.per_layer: bool = p.per_layer
        self.penalty_mode: str = p.penalty
        self.eval_mask: str = p.eval_mask
        self.num_sets = int(config.num_hidden_layers) if self.per_layer else 1
        heads, length = int(config.num_attention_heads), self.max_length
        shape = (self.num_sets, heads, length, 2) if kind == "dam_s" else (self.num_sets, heads, length, length, 2)
        logits = torch.randn(shape) * float(p.init_std)
        logits[..., 0] += float(p.init_keep)
        self.logits = nn.Parameter(logits)
        self._current: dict[int, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, max_length={self.max_length}, temperature={self.temperature}, "
                f"per_layer={self.per_layer}, penalty={self.penalty_mode}, eval_mask={self.eval_mask}")

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay (read by `train.optim.decay_param_groups`): the logits are
        not weights; decay would pull each toward keep = drop, a keep probability of 1/2, whatever the
        penalty and the task want (the original puts its `alphas` in a group with weight decay 0)."""
        return {"logits"}

    def __getstate__(self) -> dict[str, Any]:
        # The last samples carry an autograd graph, which deepcopy and pickle refuse; they are not state.
        state = self.__dict__.copy()
        state["_current"] = {}
        return state

    # --- masks ---------------------------------------------------------------------------------------------
    def _check_length(self, n: int) -> None:
        if n > self.max_length:
            raise ValueError(f"attention {self.kind!r}: sequence length {n} exceeds the mask's max_length "
                             f"{self.max_length}; set attention_params max_length to at least {n}")

    def _delta(self, index: int, n: int) -> torch.Tensor:
        """Keep-logit minus drop-logit of set `index` at length n: (heads, n) per offset or (heads, n, n)
        per pair, symmetrised: what both the sample and the binarisation need (one array, not two classes)."""
        self._check_length(n)
        if self.kind == "dam_s":
            part = self.logits[index, :, :n]
            return part[..., 0] - part[..., 1]
        part = self.logits[index, :, :n, :n]
        delta = part[..., 0] - part[..., 1]
        return 0.5 * (delta + delta.transpose(1, 2))

    def _to_pairs(self, per_unit: torch.Tensor, n: int) -> torch.Tensor:
        """dam_s: (heads, n) per offset → (heads, n, n); dam_u: already per pair."""
        if self.kind == "dam_s":
            return _OffsetsToPairs.apply(per_unit)
        return per_unit

    def sample(self, index: int, n: int) -> torch.Tensor:
        """A fresh straight-through sample of set `index`: float (heads, n, n) of exact 0/1 values."""
        delta = self._delta(index, n)
        noise = sample_logistic(delta)
        if self.kind == "dam_u":
            # Mirror the noise of the upper triangle so the sample is symmetric and each pair one draw.
            upper = torch.ones(n, n, dtype=torch.bool, device=delta.device).triu()
            noise = torch.where(upper, noise, noise.transpose(1, 2))
        return self._to_pairs(_StraightThroughKeep.apply(delta, noise, self.temperature), n)

    def deterministic(self, index: int, n: int) -> torch.Tensor:
        """The binarised mask of set `index`: bool (heads, n, n), True where the keep-logit wins (or ties)."""
        with torch.no_grad():
            return self._to_pairs(self._delta(index, n) >= 0, n)

    def sampling(self) -> bool:
        """Whether this forward draws a sample: in training, and in eval with eval_mask "sample"."""
        return self.training or self.eval_mask == "sample"

    def mask_for(self, layer_idx: int, n: int) -> torch.Tensor:
        """The mask layer `layer_idx` uses in this forward: a float straight-through sample when `sampling`
        (shared: drawn by layer 0, reused by the others), else the bool deterministic mask."""
        index = layer_idx if self.per_layer else 0
        cached = self._current.get(index)
        sampling = self.sampling()
        # Layer 0 opens a forward; a shared mask is then reused by the later layers (the deterministic mask
        # too: that of dam_u at n = 512 is a 16 MB temporary per layer otherwise).
        reuse = (not self.per_layer and layer_idx != 0 and cached is not None and cached.shape[-1] == n
                 and (cached.dtype == torch.bool) == (not sampling))
        if not reuse:
            cached = self.sample(index, n) if sampling else self.deterministic(index, n)
            self._current[index] = cached
        return cached

    # --- what the trainer reads ------------------------------------------------------------------------
    def current(self) -> list[torch.Tensor]:
        """The masks of the last forward (one per set), or the deterministic ones at max_length before any."""
        if self._current:
            return [self._current[i] for i in sorted(self._current)]
        return [self.deterministic(i, self.max_length) for i in range(self.num_sets)]

    def penalty(self) -> torch.Tensor:
        """Σ|M| over every entry of the current masks (differentiable when sampled), divided by the number of
        entries with penalty "mean" (see the module docstring for the λ that matches "sum" at n = 128)."""
        masks = self.current()
        total = torch.stack([m.float().abs().sum() for m in masks]).sum()
        if self.penalty_mode == "mean":
            return total / sum(m.numel() for m in masks)
        return total

    def density(self) -> float:
        """Fraction of kept entries in the current masks."""
        masks = self.current()
        kept = sum(float((m > 0.5).sum()) for m in masks)
        return kept / sum(m.numel() for m in masks)

    # --- the attention hooks (see `registry`): what the model reports to any trainer ------------------------
    def regularization(self) -> torch.Tensor:
        """The penalty, which the trainer adds λ times to the loss (`BortPreTrainedModel.attention_regularization`)."""
        return self.penalty()

    def statistics(self) -> dict[str, float]:
        """Logged with the training loss (`BortPreTrainedModel.attention_statistics`)."""
        return {"mask_density": self.density()}

    def export(self, length: int | None = None) -> torch.Tensor:
        """The deterministic mask at `length` (default max_length): bool (heads, n, n), or (layers, heads,
        n, n) with per_layer."""
        n = self.max_length if length is None else int(length)
        masks = torch.stack([self.deterministic(i, n) for i in range(self.num_sets)])
        return masks if self.per_layer else masks[0]


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     key_padding_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                     need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention with an additive score bias (broadcastable to (batch, heads, n, n)) and key padding
    (batch, n; True = real token). The bias stays differentiable (the search path of DAM).

    A sequence with no real token at all gives output 0 (and probabilities 0), as `masked_attention` does for
    empty rows; the bias alone never empties a row.
    """
    mask = bias.to(q.dtype)
    empty = None
    if mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if key_padding_mask is not None:
        real = key_padding_mask.bool()
        empty = ~real.any(dim=-1)  # (batch,)
        if bool(empty.any()):
            real = real | empty[:, None]
        else:
            empty = None
        # finfo.min rather than −inf: the row keeps at least one finite score, so nothing becomes NaN.
        mask = mask.masked_fill(~real[:, None, None, :], torch.finfo(q.dtype).min)
    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        probs = None
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask
        probs = scores.softmax(dim=-1)
        out = torch.matmul(F.dropout(probs, dropout_p), v)
    if empty is not None:
        out = out.masked_fill(empty[:, None, None, None], 0.0)
        probs = probs.masked_fill(empty[:, None, None, None], 0.0) if probs is not None else None
    return out, probs


class DAMAttention(SharedStateAttention):
    """Softmax attention under the encoder's DAM mask (see the module docstring); `kind` names the variant."""

    kind: str = ""
    shared_hint = "bind_shared(DAMMask(config, kind))"

    @classmethod
    def build_shared(cls, config: Any) -> tuple[str, nn.Module]:
        """The encoder-level module holding the logits, and the attribute name the encoder gives it."""
        return "dam", DAMMask(config, cls.kind)

    def __init__(self, config: Any, layer_idx: int = 0) -> None:
        super().__init__()
        attention_params(self.kind, config)  # a misspelt parameter fails when the model is built
        self.layer_idx = int(layer_idx)
        self.dropout = float(config.attention_probs_dropout_prob)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        dam: DAMMask = self.shared(self.kind)
        n = self.self_attention_length(self.kind, q, k)
        mask = dam.mask_for(self.layer_idx, n)
        p = self.dropout if self.training else 0.0
        if mask.dtype == torch.bool:
            allowed = mask[None]
            if key_padding_mask is not None:
                allowed = allowed & key_padding_mask.bool()[:, None, None, :]
            return masked_attention(q, k, v, allowed, dropout_p=p, need_weights=need_weights)
        bias = (mask - 1.0).mul_(-MASK_BIAS)  # (1 − M)·(−10000), one temporary
        return biased_attention(q, k, v, bias, key_padding_mask, p, need_weights)


@register_attention("dam_s", params=DAMSParams)
class DAMSAttention(DAMAttention):
    """DAM_s: a learned mask per head and relative offset |i − j| (SparseBERT's released variant)."""

    kind = "dam_s"


@register_attention("dam_u", params=DAMUParams)
class DAMUAttention(DAMAttention):
    """DAM_u: a learned symmetric mask per head and position pair."""

    kind = "dam_u"


# --- helpers for trainers and export -----------------------------------------------------------------------
def dam_masks(model: nn.Module) -> list[DAMMask]:
    """Every `DAMMask` in `model` (one per encoder)."""
    return [m for m in model.modules() if isinstance(m, DAMMask)]


def mask_penalty(model: nn.Module) -> torch.Tensor | None:
    """The penalty of the masks sampled in the model's last forward (`DAMMask.penalty`: Σ|M| over mask sets,
    one or one per layer, or its mean over entries with penalty "mean"), summed over the model's DAM masks;
    None when the model has no DAM attention. The trainer adds λ times this to the loss."""
    masks = dam_masks(model)
    if not masks:
        return None
    return torch.stack([m.penalty() for m in masks]).sum()


def mask_density(model: nn.Module) -> float | None:
    """Fraction of kept entries in the masks of the last forward (before any, the deterministic masks at
    max_length); None when the model has no DAM attention."""
    masks = dam_masks(model)
    if not masks:
        return None
    return sum(m.density() for m in masks) / len(masks)


def export_mask(model: nn.Module, length: int | None = None) -> torch.Tensor:
    """The binarised mask of a searched model (keep where the keep-logit wins): bool (heads, n, n), or
    (layers, heads, n, n) for a per-layer search; n is `length` or the logits' max_length."""
    masks = dam_masks(model)
    if len(masks) != 1:
        attention = getattr(getattr(model, "config", None), "attention", "?")
        raise ValueError(f"export needs a model with one DAM mask (attention 'dam_s' or 'dam_u'); this one has "
                         f"{len(masks)} (attention {attention!r})")
    return masks[0].export(length)
