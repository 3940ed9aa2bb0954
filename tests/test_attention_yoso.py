"""YOSO attention: the expectation against closed forms and Hugging Face, the sampled estimate's convergence,
both backward passes, padding, and the mechanism inside the model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bort.attention import get_attention
from bort.attention.yoso import yoso, yoso_e
from bort.attention.yoso_lsh import LSHAttention

# torch says once per process that its sparse CSR tensors (used here only as a pattern for sampled_addmm)
# are "beta"; the library filters it, but pytest resets warning filters for every test.
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


@pytest.fixture(params=["buckets", "dense_counts"])
def lsh_path(request, monkeypatch):
    """Run a test through the bucket bookkeeping (any length) and through the dense counts of short
    sequences: the threshold is moved so that the test's sizes take the path named."""
    from bort.attention import yoso_lsh

    monkeypatch.setattr(yoso_lsh, "_DENSE_MAX_TOKENS", 0 if request.param == "buckets" else 10**6)
    return request.param


def _qkv(b=2, h=3, n=37, d=7, dtype=torch.float64, seed=0, grad=False):
    # Odd n and head_dim on purpose: nothing may require divisibility.
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=dtype).requires_grad_(grad) for _ in range(3))


def _mask(b=2, n=37, lengths=(37, 23)):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def _core(qn, kn, v, tau, m, generator, backward="lsh", real=None):
    """The bare LSH estimate of E·V on unit q, k: no normalisation (padding rows per `real`, default none)."""
    return LSHAttention.apply(qn, kn, v, tau, m, generator, backward, "simhash", real, False)


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
    core = _core(qn, kn, v, 3, 20000, torch.Generator().manual_seed(0))
    expected = (1 - torch.acos(qn @ kn.transpose(-1, -2)) / math.pi) ** 3 @ v
    torch.testing.assert_close(core, expected, rtol=0, atol=0.05)


def test_yoso_e_exact_backward_passes_gradcheck_and_the_default_does_not():
    q, k, v = _qkv(b=1, h=2, n=9, d=4, grad=True)
    mask = _mask(b=1, n=9, lengths=(7,))
    assert torch.autograd.gradcheck(lambda a, b, c: yoso_e(a, b, c, mask, hash_code_len=3, backward="exact"),
                                    (q, k, v))
    # The default is the paper's τ/2 rule, a surrogate: not the derivative of the forward.
    assert not torch.autograd.gradcheck(lambda a, b, c: yoso_e(a, b, c, mask, hash_code_len=3), (q, k, v),
                                        raise_exception=False)


