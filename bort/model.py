"""The encoder and its task heads.

One post-LayerNorm Transformer encoder reproduces three graphs from config switches: GluonNLP's Bort (no
token types, positions from 0, embedding dropout before the LayerNorm), Hugging Face BERT (token types,
pooler) and RoBERTa (position offset 2). Parameter names are Hugging Face BERT's, so our state dicts load
into `transformers` with a prefix change at most (see `checkpoint.hf`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import get_attention
from .config import BortConfig

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # erf form, as GluonNLP and HF "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
}


@dataclass
class EncoderOutput:
    """What `BortModel` returns; `masked_hidden_state` is set when `masked_positions` is given."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    masked_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class HeadOutput:
    """What the task heads return: `logits`, a `loss` when labels are given, and the encoder's outputs."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class BortEmbeddings(nn.Module):
    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        else:
            self.token_type_embeddings = None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        n = input_ids.shape[1]
        if n > self.config.max_sequence_length:
            raise ValueError(f"input length {n} exceeds the model's {self.config.max_sequence_length} positions: "
                             f"input_ids has {n} tokens per row, expected at most {self.config.max_sequence_length} "
                             f"(max_position_embeddings {self.config.max_position_embeddings} - position_offset "
                             f"{self.config.position_offset})")
        positions = torch.arange(self.config.position_offset, self.config.position_offset + n,
                                 device=input_ids.device)
        x = self.word_embeddings(input_ids)
        types = None
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            types = self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None and bool((token_type_ids != 0).any()):
            raise ValueError("token_type_ids given but this model has no token-type embedding (type_vocab_size 0)")
        if self.config.embedding_style == "gluon":
            # GluonNLP: dropout on each embedding before the sum, again after, then LayerNorm.
            x = self.dropout(x)
            if types is not None:
                x = x + self.dropout(types)
            return self.LayerNorm(self.dropout(x + self.position_embeddings(positions)))
        x = x + self.position_embeddings(positions)
        if types is not None:
            x = x + types
        return self.dropout(self.LayerNorm(x))


class BortSelfAttention(nn.Module):
    def __init__(self, config: BortConfig, layer_idx: int) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.mechanism = get_attention(config.attention)(config, layer_idx)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Three projections, not one fused GEMM: fusing measured 0.93-1.04x here (its 3x larger output
        # crosses glibc's mmap threshold at long inputs and page-faults on every call; bench history).
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        out, probs = self.mechanism(q, k, v, key_padding_mask=key_padding_mask, need_weights=need_weights)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim), probs


class BortSelfOutput(nn.Module):
    """Projection → dropout → residual → LayerNorm (HF `attention.output`, Gluon `proj` + `layer_norm`)."""

    def __init__(self, config: BortConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BortAttention(nn.Module):
    def __init__(self, config: BortConfig, layer_idx: int) -> None:
        super().__init__()
        self.self = BortSelfAttention(config, layer_idx)
        self.output = BortSelfOutput(config, config.hidden_size)


class BortIntermediate(nn.Module):
    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BortLayer(nn.Module):
    """A Transformer cell: attention block then feed-forward block, each with a residual and a LayerNorm.

    Post-LN (default): x → LN(x + block(x)). Pre-LN (`layer_norm_position` "pre"): x → x + block(LN(x)), with
    the same LayerNorm modules (`attention.output.LayerNorm` before attention, `output.LayerNorm` before the
    feed-forward block), so both layouts have the same parameter names.
    """

    def __init__(self, config: BortConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_ln = config.layer_norm_position == "pre"
        self.attention = BortAttention(config, layer_idx)
        self.intermediate = BortIntermediate(config)
        self.output = BortSelfOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_ln:
            att, ffn = self.attention.output, self.output
            attn, probs = self.attention.self(att.LayerNorm(x), key_padding_mask, need_weights)
            h = x + att.dropout(att.dense(attn))
            return h + ffn.dropout(ffn.dense(self.intermediate(ffn.LayerNorm(h)))), probs
        attn, probs = self.attention.self(x, key_padding_mask, need_weights)
        h = self.attention.output(attn, x)
        return self.output(self.intermediate(h), h), probs


class BortEncoder(nn.Module):
    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BortLayer(config, i) for i in range(config.num_hidden_layers))
        # Pre-LN leaves the residual stream unnormalised: one LayerNorm after the last layer (None for post-LN).
        self.final_layer_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                                 if config.layer_norm_position == "pre" else None)
        # A mechanism whose state belongs to the whole encoder (DAM's mask logits, an exported fixed mask)
        # builds it here once, under its own name, and every layer's mechanism refers to that one module.
        build_shared = getattr(get_attention(config.attention), "build_shared", None)
        if build_shared is not None:
            name, shared = build_shared(config)
            self.add_module(name, shared)
            for layer in self.layer:
                layer.attention.self.mechanism.bind_shared(shared)

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> EncoderOutput:
        """Run the layers (and the pre-LN final LayerNorm) over `hidden` (batch, seq, width), the embeddings.

        `key_padding_mask` (batch, seq) is 1/True for real tokens (HF's `attention_mask`); None, or a mask
        without padding, runs the mechanisms' unmasked fast path (see `_key_padding_mask`). With
        `output_hidden_states` the result holds the embeddings and every layer's output (the last one
        normalised, as HF's pre-LN encoders), with `output_attentions` every layer's probabilities.
        """
        mask = _key_padding_mask(key_padding_mask, hidden.shape[:2])
        hidden_states = [hidden] if output_hidden_states else None
        attentions = [] if output_attentions else None
        x = hidden
        for layer in self.layer:
            x, probs = layer(x, mask, need_weights=output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(probs)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
            if hidden_states is not None:
                hidden_states[-1] = x
        return EncoderOutput(last_hidden_state=x,
                             hidden_states=tuple(hidden_states) if hidden_states is not None else None,
                             attentions=tuple(attentions) if attentions is not None else None)


class BortPooler(nn.Module):
    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BortPreTrainedModel(nn.Module):
    """Shared initialisation and construction from a config."""

    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config

    def init_weights(self, *roots: nn.Module) -> None:
        """BERT initialisation of `roots` (default: the whole model): N(0, initializer_range) weights,
        zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        for module in (m for root in (roots or (self,)) for m in root.modules()):
            if isinstance(module, nn.Linear):
                self.init_linear(module)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def init_linear(self, module: nn.Linear) -> None:
        """BERT's Linear initialisation: N(0, initializer_range) weights, zero bias (a subclass may differ)."""
        nn.init.normal_(module.weight, std=self.config.initializer_range)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def uses_token_types(self) -> bool:
        """Whether the model embeds `token_type_ids` (BERT); RoBERTa-style and Bort models take none."""
        return self.config.type_vocab_size > 0

    def _attention_hooks(self, hook: str) -> list:
        """The bound `hook` method of every submodule that defines it (see `attention.registry`)."""
        return [getattr(m, hook) for m in self.modules()
                if not isinstance(m, BortPreTrainedModel) and callable(getattr(m, hook, None))]

    def attention_regularization(self) -> torch.Tensor | None:
        """The sum of every attention module's `regularization()` term for the last forward (DAM's mask
        penalty), which a trainer adds to the loss times its weight; None when no module has one, so a
        trainer asked for a weight can refuse a model with nothing to regularise."""
        terms = [hook() for hook in self._attention_hooks("regularization")]
        return torch.stack(terms).sum() if terms else None

    def attention_statistics(self) -> dict[str, float]:
        """Every attention module's `statistics()` (e.g. DAM's "mask_density"), for the training log; a name
        reported by several modules (one per encoder) is averaged. Empty when no module reports any."""
        values: dict[str, list[float]] = {}
        for hook in self._attention_hooks("statistics"):
            for name, value in hook().items():
                values.setdefault(name, []).append(float(value))
        return {name: sum(v) / len(v) for name, v in values.items()}


class EmptyRowWarning(UserWarning):
    """A batch row whose attention mask holds no real token (see `check_inputs`)."""


# What nn.Embedding accepts as indices.
_INDEX_DTYPES = (torch.int64, torch.int32)


def _checks_enabled() -> bool:
    """Input checks read values back to the host; a traced or compiled graph must not depend on data, so
    they are skipped there (the eager call that produced the example inputs has checked them)."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def _first_at(tensor: torch.Tensor, value: int | float) -> str:
    """Where `value` (NaN included) first occurs in `tensor`, e.g. "row 1, position 3" (for error messages)."""
    hits = (tensor.isnan() if value != value else tensor == value).nonzero()
    if not len(hits):
        return "an unknown place"
    where = hits[0].tolist()
    return f"row {where[0]}, position {where[1]}" if len(where) == 2 else f"index {tuple(where)}"


def _require_integer(name: str, tensor: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    """`tensor` holds integers (of one of `dtypes` when given: what nn.Embedding accepts as indices)."""
    bad = (tensor.dtype not in dtypes if dtypes is not None else
           tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)
    if bad:
        expected = " or ".join(str(d).replace("torch.", "") for d in dtypes) if dtypes else "an integer dtype"
        got = str(tensor.dtype).replace("torch.", "")
        raise ValueError(f"{name} must hold integer ids ({expected}), got dtype {got}")


def check_inputs(config: BortConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None) -> None:
    """Raise ValueError naming the argument, the offending value, where it is and the allowed range, for
    inputs that would otherwise fail inside torch with a bare index error (or give garbage silently):

    - `input_ids` outside 0..vocab_size-1, `token_type_ids` outside 0..type_vocab_size-1 (or non-zero in a
      model without token types), `masked_positions` outside 0..seq-1;
    - an `attention_mask` holding anything but 0 and 1 (bool masks are fine): a fractional or additive
      (0/-inf) mask means the caller expects a convention this model does not use;
    - an `attention_mask` with no real token in the whole batch: nothing could be attended anywhere, so it is a
      caller's mistake (an inverted or additive mask, or a batch of empty examples).

    A *row* without a real token only warns (`EmptyRowWarning`): every mechanism defines its output (attention
    over nothing gives zeros, never NaN, and the tests hold them to it), and batches padded to a fixed shape
    (multiple choice with fewer choices, a last distributed batch) may hold such rows on purpose; but as every
    tokenised example has at least its [CLS] token, a user should learn that one is there.

    Cost: one min/max (or equality) reduction per argument and a single read-back for all of them.
    Skipped while tracing or compiling (`_checks_enabled`).
    """
    if not _checks_enabled():
        return
    _require_integer("input_ids", input_ids, _INDEX_DTYPES)
    length = input_ids.shape[1]
    if token_type_ids is not None:
        _require_integer("token_type_ids", token_type_ids, _INDEX_DTYPES)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids shape {tuple(token_type_ids.shape)} does not match input_ids "
                             f"{tuple(input_ids.shape)}")
    if masked_positions is not None:
        _require_integer("masked_positions", masked_positions)
    if input_ids.numel() == 0:
        return
    # name → (tensor reduced, lowest allowed, highest allowed, what the range is)
    ranges = [("input_ids", input_ids, 0, config.vocab_size - 1, f"vocab_size {config.vocab_size}")]
    if token_type_ids is not None:
        ranges.append(("token_type_ids", token_type_ids, 0, max(config.type_vocab_size - 1, 0),
                       f"type_vocab_size {config.type_vocab_size}"))
    if masked_positions is not None and masked_positions.numel():
        ranges.append(("masked_positions", masked_positions, 0, length - 1,
                       f"positions of the {length}-token input"))
    stats = [torch.stack(t.aminmax()).long() for _, t, _, _, _ in ranges]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            mask, binary = attention_mask, attention_mask.new_ones((), dtype=torch.bool)
        else:
            mask, binary = attention_mask.ne(0), (attention_mask.eq(0) | attention_mask.eq(1)).all()
        rows_real = mask.any(dim=1)
        stats.append(torch.stack([binary, rows_real.all(), rows_real.any()]).long())
    values = torch.cat(stats).tolist()  # the one read-back
    for i, (name, tensor, low, high, what) in enumerate(ranges):
        lo, hi = values[2 * i], values[2 * i + 1]
        if lo >= low and hi <= high:
            continue
        bad = lo if lo < low else hi
        if name == "token_type_ids" and config.type_vocab_size == 0:
            raise ValueError(f"token_type_ids given but this model has no token-type embedding "
                             f"(type_vocab_size 0): found {bad} at {_first_at(tensor, bad)}; pass None or zeros")
        raise ValueError(f"{name} holds {bad} at {_first_at(tensor, bad)}: expected {low}..{high} ({what})")
    if attention_mask is not None:
        is_binary, all_rows_real, any_row_real = values[-3:]
        if not is_binary:
            odd = attention_mask[attention_mask.ne(0) & attention_mask.ne(1)][0].item()
            raise ValueError(f"attention_mask holds {odd!r} at {_first_at(attention_mask, odd)}: expected 1 for a "
                             f"real token and 0 for padding (bool masks are accepted; additive 0/-inf masks "
                             f"are not)")
        if not any_row_real:
            raise ValueError(f"attention_mask has no real token in any of its {mask.shape[0]} rows (all entries "
                             "are 0): expected 1 for real tokens and 0 for padding")
        if not all_rows_real:
            empty = (~rows_real).nonzero().flatten().tolist()
            warnings.warn(f"attention_mask row(s) {empty[:8]}{' …' if len(empty) > 8 else ''} hold no real token "
                          f"({len(empty)} of {mask.shape[0]}): their outputs are those of attention over nothing "
                          "(zeros); an example normally has at least its [CLS] token", EmptyRowWarning,
                          stacklevel=3)


def check_mask_shape(attention_mask: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if attention_mask is not None and attention_mask.shape != shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                         f"{tuple(shape)}")


def _key_padding_mask(attention_mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    """HF convention (1 = real token) → bool (batch, seq) of `shape`; None without a mask (the fast path).

    In eager mode an all-real mask also takes the fast path (unmasked attention is the faster kernel). That
    test reads a value back, so while tracing, compiling or exporting (`_checks_enabled` False) the mask is
    always applied: a graph recorded on an unpadded example must stay right on padded batches, and an
    exported graph must not branch on data.
    """
    if attention_mask is None:
        return None
    check_mask_shape(attention_mask, tuple(shape))
    mask = attention_mask.bool()
    if _checks_enabled() and bool(mask.all()):
        return None
    return mask


class BortModel(BortPreTrainedModel):
    """The encoder: embeddings, `num_hidden_layers` post-LN cells, optional pooler."""

    def __init__(self, config: BortConfig) -> None:
        super().__init__(config)
        self.embeddings = BortEmbeddings(config)
        self.encoder = BortEncoder(config)
        self.pooler = BortPooler(config) if config.add_pooler else None
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> EncoderOutput:
        """Encode `input_ids` (batch, seq). `attention_mask` is 1 for real tokens; `masked_positions`
        (batch, P) also returns the hidden states gathered at those positions."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        check_mask_shape(attention_mask, tuple(input_ids.shape))
        check_inputs(self.config, input_ids, attention_mask, token_type_ids, masked_positions)
        enc = self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask,
                           output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        x = enc.last_hidden_state
        return EncoderOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            masked_hidden_state=gather_positions(x, masked_positions) if masked_positions is not None else None,
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
        )


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (batch, seq, dim) at positions (batch, P) → (batch, P, dim)."""
    if positions.dim() != 2 or positions.shape[0] != hidden.shape[0]:
        raise ValueError(f"masked_positions must be (batch, P) with batch {hidden.shape[0]}, "
                         f"got {tuple(positions.shape)}")
    index = positions.long().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


class BortLMHead(nn.Module):
    """Dense → activation → LayerNorm → Dense tied to the word embedding (+ its own bias)."""

    def __init__(self, config: BortConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        # GluonNLP 0.8.3 (the released Bort) used another epsilon here than in the encoder (docs/gluon.md).
        eps = config.layer_norm_eps if config.decoder_layer_norm_eps is None else config.decoder_layer_norm_eps
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(self.act(self.dense(hidden))), word_embeddings, self.bias)


class BortForMaskedLM(BortPreTrainedModel):
    """Encoder + MLM decoder. With `masked_positions` the decoder runs only there (a large saving with a
    50k vocabulary), returning logits (batch, P, vocab); otherwise at every position."""

    def __init__(self, config: BortConfig) -> None:
        super().__init__(config)
        self.bort = BortModel(config)
        self.lm_head = BortLMHead(config)
        self.init_weights(self.lm_head)  # the encoder initialised itself

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> HeadOutput:
        """`labels` match the logits' leading shape ((batch, P) or (batch, seq)); -100 is ignored."""
        enc = self.bort(input_ids, attention_mask, token_type_ids, masked_positions,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        hidden = enc.masked_hidden_state if masked_positions is not None else enc.last_hidden_state
        logits = self.lm_head(hidden, self.bort.embeddings.word_embeddings.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten().long(), ignore_index=-100)
        return HeadOutput(logits=logits, loss=loss, last_hidden_state=enc.last_hidden_state,
                          hidden_states=enc.hidden_states, attentions=enc.attentions)


class BortClassificationHead(nn.Module):
    """First token → dropout → Dense(tanh) → dropout → Dense (Bort/GluonNLP and RoBERTa head)."""

    def __init__(self, config: BortConfig, num_outputs: int) -> None:
        super().__init__()
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(p)
        self.out_proj = nn.Linear(config.hidden_size, num_outputs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(hidden[:, 0])))
        return self.out_proj(self.dropout(x))


