"""Distillation losses against direct formulas written independently here (numpy and plain loops)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bort import BortConfig, BortForMaskedLM, BortModel
from bort.distill.losses import (AttentionLoss, DistillationLoss, HiddenStateLoss, bort_compat_kd_loss,
                                 bort_teacher_mse, kd_loss, mlm_loss, uniform_layer_map)

B, P, V = 3, 5, 11


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


@pytest.fixture
def masked():
    """Student/teacher logits at P masked slots, the last slots of each row padding (weight 0)."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, P, V, generator=g) * 3
    teacher = torch.randn(B, P, V, generator=g) * 3
    ids = torch.randint(0, V, (B, P), generator=g)
    weights = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    ids[weights == 0] = -100  # padding ids need not be valid
    return student, teacher, ids, weights


def test_mlm_loss_matches_direct_formula(masked):
    student, _, ids, weights = masked
    logp, w, y = _log_softmax(_np(student)), _np(weights), ids.numpy()
    total = sum(-logp[b, p, y[b, p]] * w[b, p] for b in range(B) for p in range(P) if w[b, p] > 0)
    expected = total / w.sum()
    assert mlm_loss(student, ids, weights).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.5])
def test_kd_loss_matches_direct_formula(masked, temperature):
    student, teacher, _, weights = masked
    ps, pt, w = _softmax(_np(student) / temperature), _softmax(_np(teacher) / temperature), _np(weights)
    total = 0.0
    for b in range(B):
        for p in range(P):
            kl = sum(pt[b, p, v] * (np.log(pt[b, p, v]) - np.log(ps[b, p, v])) for v in range(V))
            total += w[b, p] * kl
    expected = temperature ** 2 * total / w.sum()
    assert kd_loss(student, teacher, weights, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_scales_with_t_squared(masked):
    student, teacher, _, weights = masked
    assert kd_loss(student, student.clone(), weights, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # T² · KL(softmax(t/T) ‖ softmax(s/T)) is T² times the T=1 loss of the pre-divided logits.
    t = 2.5
    scaled = kd_loss(student, teacher, weights, t)
    plain = kd_loss(student / t, teacher / t, weights, 1.0)
    assert scaled.item() == pytest.approx(t ** 2 * plain.item(), rel=1e-5)


def test_logit_losses_ignore_padded_predictions(masked):
    student, teacher, ids, weights = masked
    pad = weights == 0
    student2, teacher2 = student.clone(), teacher.clone()
    student2[pad] = 50.0 * torch.randn_like(student2[pad])
    teacher2[pad] = -7.0
    for fn in (kd_loss, bort_compat_kd_loss, bort_teacher_mse):
        assert fn(student, teacher, weights).item() == pytest.approx(fn(student2, teacher2, weights).item(), rel=1e-6)
    assert mlm_loss(student, ids, weights).item() == pytest.approx(mlm_loss(student2, ids, weights).item(), rel=1e-6)


def _mxnet_kldiv_from_probs(pred: np.ndarray, label: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
    """MXNet 1.x gluon.loss.KLDivLoss(from_logits=False).hybrid_forward, transcribed: (N, V) → (N,)."""
    pred = _log_softmax(pred)  # from_logits=False: log_softmax of what it is given
    loss = label * (np.log(label + 1e-12) - pred)
    loss = loss * sample_weight  # _apply_weighting: broadcast_mul by (N, 1)
    return loss.mean(axis=1)  # mean over every axis but the batch axis


def test_bort_compat_kd_matches_the_original_mxnet_term(masked):
    student, teacher, _, weights = masked
    t = 2.0
    s_flat, t_flat = _np(student).reshape(-1, V), _np(teacher).reshape(-1, V)
    w = _np(weights).reshape(-1, 1)
    # The original script: softmax(·, temperature=T) of both, the loss, then T² · sum / (num_masks + 1e-8).
    per_row = _mxnet_kldiv_from_probs(_softmax(s_flat / t), _softmax(t_flat / t), w)
    expected = t ** 2 * per_row.sum() / (w.sum() + 1e-8)
    got = bort_compat_kd_loss(student, teacher, weights, t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # The double softmax makes the term positive even for a perfect student, unlike the real KL.
    assert bort_compat_kd_loss(student, student, weights, t).item() > 1e-3
    assert got.item() != pytest.approx(kd_loss(student, teacher, weights, t).item(), rel=0.1)


def test_bort_teacher_mse_matches_mxnet_l2loss(masked):
    student, teacher, _, weights = masked
    t = 2.0
    qs, qt = _softmax(_np(student).reshape(-1, V) / t), _softmax(_np(teacher).reshape(-1, V) / t)
    w = _np(weights).reshape(-1, 1)
    per_row = (0.5 * np.square(qt - qs) * w).mean(axis=1)  # L2Loss: weight/2 · (label − pred)², mean
    expected = t ** 2 * per_row.sum() / (w.sum() + 1e-8)
    assert bort_teacher_mse(student, teacher, weights, t).item() == pytest.approx(expected, rel=1e-5)


def test_kd_vocab_mismatch_names_both_sizes(masked):
    student, _, _, weights = masked
    with pytest.raises(ValueError, match=r"student predicts 11 ids, the teacher 13"):
        kd_loss(student, torch.randn(B, P, 13), weights)


def test_uniform_layer_map():
    assert uniform_layer_map(4, 24) == [(0, 0), (1, 6), (2, 12), (3, 18), (4, 24)]
    assert uniform_layer_map(4, 6) == [(0, 0), (1, 2), (2, 3), (3, 5), (4, 6)]  # 1.5 → 2, 4.5 → 5
    assert uniform_layer_map(2, 6, include_embeddings=False) == [(1, 3), (2, 6)]
    assert uniform_layer_map(6, 3)[-1] == (6, 3)


def _padded_hidden(seed: int, layers: int, dim: int, seq: int = 6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, seq, dim, generator=g) for _ in range(layers + 1)]


MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])


def test_hidden_state_loss_matches_direct_formula_and_trains_projections():
    student, teacher = _padded_hidden(1, 2, 4), _padded_hidden(2, 4, 6)
    student = [h.requires_grad_() for h in student]
    layer_map = uniform_layer_map(2, 4)  # (0,0) (1,2) (2,4)
    loss_fn = HiddenStateLoss(4, 6, layer_map)
    loss = loss_fn(student, teacher, MASK)
    per_pair = []
    for (s, t), proj in zip(layer_map, loss_fn.projections):
        w, bias = _np(proj.weight), _np(proj.bias)
        total, count = 0.0, 0
        for b in range(2):
            for i in range(6):
                if MASK[b, i]:
                    diff = w @ _np(student[s][b, i]) + bias - _np(teacher[t][b, i])
                    total += float((diff ** 2).sum())
                    count += 1
        per_pair.append(total / (count * 6))
    assert loss.item() == pytest.approx(np.mean(per_pair), rel=1e-5)
    loss.backward()
    for proj in loss_fn.projections:
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert student[0].grad[0, 4:].abs().sum() == 0  # padded positions get no gradient


def test_hidden_state_loss_ignores_padding():
    student, teacher = _padded_hidden(1, 2, 4), _padded_hidden(2, 4, 6)
    loss_fn = HiddenStateLoss(4, 6, uniform_layer_map(2, 4))
    before = loss_fn(student, teacher, MASK).item()
    for h in student + teacher:
        h[0, 4:] = 1e3 * torch.randn_like(h[0, 4:])
    assert loss_fn(student, teacher, MASK).item() == pytest.approx(before, rel=1e-6)


def _attention_probs(seed: int, layers: int, heads: int, mask: torch.Tensor):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        scores = torch.randn(mask.shape[0], heads, mask.shape[1], mask.shape[1], generator=g) * 2
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        out.append(scores.softmax(-1))
    return out


def _direct_attention(student, teacher, mask, layer_map, kind):
    """Loops over batch, head, real query (and real key): the definitions in the docstring."""
    values = []
    for s, t in layer_map:
        a_s, a_t = _np(student[s - 1]), _np(teacher[t - 1])
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(1, keepdims=True), a_t.mean(1, keepdims=True)
        total, count = 0.0, 0
        for b in range(mask.shape[0]):
            real = [i for i in range(mask.shape[1]) if mask[b, i]]
            for h in range(a_s.shape[1]):
                for q in real:
                    if kind == "kl":
                        total += sum(a_t[b, h, q, k] * np.log(a_t[b, h, q, k] / a_s[b, h, q, k]) for k in real)
                        count += 1
                    else:
                        total += sum((a_s[b, h, q, k] - a_t[b, h, q, k]) ** 2 for k in real)
                        count += len(real)
        values.append(total / count)
    return float(np.mean(values))


@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("teacher_heads", [4, 3])
def test_attention_loss_matches_direct_formula(kind, teacher_heads):
    student = _attention_probs(1, 2, 4, MASK)
    teacher = _attention_probs(2, 4, teacher_heads, MASK)
    layer_map = uniform_layer_map(2, 4)
    got = AttentionLoss(layer_map, kind=kind)(student, teacher, MASK).item()
    assert got == pytest.approx(_direct_attention(student, teacher, MASK, [(1, 2), (2, 4)], kind), rel=1e-5)


def test_attention_loss_ignores_padding_and_is_zero_on_agreement():
    student = _attention_probs(1, 2, 4, MASK)
    teacher = _attention_probs(2, 2, 4, MASK)
    loss_fn = AttentionLoss([(1, 1), (2, 2)])
    before = loss_fn(student, teacher, MASK).item()
    for a in student + teacher:
        a[0, :, 4:, :] = torch.rand_like(a[0, :, 4:, :])  # padded queries
        a[0, :, :, 4:] = torch.rand_like(a[0, :, :, 4:])  # padded keys
    assert loss_fn(student, teacher, MASK).item() == pytest.approx(before, rel=1e-6)
    assert loss_fn(teacher, teacher, MASK).item() == pytest.approx(0.0, abs=1e-6)


def _tiny(vocab: int = 40, hidden: int = 16, layers: int = 2, heads: int = 2) -> BortConfig:
    return BortConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=24, max_position_embeddings=16)


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 40, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 6:] = 0
    positions = torch.tensor([[1, 3, 0], [2, 5, 7]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return ids, mask, positions, ids.gather(1, positions), weights


def test_distillation_loss_composes_weighted_terms_on_real_models():
    torch.manual_seed(0)
    student_cfg, teacher_cfg = _tiny(), _tiny(hidden=24, layers=4, heads=4)
    student, teacher = BortForMaskedLM(student_cfg).eval(), BortForMaskedLM(teacher_cfg).eval()
    ids, mask, positions, masked_ids, weights = _batch()
    loss_fn = DistillationLoss.from_configs(student_cfg, teacher_cfg, teacher_has_mlm_head=True, mlm_weight=0.1,
                                            kd_weight=0.5, hidden_weight=2.0, attention_weight=3.0)
    assert loss_fn.needs_hidden_states and loss_fn.needs_attentions
    kwargs = dict(masked_positions=positions, output_hidden_states=True, output_attentions=True)
    s_out = student(ids, mask, **kwargs)
    with torch.no_grad():
        t_out = teacher(ids, mask, **kwargs)
    total, parts = loss_fn(s_out, t_out, masked_ids, weights, mask)
    assert all(isinstance(v, float) for v in parts.values())
    assert set(parts) == {"mlm", "kd", "teacher_mse", "hidden", "attention", "total"}
    expected = 0.1 * parts["mlm"] + 0.5 * parts["kd"] + 2.0 * parts["hidden"] + 3.0 * parts["attention"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["kd"] == pytest.approx(kd_loss(s_out.logits, t_out.logits, weights).item(), rel=1e-6)
    total.backward()
    assert student.bort.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss_fn.parameters())

    # Changing padded input tokens changes neither models' real-token states nor the loss.
    ids2 = ids.clone()
    ids2[0, 6:] = 5
    with torch.no_grad():
        again, _ = loss_fn(student(ids2, mask, **kwargs), teacher(ids2, mask, **kwargs), masked_ids, weights, mask)
    assert again.item() == pytest.approx(total.item(), rel=1e-5)


def test_teacher_without_mlm_head_or_other_vocabulary_needs_kd_weight_zero():
    student_cfg = _tiny()
    with pytest.raises(ValueError, match="no MLM head"):
        DistillationLoss.from_configs(student_cfg, _tiny(), teacher_has_mlm_head=False)
    with pytest.raises(ValueError, match=r"student 40 ids, teacher 30522"):
        DistillationLoss.from_configs(student_cfg, _tiny(vocab=30522), teacher_has_mlm_head=True)

    # Hidden/attention matching from an encoder-only teacher (the MiniLM case): KD weight 0 works.
    torch.manual_seed(0)
    teacher_cfg = _tiny(vocab=30522, hidden=24, layers=3, heads=3)
    loss_fn = DistillationLoss.from_configs(student_cfg, teacher_cfg, teacher_has_mlm_head=False, kd_weight=0.0,
                                            hidden_weight=1.0, attention_weight=1.0)
    student, teacher = BortForMaskedLM(student_cfg), BortModel(teacher_cfg).eval()
    ids, mask, positions, masked_ids, weights = _batch()
    s_out = student(ids, mask, masked_positions=positions, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t_out = teacher(ids, mask, output_hidden_states=True, output_attentions=True)
    total, parts = loss_fn(s_out, t_out, masked_ids, weights, mask)
    assert "kd" not in parts and parts["hidden"] > 0 and parts["attention"] > 0
    total.backward()

    mlm_only = DistillationLoss(mlm_weight=1.0, kd_weight=0.5, student_vocab_size=40, teacher_vocab_size=40)
    with pytest.raises(ValueError, match="no logits"):
        mlm_only(s_out, t_out, masked_ids, weights, mask)


def test_bort_compat_flag_switches_the_kd_term(masked):
    student, teacher, ids, weights = masked
    out = lambda logits: type("Out", (), {"logits": logits})()  # noqa: E731 - a minimal output object
    ours = DistillationLoss(mlm_weight=0.1, kd_weight=0.5)
    compat = DistillationLoss(mlm_weight=0.1, kd_weight=0.5, bort_compat_kd=True)
    _, parts = compat(out(student), out(teacher), ids, weights)
    assert parts["kd"] == pytest.approx(bort_compat_kd_loss(student, teacher, weights).item(), rel=1e-6)
    _, parts = ours(out(student), out(teacher), ids, weights)
    assert parts["kd"] == pytest.approx(kd_loss(student, teacher, weights).item(), rel=1e-6)