def test_exact_backward_matches_autograd_through_expectation():
    q, k, v = _qkv(grad=True)
    upstream = torch.randn_like(q)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    # Core level: the sampled forward differs from E·V, so compare gradients for the same upstream gradient.
    core = _core(qn, kn, v, 6, 4, torch.Generator().manual_seed(0), "exact")
    got = torch.autograd.grad(core, (q, k, v), upstream, retain_graph=True)
    reference = (1 - torch.acos(qn @ kn.transpose(-1, -2)) / math.pi) ** 6 @ v
    want = torch.autograd.grad(reference, (q, k, v), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Whole function with padding: at large m the forward is close, so the gradients nearly coincide.
    mask = _mask()
    got = torch.autograd.grad((yoso(q, k, v, mask, hash_code_len=6, num_hash=1024, exact_backward=True,
                                    generator=torch.Generator().manual_seed(1)) * upstream).sum(), (q, k, v))
    want = torch.autograd.grad((yoso_e(q, k, v, mask, hash_code_len=6, backward="exact") * upstream).sum(),
                               (q, k, v))
    assert min(_cosine(a, b) for a, b in zip(got, want)) > 0.97


def test_lsh_backward_correlates_with_exact():
    q, k, v = _qkv(b=2, h=2, n=64, d=16, grad=True, seed=3)
    upstream = torch.randn_like(q)
    want = torch.autograd.grad((yoso_e(q, k, v, hash_code_len=4, backward="exact") * upstream).sum(), (q, k, v))
    got = torch.autograd.grad((yoso(q, k, v, hash_code_len=4, num_hash=512,
                                    generator=torch.Generator().manual_seed(0)) * upstream).sum(), (q, k, v))
    cosines = [_cosine(a, b) for a, b in zip(got, want)]
    assert min(cosines) > 0.9, cosines


def test_lsh_backward_estimates_the_half_tau_rule():
    # The LSH ∇Q is an unbiased estimate of Σ_j (g_i·v_j)·(τ/2)·E_ij·k_j (before the normalisation's Jacobian).
    q, k, v = _qkv(b=1, h=1, n=16, d=4, seed=4)
    qn, kn = F.normalize(q, dim=-1).requires_grad_(), F.normalize(k, dim=-1)
    g = torch.randn_like(q)
    core = _core(qn, kn, v, 3, 20000, torch.Generator().manual_seed(0))
    (gq,) = torch.autograd.grad(core, (qn,), g)
    e = (1 - torch.acos(qn.detach() @ kn.transpose(-1, -2)) / math.pi) ** 3
    expected = ((g @ v.transpose(-1, -2)) * e * 1.5) @ kn
    torch.testing.assert_close(gq, expected, rtol=0, atol=0.08 * expected.abs().max().item())


@pytest.mark.parametrize("sampled", [False, True])
def test_padded_keys_do_not_leak(sampled, lsh_path):
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
    for bad in (0, 17, 2.5, True):
        with pytest.raises(ValueError, match=r"backward_hashes must be None or an integer in 1 … num_hash \(16\)"):
            yoso(q, k, v, num_hash=16, backward_hashes=bad)
    for backward in ("exact", "lsh_expectation"):
        with pytest.raises(ValueError, match=f"backward_hashes applies to the LSH backward \\(backward 'lsh'\\); "
                                             f"backward '{backward}' computes its gradient from no hashes"):
            yoso(q, k, v, num_hash=16, backward_hashes=4, backward=backward)
    with pytest.raises(ValueError, match="backward 'exact' computes its gradient from no hashes"):
        yoso(q, k, v, num_hash=16, backward_hashes=4, exact_backward=True)
    from bort.config import BortConfig
    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=32, attention="yoso", attention_params={"hashes": 4})
    with pytest.raises(ValueError, match="attention 'yoso': unknown attention_params hashes; valid parameters: backward, "
                                         "backward_hashes, conv_window, exact_backward, hash_code_len, hashing, num_hash"):
        get_attention("yoso")(config, 0)


@pytest.mark.parametrize("name,params", [("yoso", {}), ("yoso_e", {}),
                                         ("yoso", {"conv_window": 3, "hash_code_len": 6, "num_hash": 8}),
                                         ("yoso", {"hash_code_len": 6, "num_hash": 8, "backward_hashes": 2}),
                                         ("yoso", {"hash_code_len": 6, "num_hash": 8, "backward": "lsh_expectation"}),
                                         ("yoso", {"hash_code_len": 6, "num_hash": 8, "backward": "exact"}),
                                         ("yoso_e", {"backward": "exact"})])
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


def _dense_collisions(qc: torch.Tensor, kc: torch.Tensor, tau: int) -> torch.Tensor:
    """(n_q, n_k) number of hashes in which query i and key j share a code; padding (the void code) never."""
    void = 1 << tau
    same = (qc[:, :, None] == kc[:, None, :]) & (qc[:, :, None] != void)
    return same.sum(0).to(torch.float64)