class _SentenceHead(BortPreTrainedModel):
    """Encoder + a head on the sequence representation: pooler → dropout → Linear (`classifier`, BERT's
    layout) when `use_pooler`, else `BortClassificationHead` (`classifier.dense`/`classifier.out_proj`,
    the Bort/GluonNLP and RoBERTa layout)."""

    def __init__(self, config: BortConfig, num_outputs: int, use_pooler: bool) -> None:
        super().__init__(config)
        self.bort = BortModel(config)
        self.use_pooler = use_pooler
        if use_pooler:
            p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
            self.dropout = nn.Dropout(p)
            self.classifier: nn.Module = nn.Linear(config.hidden_size, num_outputs)
        else:
            self.classifier = BortClassificationHead(config, num_outputs)
        self.init_weights(self.classifier)  # the encoder initialised itself

    def _scores(self, enc: EncoderOutput) -> torch.Tensor:
        if self.use_pooler:
            return self.classifier(self.dropout(enc.pooler_output))
        return self.classifier(enc.last_hidden_state)


class BortForSequenceClassification(_SentenceHead):
    """Classification (cross-entropy) or, with one label or problem_type "regression", regression (MSE)."""

    def __init__(self, config: BortConfig) -> None:
        # As in HF: BERT classifies the pooled output; RoBERTa (positions offset) and Bort (no pooler)
        # use a dense-tanh head on the first token.
        super().__init__(config, config.num_labels,
                         use_pooler=config.add_pooler and config.position_offset == 0)

    @property
    def is_regression(self) -> bool:
        if self.config.problem_type is not None:
            return self.config.problem_type == "regression"
        return self.config.num_labels == 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> HeadOutput:
        enc = self.bort(input_ids, attention_mask, token_type_ids, masked_positions,
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self._scores(enc)
        loss = None
        if labels is not None:
            if self.is_regression:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
            else:
                loss = F.cross_entropy(logits.float(), labels.long().view(-1))
        return HeadOutput(logits=logits, loss=loss, last_hidden_state=enc.last_hidden_state,
                          hidden_states=enc.hidden_states, attentions=enc.attentions)


class BortForMultipleChoice(_SentenceHead):
    """Scores each (context, choice) sequence of (batch, choices, seq) inputs; logits (batch, choices)."""

    def __init__(self, config: BortConfig) -> None:
        # BERT and RoBERTa both score choices from the pooled output; Bort has no pooler.
        super().__init__(config, 1, use_pooler=config.add_pooler)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> HeadOutput:
        if input_ids.dim() != 3:
            raise ValueError(f"multiple-choice input_ids must be (batch, choices, seq), got {tuple(input_ids.shape)}")
        b, c, n = input_ids.shape

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(b * c, *t.shape[2:])

        enc = self.bort(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(masked_positions),
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        logits = self._scores(enc).view(b, c)
        loss = F.cross_entropy(logits.float(), labels.long().view(-1)) if labels is not None else None
        return HeadOutput(logits=logits, loss=loss, last_hidden_state=enc.last_hidden_state,
                          hidden_states=enc.hidden_states, attentions=enc.attentions)

    def score_choices(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      token_type_ids: torch.Tensor | None, example: torch.Tensor, slot: torch.Tensor,
                      num_examples: int | None = None) -> torch.Tensor:
        """Scores of a variable number of choices per example: float (examples, max choices), −inf where an
        example has no such choice.

        `input_ids` (choices, seq) holds every real choice of the batch once, flattened (no padding choices
        to encode, as `forward`'s (batch, choices, seq) needs for ReCoRD's varying candidate counts); choice
        i belongs to example `example[i]` at position `slot[i]`. `num_examples` defaults to the largest
        example index + 1.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"score_choices takes the flattened choices (choices, seq), got {tuple(input_ids.shape)}")
        if example.shape != input_ids.shape[:1] or slot.shape != input_ids.shape[:1]:
            raise ValueError(f"example {tuple(example.shape)} and slot {tuple(slot.shape)} must hold one index per "
                             f"choice ({input_ids.shape[0]})")
        enc = self.bort(input_ids, attention_mask, token_type_ids)
        flat = self._scores(enc).squeeze(-1).float()
        rows = int(example.max()) + 1 if num_examples is None else num_examples
        table = flat.new_full((rows, int(slot.max()) + 1), float("-inf"))
        return table.index_put((example, slot), flat)


TASK_MODELS: dict[str | None, type[BortPreTrainedModel]] = {
    None: BortModel,
    "encoder": BortModel,
    "mlm": BortForMaskedLM,
    "classification": BortForSequenceClassification,
    "regression": BortForSequenceClassification,
    "multiple_choice": BortForMultipleChoice,
}
