"""YOSO attention: the expectation against closed forms and Hugging Face, the sampled estimate's convergence,
both backward passes, padding, and the mechanism inside the model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bort.attention.yoso as yoso_mod
from bort.attention import get_attention
from bort.attention.yoso import yoso, yoso_e


def _qkv(b=2, h=3, n=37, d=7, dtype=torch.float64, seed=0, grad=False):
    # Odd n and head_dim on purpose: nothing may require divisibility.
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=dtype).requires_grad_(grad) for _ in range(3))


def _mask(b=2, n=37, lengths=(37, 23)):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_yoso_e_equals_closed_form_with_padding():
    q, k, v = _qkv()
    mask = _mask()
    out = yoso_e(q, k, v, key_padding_mask=mask, hash_code_len=5)
    qn, kn, vn = (x.detach().numpy() for x in (q, k, v))
    for b in range(2):
        real = mask[b].numpy()
        for h in range(3):
            qu = qn[b, h] / np.linalg.norm(qn[b, h], axis=-1, keepdims=True)
            ku = kn[b, h, real] / np.linalg.norm(kn[b, h, real], axis=-1, keepdims=True)
            e = (1 - np.arccos(np.clip(qu @ ku.T, -1, 1)) / math.pi) ** 5
            y = e @ vn[b, h, real]
            y /= np.linalg.norm(y, axis=-1, keepdims=True)
            np.testing.assert_allclose(out[b, h, real].numpy(), y[real], rtol=1e-10, atol=1e-12)
            assert torch.all(out[b, h, ~mask[b]] == 0)


def test_yoso_e_matches_transformers_expectation_core():
    modeling = pytest.importorskip("transformers.models.yoso.modeling_yoso")
    q, k, v = _qkv(dtype=torch.float32)
    mask = _mask()
    b, h, n, d = q.shape
    flat = lambda t: t.reshape(b * h, n, d)  # noqa: E731
    # HF's attention core takes (batch·heads, n, d) with Q/K already normalised and an int mask per row.
    int_mask = mask.int().repeat_interleave(h, dim=0)
    core = modeling.YosoCumulation.apply(int_mask, int_mask, F.normalize(flat(q), dim=-1),
                                         F.normalize(flat(k), dim=-1), flat(v), {"hash_code_len": 6})
    expected = F.normalize(core, dim=-1).reshape(b, h, n, d)
    torch.testing.assert_close(yoso_e(q, k, v, mask, hash_code_len=6), expected, rtol=1e-5, atol=1e-6)


def test_sampled_error_falls_like_inverse_sqrt_m():
    q, k, v = _qkv(b=1, h=2, n=64, d=8, seed=1)
    exact = yoso_e(q, k, v, hash_code_len=4)
    ms = [8, 32, 128, 512]
    errors = []
    for m in ms:
        # RMS over seeds so that one lucky draw does not bend the fit.
        sq = [((yoso(q, k, v, hash_code_len=4, num_hash=m, generator=torch.Generator().manual_seed(s))
                - exact).norm() / exact.norm()).item() ** 2 for s in range(6)]
        errors.append(math.sqrt(sum(sq) / len(sq)))
    slope = np.polyfit(np.log(ms), np.log(errors), 1)[0]
    assert -0.6 < slope < -0.4, (slope, errors)
    assert errors[-1] < 0.15


def test_sampled_is_unbiased_before_normalisation():
    q, k, v = _qkv(b=1, h=1, n=20, d=5, seed=2)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    core = yoso_mod._LSHCumulation.apply(qn, kn, v, 3, 20000, torch.Generator().manual_seed(0), False)
    expected = (1 - torch.acos(qn @ kn.transpose(-1, -2)) / math.pi) ** 3 @ v
    torch.testing.assert_close(core, expected, rtol=0, atol=0.05)


def test_yoso_e_gradcheck():
    q, k, v = _qkv(b=1, h=2, n=9, d=4, grad=True)
    mask = _mask(b=1, n=9, lengths=(7,))
    assert torch.autograd.gradcheck(lambda a, b, c: yoso_e(a, b, c, mask, hash_code_len=3), (q, k, v))


def test_exact_backward_matches_autograd_through_expectation():
    q, k, v = _qkv(grad=True)
    upstream = torch.randn_like(q)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    # Core level: the sampled forward differs from E·V, so compare gradients for the same upstream gradient.
    core = yoso_mod._LSHCumulation.apply(qn, kn, v, 6, 4, torch.Generator().manual_seed(0), True)
    got = torch.autograd.grad(core, (q, k, v), upstream, retain_graph=True)
    reference = (1 - torch.acos(qn @ kn.transpose(-1, -2)) / math.pi) ** 6 @ v
    want = torch.autograd.grad(reference, (q, k, v), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Whole function with padding: at large m the forward is close, so the gradients nearly coincide.
    mask = _mask()
    got = torch.autograd.grad((yoso(q, k, v, mask, hash_code_len=6, num_hash=1024, exact_backward=True,
                                    generator=torch.Generator().manual_seed(1)) * upstream).sum(), (q, k, v))
    want = torch.autograd.grad((yoso_e(q, k, v, mask, hash_code_len=6) * upstream).sum(), (q, k, v))
    assert min(_cosine(a, b) for a, b in zip(got, want)) > 0.97


def test_lsh_backward_correlates_with_exact():
    q, k, v = _qkv(b=2, h=2, n=64, d=16, grad=True, seed=3)
    upstream = torch.randn_like(q)
    want = torch.autograd.grad((yoso_e(q, k, v, hash_code_len=4) * upstream).sum(), (q, k, v))
    got = torch.autograd.grad((yoso(q, k, v, hash_code_len=4, num_hash=512,
                                    generator=torch.Generator().manual_seed(0)) * upstream).sum(), (q, k, v))
    cosines = [_cosine(a, b) for a, b in zip(got, want)]
    assert min(cosines) > 0.9, cosines


def test_lsh_backward_estimates_the_half_tau_rule():
    # The LSH ∇Q is an unbiased estimate of Σ_j (g_i·v_j)·(τ/2)·E_ij·k_j (before the normalisation's Jacobian).
    q, k, v = _qkv(b=1, h=1, n=16, d=4, seed=4)
    qn, kn = F.normalize(q, dim=-1).requires_grad_(), F.normalize(k, dim=-1)
    g = torch.randn_like(q)
    core = yoso_mod._LSHCumulation.apply(qn, kn, v, 3, 20000, torch.Generator().manual_seed(0), False)
    (gq,) = torch.autograd.grad(core, (qn,), g)
    e = (1 - torch.acos(qn.detach() @ kn.transpose(-1, -2)) / math.pi) ** 3
    expected = ((g @ v.transpose(-1, -2)) * e * 1.5) @ kn
    torch.testing.assert_close(gq, expected, rtol=0, atol=0.08 * expected.abs().max().item())


@pytest.mark.parametrize("sampled", [False, True])
def test_padded_keys_do_not_leak(sampled):
    q, k, v = _qkv(dtype=torch.float32)
    mask = _mask()
    run = (lambda a, b, c: yoso(a, b, c, mask, hash_code_len=5, num_hash=16,
                                generator=torch.Generator().manual_seed(7))) if sampled \
        else (lambda a, b, c: yoso_e(a, b, c, mask, hash_code_len=5))
    clean = run(q, k, v)
    pad = ~mask[:, None, :, None]
    garbage = lambda t: t.masked_fill(pad, float("nan")) if t is v else t.masked_fill(pad, 1e4)  # noqa: E731
    dirty = run(garbage(q), garbage(k), garbage(v))
    real = mask[:, None, :, None].expand_as(q)
    torch.testing.assert_close(dirty[real], clean[real], rtol=0, atol=0)
    assert torch.isfinite(dirty).all()


def test_bad_parameters_are_rejected():
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="hash_code_len"):
        yoso_e(q, k, v, hash_code_len=0)
    with pytest.raises(ValueError, match="num_hash"):
        yoso(q, k, v, num_hash=0)
    from bort.config import BortConfig
    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=32, attention="yoso", attention_params={"hashes": 4})
    with pytest.raises(ValueError, match="valid: conv_window, exact_backward, hash_code_len, num_hash"):
        get_attention("yoso")(config, 0)


@pytest.mark.parametrize("name,params", [("yoso", {}), ("yoso_e", {}),
                                         ("yoso", {"conv_window": 3, "hash_code_len": 6, "num_hash": 8})])
def test_model_forward_backward(name, params):
    from bort.config import BortConfig
    from bort.model import BortModel

    torch.manual_seed(0)
    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=32, attention=name, attention_params=params)
    model = BortModel(config)
    ids = torch.randint(5, 100, (2, 19))
    attention_mask = torch.ones(2, 19, dtype=torch.long)
    attention_mask[1, 12:] = 0
    out = model(ids, attention_mask)
    out.last_hidden_state.sum().backward()
    grads = [p.grad for p in model.encoder.parameters()]  # the pooler is outside this loss
    assert torch.isfinite(out.last_hidden_state).all()
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_chunking_does_not_change_results(monkeypatch):
    # Tiny budgets force many colliding-pair chunks (LSH backward) and one group per chunk (exact backward).
    q, k, v = _qkv(b=2, h=2, n=30, d=6, grad=True, seed=5)
    upstream = torch.randn_like(q)

    def run(exact):
        out = yoso(q, k, v, hash_code_len=5, num_hash=6, generator=torch.Generator().manual_seed(0),
                   exact_backward=exact)
        return (out, *torch.autograd.grad((out * upstream).sum(), (q, k, v)))

    whole = [run(False), run(True)]
    monkeypatch.setattr(yoso_mod, "_PAIR_BUDGET", 3)
    monkeypatch.setattr(yoso_mod, "_TABLE_BUDGET", 1)
    for chunked, full in zip([run(False), run(True)], whole):
        for a, b in zip(chunked, full):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_pair_backward_equals_the_dense_collision_reference(monkeypatch):
    """The LSH backward enumerates colliding pairs; its reference is the dense n×n collision-count matrix."""
    from bort.attention import yoso as Y

    torch.manual_seed(0)
    groups, m, n, d, tau = 3, 4, 300, 16, 6
    q = torch.nn.functional.normalize(torch.randn(groups, n, d, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(groups, n, d, dtype=torch.float64), dim=-1)
    v, g = torch.randn(groups, n, d, dtype=torch.float64), torch.randn(groups, n, d, dtype=torch.float64)
    planes = torch.randn(groups, d, m * tau, dtype=torch.float64)
    qc, kc = Y.hash_codes(q, planes, tau), Y.hash_codes(k, planes, tau)
    collisions = (qc[..., :, None] == kc[..., None, :]).sum(1).to(torch.float64)  # (G, n, n) over hashes
    weights = collisions * (g @ v.transpose(-1, -2))
    monkeypatch.setattr(Y, "_PAIR_BUDGET", 37)  # many chunks, split inside query runs
    got_q, got_k = Y._pair_grads(qc, kc, q, k, v, g)
    torch.testing.assert_close(got_q, weights @ k, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_k, weights.transpose(-1, -2) @ q, rtol=1e-10, atol=1e-10)