@pytest.mark.parametrize("path", ["pairs", "kept_pairs", "tables", "dense_rows", "tiny_blocks", "compact_ids"])
@pytest.mark.parametrize("padded", [False, True])
def test_collision_sums_equal_the_dense_reference(monkeypatch, path, padded):
    """Every route through the sums over colliding pairs (gathered pairs, pairs kept from the forward for the
    backward, bucket tables, dense crowded rows, many small blocks, compacted bucket ids) against the n×n
    collision-count matrix of the same codes: the forward sums and the three sums of the LSH backward."""
    from bort.attention import lsh_buckets as LB

    gen = torch.Generator().manual_seed(11)
    m, n_q, n_k, d, tau = 5, 70, 90, 6, 4
    qc = torch.randint(0, 1 << tau, (m, n_q), generator=gen, dtype=torch.int32)
    kc = torch.randint(0, 1 << tau, (m, n_k), generator=gen, dtype=torch.int32)
    if padded:
        qc[:, 60:], kc[:, 75:] = 1 << tau, 1 << tau
    # ~5.6 pairs per (query, hash) in 16 buckets: the cost model would pick tables, so other paths force pairs
    monkeypatch.setattr(LB, "_TABLE_ROW_PAIRS", -10**9 if path == "tables" else 10**9)
    if path == "dense_rows":
        monkeypatch.setattr(LB, "_DENSE_ROW_FRACTION", 10**9)
    if path == "tiny_blocks":  # many blocks, some of a single row over the budget
        monkeypatch.setattr(LB, "_PAIR_BUDGET", 7)
        monkeypatch.setattr(LB, "_REGROUP_BUDGET", 7)
    if path == "compact_ids":
        monkeypatch.setattr(LB, "_DENSE_BUCKETS_PER_TOKEN", 0)
    if path == "kept_pairs":
        monkeypatch.setattr(LB, "_KEEP_PAIRS_PER_ENTRY", 10**9)
    f64 = dict(generator=gen, dtype=torch.float64)
    g, q = torch.randn(n_q, 3, **f64), torch.randn(n_q, d, **f64)
    v, k = torch.randn(n_k, 3, **f64), torch.randn(n_k, d, **f64)
    buckets = LB.build_buckets(qc.numpy(), kc.numpy(), tau)
    pairs = LB.Collisions.of(buckets)
    counts = _dense_collisions(qc, kc, tau)
    assert pairs.total == counts.sum()
    forward = LB.collision_sums(buckets, pairs, k, keep=True)
    torch.testing.assert_close(forward, counts @ k, rtol=1e-12, atol=1e-12)
    assert (pairs.cols is not None) == (path == "kept_pairs")
    gq, gk, gv = LB.gradient_sums(pairs, g, v, q, k)
    w = counts * (g @ v.t())
    torch.testing.assert_close(gq, w @ k, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gk, w.t() @ q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gv, counts.t() @ g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backward_hashes", [None, 3])
def test_lsh_core_and_gradients_equal_the_dense_collision_reference(backward_hashes, lsh_path):
    """The whole sampled function (no normalisation) against E_sampled = collision counts / m built from the
    same hyperplanes: output, ∇V, and the τ/2-rule ∇Q, ∇K, with padding, for both hashing methods. With
    `backward_hashes` b the gradients are those of the first b hashes' counts / b (the output still uses all m)."""
    from bort.attention.hashing import HashFamily

    b, h, n, d, tau, m = 2, 2, 50, 8, 5, 7
    used = m if backward_hashes is None else backward_hashes
    for hashing in ("simhash", "hadamard"):
        gen = torch.Generator().manual_seed(5)
        q, k = (F.normalize(torch.randn(b, h, n, d, generator=gen, dtype=torch.float64), dim=-1) for _ in range(2))
        v, g = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(2))
        real = _mask(b=b, n=n, lengths=(n, 31))
        q, k, v = q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out = LSHAttention.apply(q, k, v, tau, m, torch.Generator().manual_seed(9), "lsh", hashing, real, False,
                                 backward_hashes)
        grads = torch.autograd.grad(out, (q, k, v), g)
        family = HashFamily(hashing, b * h, d, m, tau, torch.Generator().manual_seed(9), torch.float64)
        for group in range(b * h):
            bi, hi = divmod(group, h)
            r = real[bi]
            qc, kc = family.codes(q[bi, hi].detach(), group), family.codes(k[bi, hi].detach(), group)
            pair = r[:, None] & r[None, :]
            counts = _dense_collisions(qc, kc, tau) * pair / m
            read = _dense_collisions(qc[:used], kc[:used], tau) * pair / used  # what the backward reads
            vv = v[bi, hi].detach().masked_fill(~r[:, None], 0)
            gg = g[bi, hi].masked_fill(~r[:, None], 0)
            a = read * (gg @ vv.t()) * (tau / 2)
            expected = (counts @ vv, a @ k[bi, hi].detach(), a.t() @ q[bi, hi].detach(), read.t() @ gg)
            got = (out[bi, hi], grads[0][bi, hi], grads[1][bi, hi], grads[2][bi, hi])
            for x, y in zip(got, expected):
                torch.testing.assert_close(x.masked_fill(~r[:, None], 0), y, rtol=1e-10, atol=1e-12)
            for x in got:  # padding rows: zero output, zero gradients
                assert torch.all(x[~r] == 0)


