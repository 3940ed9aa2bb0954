"""Model behaviour: padding, masked positions, the attention registry, training mode, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bort import BortConfig, BortForMaskedLM, BortModel
from bort.attention import available_attention, get_attention
from bort.model import BortForMultipleChoice, BortForSequenceClassification

TINY = dict(vocab_size=60, hidden_size=24, num_attention_heads=3, intermediate_size=20, num_hidden_layers=2,
            max_position_embeddings=32)


@pytest.fixture(params=["bort_4_8_768_1024", "bert-base", "roberta-base"])
def config(request):
    return BortConfig.preset(request.param, **TINY)


def test_extra_padding_does_not_change_real_tokens(config):
    torch.manual_seed(0)
    model = BortModel(config).eval()
    ids = torch.randint(3, 60, (2, 10))
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    padded = torch.cat([ids, torch.full((2, 7), config.pad_token_id)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(ids, mask).last_hidden_state
        b = model(padded, padded_mask).last_hidden_state[:, :10]
        alone = model(ids[1:, :6]).last_hidden_state
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5)
    assert torch.allclose(a[1, :6], alone[0], atol=1e-5)


def test_dense_attention_equals_closed_form_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 5) for _ in range(3))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    attention = get_attention("dense")(BortConfig(), 0).eval()
    out, none = attention(q, k, v, key_padding_mask=mask)
    out_w, probs = attention(q, k, v, key_padding_mask=mask, need_weights=True)
    scores = q @ k.transpose(-1, -2) / math.sqrt(5)
    scores[1, :, :, 4:] = float("-inf")
    want = scores.softmax(-1) @ v
    assert none is None and torch.allclose(out, want, atol=1e-6) and torch.allclose(out_w, want, atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, 7)) and probs[1, :, :, 4:].abs().max() == 0


def test_unknown_attention_lists_the_registry():
    assert "dense" in available_attention()
    with pytest.raises(ValueError, match="unknown attention mechanism 'magic'; known: .*dense"):
        BortModel(BortConfig(attention="magic", **TINY))


def test_masked_lm_decodes_only_requested_positions(config):
    torch.manual_seed(0)
    model = BortForMaskedLM(config).eval()
    ids = torch.randint(3, 60, (2, 9))
    positions = torch.tensor([[0, 4, 4], [8, 2, 1]])
    labels = torch.tensor([[5, 6, -100], [7, 8, 9]])
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids, masked_positions=positions, labels=labels)
    picked = torch.stack([full[b, positions[b]] for b in range(2)])
    assert out.logits.shape == (2, 3, 60) and torch.allclose(out.logits, picked, atol=1e-5)
    want = F.cross_entropy(picked.reshape(-1, 60), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, want, atol=1e-5)
    assert model.lm_head.bias.shape == (60,)
    with pytest.raises(ValueError, match="masked_positions must be"):
        model(ids, masked_positions=torch.tensor([1, 2]))


def test_training_mode_applies_dropout_and_gradients_reach_every_parameter(config):
    torch.manual_seed(0)
    model = BortForSequenceClassification(config).train()
    ids = torch.randint(3, 60, (4, 8))
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)
    model(ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    unused = {"bort.pooler.dense.weight", "bort.pooler.dense.bias"} if not model.use_pooler else set()
    for name, p in model.named_parameters():
        if name not in unused:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_input_errors_are_clear():
    model = BortModel(BortConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="input length 40 exceeds the model's 32 positions"):
        model(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="no token-type embedding"):
        model(torch.zeros(1, 4, dtype=torch.long), token_type_ids=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 5))
    with pytest.raises(ValueError, match="must be \\(batch, choices, seq\\)"):
        BortForMultipleChoice(BortConfig(**TINY))(torch.zeros(2, 4, dtype=torch.long))


def test_roberta_positions_start_after_the_offset():
    cfg = BortConfig.preset("roberta-base", **TINY)
    model = BortModel(cfg).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.position_embeddings.weight[2, 0] = 1.0  # only position id 2 is non-zero
        x = model.embeddings.word_embeddings(torch.tensor([[5, 5]]))
        emb = model.embeddings(torch.tensor([[5, 5]]))
    ln = model.embeddings.LayerNorm
    tt = model.embeddings.token_type_embeddings.weight[0]
    first = ln(x[0, 0] + tt + torch.eye(24)[0])
    assert torch.allclose(emb[0, 0], first, atol=1e-6) and not torch.allclose(emb[0, 0], emb[0, 1])