def test_results_do_not_depend_on_worker_threads_or_blocks(monkeypatch, lsh_path):
    """One worker or several, batch×heads packed into one work item or one per item, whole or in tiny blocks
    (pairs, rows of the O(n²) backwards): the same numbers, for every backward rule."""
    from bort.attention import group_pool, lsh_buckets, yoso_lsh

    q, k, v = _qkv(b=2, h=3, n=40, d=6, grad=True, seed=5)
    upstream = torch.randn_like(q)
    mask = _mask(b=2, n=40, lengths=(40, 29))

    def run(backward):
        out = yoso(q, k, v, mask, hash_code_len=5, num_hash=6, generator=torch.Generator().manual_seed(0),
                   backward=backward)
        return (out, *torch.autograd.grad((out * upstream).sum(), (q, k, v)))

    rules = ("lsh", "lsh_expectation", "exact")

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel = [run(rule) for rule in rules]
        assert torch.get_num_threads() == 2  # the workers' single-thread setting does not leak to the caller
        serial_map = group_pool.map_groups
        monkeypatch.setattr(yoso_lsh, "map_groups", lambda fn, groups: serial_map(fn, groups, workers=1))
        monkeypatch.setattr(lsh_buckets, "_PAIR_BUDGET", 3)
        monkeypatch.setattr(lsh_buckets, "_REGROUP_BUDGET", 3)
        monkeypatch.setattr(yoso_lsh, "_EXACT_BLOCK", 1)
        assert yoso_lsh.packs_of(6, 40, workers=1) == [(0, 6)]  # short rows: every batch×head in one item
        for got, want in zip([run(rule) for rule in rules], parallel):
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        monkeypatch.setattr(yoso_lsh, "_PACK_TOKENS", 1)  # one batch×head per item
        assert yoso_lsh.packs_of(6, 40, workers=1) == [(g, g + 1) for g in range(6)]
        for got, want in zip([run(rule) for rule in rules], parallel):
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(threads)


def test_map_groups_keeps_order_and_reports_errors():
    from bort.attention.group_pool import map_groups

    assert map_groups(lambda g: g * g, 7, workers=2) == [g * g for g in range(7)]

    def fail(g):
        if g == 3:
            raise RuntimeError("group 3 failed")
        return g

    with pytest.raises(RuntimeError, match="group 3 failed"):
        map_groups(fail, 5, workers=2)


def _pairs_at_angle(theta: float, n: int, d: int, gen: torch.Generator):
    x = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    r = torch.randn(n, d, generator=gen, dtype=torch.float64)
    r = F.normalize(r - (r * x).sum(-1, keepdim=True) * x, dim=-1)
    return x, math.cos(theta) * x + math.sin(theta) * r


@pytest.mark.parametrize("hashing", ["simhash", "hadamard"])
@pytest.mark.parametrize("d,tau", [(64, 8), (20, 4), (5, 6)])
def test_collision_probability_is_one_minus_angle_over_pi_to_the_tau(hashing, d, tau):
    """Empirical P(code(x) = code(y)) for unit vectors at angle θ against (1 − θ/π)^τ. Each of 12 batch×heads
    draws its own hash family; 256 pairs × 32 hashes each. The tolerance is 4 standard errors of the mean
    over batch×heads (pairs inside one family share its hyperplanes, so they are not independent)."""
    from bort.attention.hashing import HashFamily

    gen = torch.Generator().manual_seed(1)
    groups, n, m = 12, 256, 32
    for theta in (0.3, 0.8, 1.3):
        family = HashFamily(hashing, groups, d, m, tau, gen, torch.float64)
        rates = []
        for g in range(groups):
            x, y = _pairs_at_angle(theta, n, d, gen)
            rates.append((family.codes(x, g) == family.codes(y, g)).double().mean().item())
        rates = np.array(rates)
        expected = (1 - theta / math.pi) ** tau
        stderr = max(rates.std(ddof=1), 1e-3) / math.sqrt(groups)
        assert abs(rates.mean() - expected) < 4 * stderr, (theta, rates.mean(), expected, stderr)


def test_hadamard_planes_are_the_fast_transform_rotations():
    """The materialised hyperplanes equal the butterflies applied to each (zero-padded) vector, and the fast
    transform is the Sylvester–Hadamard matrix (scipy's, an independent construction)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    from bort.attention.hashing import HashFamily, fwht

    np.testing.assert_array_equal(fwht(torch.eye(32, dtype=torch.float64)).numpy(), scipy_linalg.hadamard(32))
    for d in (64, 20):
        family = HashFamily("hadamard", 2, d, 9, 7, torch.Generator().manual_seed(0), torch.float64)
        signs = family.signs[1]  # (3, R, D)
        rotations, width = signs.shape[1:]
        assert rotations >= 7 and width >= max(32, d) and width & (width - 1) == 0
        x = torch.randn(30, d, dtype=torch.float64)
        y = F.pad(x, (0, width - d)).unsqueeze(1)
        for s in signs:
            y = fwht(y * s)
        # bit f comes from direction f // R of rotation f % R
        direct = torch.stack([y[:, f % rotations, f // rotations] for f in range(9 * 7)], dim=1)
        torch.testing.assert_close(x @ family.group_planes(1), direct, rtol=1e-10, atol=1e-10)
        # orthogonal rotations: each (padded) direction block has norm D^(3/2) per column
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1, keepdim=True).expand(-1, rotations) * width ** 1.5)


def test_hadamard_yoso_estimates_yoso_e():
    q, k, v = _qkv(b=1, h=2, n=64, d=8, seed=1)
    exact = yoso_e(q, k, v, hash_code_len=4)
    errors = []
    for m in (8, 512):
        out = yoso(q, k, v, hash_code_len=4, num_hash=m, generator=torch.Generator().manual_seed(0),
                   hashing="hadamard")
        errors.append(((out - exact).norm() / exact.norm()).item())
    # 64× the hashes: about 1/8 of the error if it falls like 1/√m (as the simhash test checks in detail)
    assert errors[1] < 0.25 * errors[0] and errors[1] < 0.15, errors
    with pytest.raises(ValueError, match="hashing must be one of simhash, hadamard"):
        yoso(q, k, v, hashing="cross-polytope")


def test_hashing_is_exposed_through_attention_params():
    from bort.config import BortConfig
    from bort.model import BortModel

    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=32, attention="yoso",
                               attention_params={"hashing": "hadamard", "hash_code_len": 6, "num_hash": 4})
    model = BortModel(config)
    assert model.encoder.layer[0].attention.self.mechanism.hashing == "hadamard"
    out = model(torch.randint(5, 100, (2, 11)), torch.ones(2, 11, dtype=torch.long))
    assert torch.isfinite(out.last_hidden_state).all()
    bad = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                            intermediate_size=32, attention="yoso", attention_params={"hashing": "minhash"})
    from bort.attention.hashing import HASHING_METHODS

    listed = ", ".join(HASHING_METHODS)  # every method the hashing module offers, simhash and hadamard first
    assert listed.startswith("simhash, hadamard")
    with pytest.raises(ValueError, match=f"hashing must be one of {listed}; got 'minhash'"):
        get_attention("yoso")(bad, 0)


def test_map_groups_runs_in_the_callers_grad_mode():
    from bort.attention.group_pool import map_groups

    x = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        assert not any(map_groups(lambda g: (x * g).requires_grad, 4, workers=2))
    assert all(map_groups(lambda g: (x * g).requires_grad, 4, workers=2))
    with torch.inference_mode():
        assert all(map_groups(lambda g: torch.is_inference_mode_enabled(), 4, workers=2))


def test_backward_hashes_all_equals_the_default_and_fewer_change_only_the_gradients(lsh_path):
    q, k, v = _qkv(dtype=torch.float32, grad=True)
    mask = _mask()
    g = torch.randn_like(q)

    def run(backward_hashes):
        out = yoso(q, k, v, mask, hash_code_len=4, num_hash=8, generator=torch.Generator().manual_seed(3),
                   backward_hashes=backward_hashes)
        return (out, *torch.autograd.grad(out, (q, k, v), g))

    default, every, fewer = run(None), run(8), run(2)
    for a, b in zip(default, every):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(fewer[0], default[0], rtol=0, atol=0)  # same forward
    assert all(not torch.equal(a, b) for a, b in zip(fewer[1:], default[1:]))
    assert min(_cosine(a, b) for a, b in zip(fewer[1:], default[1:])) > 0.5  # the same gradient, noisier


@pytest.mark.parametrize("backward", ["lsh", "exact"])
def test_yoso_e_equals_plain_autograd_with_padding_in_blocks(monkeypatch, backward):
    # The CPU path (blocked, per batch×head, E recomputed in the backward) against autograd through the plain
    # formula over whole tensors (the path other devices take): outputs and q, k, v gradients, padding
    # included, with query blocks forced small so that several blocks and items are exercised.
    from bort.attention import yoso_lsh
    from bort.attention.yoso import yoso_e_autograd

    monkeypatch.setattr(yoso_lsh, "_EXACT_BLOCK", 64)
    q, k, v = _qkv(b=2, h=3, n=37, d=7, grad=True, seed=6)
    mask = _mask()
    g = torch.randn_like(q)
    got = yoso_e(q, k, v, mask, hash_code_len=7, backward=backward)
    want = yoso_e_autograd(q, k, v, mask, hash_code_len=7, backward=backward)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert torch.all(got[~mask[:, None, :, None].expand_as(got)] == 0)


@pytest.mark.parametrize("tau", [1, 2, 11, 12])
def test_collision_prob_and_its_derivative_in_closed_form(tau):
    from bort.attention.collision_prob import collision_prob, collision_prob_and_grad

    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    base = 1 - torch.acos(x) / math.pi
    torch.testing.assert_close(collision_prob(x, tau), base ** tau, rtol=1e-12, atol=1e-15)
    prob, slope = collision_prob_and_grad(x, tau)
    torch.testing.assert_close(prob, base ** tau, rtol=1e-12, atol=1e-15)
    inner = x[1:-1]  # d/dx arccos = −1/√(1 − x²): infinite at ±1, where the clamped value is used
    want = tau * (1 - torch.acos(inner) / math.pi) ** (tau - 1) / (math.pi * torch.sqrt(1 - inner ** 2))
    torch.testing.assert_close(slope[1:-1], want, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(slope).all()
    with pytest.raises(ValueError, match="exponent"):
        collision_prob(x, -1)


@pytest.mark.parametrize("backward_hashes", [None, 2])
def test_dense_counts_of_short_sequences_equal_the_bucket_path(monkeypatch, backward_hashes):
    # The same hash functions through both paths: outputs and q, k, v gradients agree to rounding, with
    # padding; the default threshold sends these 30-token rows to the dense counts.
    from bort.attention import yoso_lsh

    q, k, v = _qkv(n=30, grad=True, seed=8)
    mask = _mask(n=30, lengths=(30, 19))
    g = torch.randn_like(q)

    def run():
        out = yoso(q, k, v, mask, hash_code_len=4, num_hash=6, generator=torch.Generator().manual_seed(2),
                   backward_hashes=backward_hashes)
        return (out, *torch.autograd.grad(out, (q, k, v), g))

    assert q.shape[2] <= yoso_lsh._DENSE_MAX_TOKENS
    dense = run()
    monkeypatch.setattr(yoso_lsh, "_DENSE_MAX_TOKENS", 0)
    for a, b in zip(dense, run()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --- backward rules: the paper's τ/2 rule by default, the reference code's n2 backward, the exact derivative -----
def test_yoso_e_default_gradients_equal_transformers_self_attention_with_padding():
    """Hugging Face's YosoSelfAttention on its expectation path (use_expectation) against our `yoso_e` fed the
    same projections: output and the gradients of the hidden states and of the Q, K, V weights, in float32,
    padding included. HF's attention core turns the mask m into int(1 + m / 10000), so it is given the
    additive form (0 real, −10000 padding) that maps to 1 / 0."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.yoso.modeling_yoso import YosoSelfAttention

    torch.manual_seed(0)
    batch, n, hidden, heads, tau = 2, 29, 24, 3, 7
    config = transformers.YosoConfig(hidden_size=hidden, num_attention_heads=heads, use_expectation=True,
                                     hash_code_len=tau, conv_window=None, attention_probs_dropout_prob=0.0)
    reference = YosoSelfAttention(config)
    x = torch.randn(batch, n, hidden, requires_grad=True)
    mask = _mask(b=batch, n=n, lengths=(29, 17))
    want_out = reference(x, (1.0 - mask.float()) * -10000.0)[0]
    inputs = [x, reference.query.weight, reference.key.weight, reference.value.weight]
    g = torch.randn_like(want_out)
    want = torch.autograd.grad(want_out, inputs, g)

    def ours(backward):
        split = lambda t: t.view(batch, n, heads, -1).transpose(1, 2)  # noqa: E731
        out = yoso_e(split(reference.query(x)), split(reference.key(x)), split(reference.value(x)), mask,
                     hash_code_len=tau, backward=backward)
        out = out.transpose(1, 2).reshape(batch, n, hidden)
        return out, torch.autograd.grad(out, inputs, g)

    out, got = ours("lsh")
    assert (out - want_out).abs().max().item() <= 1e-5
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-5, (a - b).abs().max().item()
    # The exact derivative is a different gradient (what the default used to be): far outside that tolerance.
    _, exact = ours("exact")
    assert (exact[1] - want[1]).abs().max().item() > 1e-2
    torch.testing.assert_close(exact[3], want[3], rtol=1e-5, atol=1e-5)  # ∇V does not involve dE/dx


def _n2_backward_reference(q, k, v, g, mask, tau, core):
    """The reference code's `n2_backward`, re-derived from its description in float64: the sampled forward
    `core` (normalised) is kept, and the cumulation's backward takes E = (1 − arccos(q̂·k̂)/π)^τ masked by the
    query and key masks, ∇V = Eᵀ·g, ∇q̂ = (τ/2)·((g·Vᵀ) ⊙ E)·k̂, ∇k̂ = (τ/2)·((g·Vᵀ) ⊙ E)ᵀ·q̂; autograd
    carries ∇ through the input and output normalisations."""

    class N2Cumulation(torch.autograd.Function):
        @staticmethod
        def forward(ctx, qn, kn, vv):
            ctx.save_for_backward(qn, kn, vv)
            return core.clone()

        @staticmethod
        def backward(ctx, grad):
            qn, kn, vv = ctx.saved_tensors
            e = (1 - torch.acos((qn @ kn.transpose(-1, -2)).clamp(-1, 1)) / math.pi) ** tau
            e = e * mask[:, None, :, None] * mask[:, None, None, :]
            weighted = (grad @ vv.transpose(-1, -2)) * e
            return weighted @ ((tau / 2) * kn), weighted.transpose(-1, -2) @ ((tau / 2) * qn), \
                e.transpose(-1, -2) @ grad

    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    out = F.normalize(N2Cumulation.apply(qn, kn, v), dim=-1)
    return torch.autograd.grad(out, (q, k, v), g)


def test_lsh_expectation_backward_equals_the_reference_n2_backward(lsh_path):
    """backward="lsh_expectation" against the n2 rule written out independently, with padding: same forward
    as the default "lsh" (the rule changes only the backward), gradients equal to ≤ 1e-5 (float64: ~1e-12)."""
    q, k, v = _qkv(b=2, h=2, n=40, d=6, grad=True, seed=12)
    mask = _mask(b=2, n=40, lengths=(40, 27))
    g = torch.randn_like(q)
    tau, m = 5, 8
    out = yoso(q, k, v, mask, hash_code_len=tau, num_hash=m, generator=torch.Generator().manual_seed(4),
               backward="lsh_expectation")
    got = torch.autograd.grad(out, (q, k, v), g)
    default = yoso(q, k, v, mask, hash_code_len=tau, num_hash=m, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, default, rtol=0, atol=0)
    # The sampled core (the bare estimate before the output normalisation) from the same hash functions.
    real = mask.bool()
    core = _core(F.normalize(q.detach().masked_fill(~real[:, None, :, None], 0), dim=-1),
                 F.normalize(k.detach().masked_fill(~real[:, None, :, None], 0), dim=-1),
                 v.detach().masked_fill(~real[:, None, :, None], 0), tau, m, torch.Generator().manual_seed(4),
                 real=real)
    torch.testing.assert_close(F.normalize(core, dim=-1), out.detach(), rtol=1e-12, atol=1e-12)
    want = _n2_backward_reference(q, k, v, g, mask.double(), tau, core)
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-5
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # ... and it is neither the exact derivative nor the sampled LSH estimate.
    exact = torch.autograd.grad(yoso(q, k, v, mask, hash_code_len=tau, num_hash=m, backward="exact",
                                     generator=torch.Generator().manual_seed(4)), (q, k, v), g)
    sampled = torch.autograd.grad(default, (q, k, v), g)
    assert (exact[0] - got[0]).abs().max().item() > 1e-2
    assert (sampled[0] - got[0]).abs().max().item() > 1e-2


def test_backward_option_is_read_from_attention_params_and_bad_values_list_the_valid_ones():
    from bort.config import BortConfig

    def build(name, params):
        config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                   intermediate_size=32, attention=name, attention_params=params)
        return get_attention(name)(config, 0)

    assert build("yoso_e", {}).backward == "lsh"  # the paper's YOSO-E rule by default
    assert build("yoso", {}).backward == "lsh"
    assert build("yoso_e", {"backward": "exact"}).backward == "exact"
    assert build("yoso_e", {"exact_backward": True}).backward == "exact"
    assert build("yoso", {"backward": "lsh_expectation"}).backward == "lsh_expectation"
    with pytest.raises(ValueError, match="backward must be one of lsh, exact; got 'lsh_expectation'"):
        build("yoso_e", {"backward": "lsh_expectation"})  # YOSO-E's "lsh" already is the rule on E
    valid = "lsh, lsh_expectation, exact, exact_colliding"
    with pytest.raises(ValueError, match=f"backward must be one of {valid}; got 'n2'"):
        build("yoso", {"backward": "n2"})
    with pytest.raises(ValueError, match="exact_backward=True asks for backward 'exact' but backward is 'lsh'"):
        build("yoso", {"backward": "lsh", "exact_backward": True})
    q, k, v = _qkv(n=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="backward must be one of lsh, exact; got 'paper'"):
        yoso_e(q, k, v, backward="paper")
    with pytest.raises(ValueError, match=f"backward must be one of {valid}; got None"):
        LSHAttention.apply(q, k, v, 3, 2, None, None, "simhash", None, True)


@pytest.mark.parametrize("n", [20, 50])  # the dense-counts path (n ≤ 32) and the buckets path
def test_exact_colliding_backward_is_yoso_v2s(n, lsh_path):
    """backward="exact_colliding" against YOSO v2's backward written out from its description, with padding:
    S = pairs colliding in at least one hash (each once), ∇q̂_i = Σ_{j∈S_i} (g_i·v_j)·E′(0.99·q̂_i·k̂_j)·k̂_j with
    E′(c) = τ(1 − arccos(c)/π)^(τ−1)/(π√(1 − c²)), ∇k̂ likewise, ∇V = (C/m)ᵀ·g; the forward is the default's."""
    from bort.attention.hashing import HashFamily

    b, h, d, tau, m = 2, 2, 8, 4, 6
    for hashing in ("simhash", "fast_hadamard"):
        gen = torch.Generator().manual_seed(3)
        q, k = (F.normalize(torch.randn(b, h, n, d, generator=gen, dtype=torch.float64), dim=-1) for _ in range(2))
        v, g = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(2))
        real = _mask(b=b, n=n, lengths=(n, n - 7))
        q, k, v = q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out = LSHAttention.apply(q, k, v, tau, m, torch.Generator().manual_seed(9), "exact_colliding", hashing, real,
                                 False)
        grads = torch.autograd.grad(out, (q, k, v), g)
        default = LSHAttention.apply(q, k, v, tau, m, torch.Generator().manual_seed(9), "lsh", hashing, real, False)
        torch.testing.assert_close(out, default, rtol=0, atol=0)
        family = HashFamily(hashing, b * h, d, m, tau, torch.Generator().manual_seed(9), torch.float64)
        for group in range(b * h):
            bi, hi = divmod(group, h)
            r = real[bi]
            qq, kk = q[bi, hi].detach(), k[bi, hi].detach()
            counts = _dense_collisions(family.codes(qq, group), family.codes(kk, group), tau)
            counts = counts * (r[:, None] & r[None, :])
            c = 0.99 * (qq @ kk.t())
            slope = tau * (1 - torch.acos(c) / math.pi) ** (tau - 1) / (math.pi * torch.sqrt(1 - c * c))
            vv, gg = v[bi, hi].detach().masked_fill(~r[:, None], 0), g[bi, hi].masked_fill(~r[:, None], 0)
            a = (gg @ vv.t()) * slope * (counts > 0)
            expected = (a @ kk, a.t() @ qq, (counts / m).t() @ gg)
            for got, want in zip((grads[0][bi, hi], grads[1][bi, hi], grads[2][bi, hi]), expected):
                torch.testing.assert_close(got.masked_fill(~r[:, None], 0), want, rtol=1e-10, atol=1e-12)
                assert torch.all(got[~r] == 0)
        # not the rule on all pairs, not the sampled τ/2 estimate
        exact = torch.autograd.grad(LSHAttention.apply(q, k, v, tau, m, torch.Generator().manual_seed(9), "exact",
                                                       hashing, real, False), (q, k, v), g)
        lsh = torch.autograd.grad(default, (q, k, v), g)
        assert (exact[0] - grads[0]).abs().max() > 1e-3 and (lsh[0] - grads[0]).abs().max() > 1e-3
