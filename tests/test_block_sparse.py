"""Block-sparse and FlexAttention execution of the patterns, held equal to the dense-masked reference."""
from __future__ import annotations

import pytest
import torch

from bort import BortConfig, BortModel
from bort.attention import flex, get_attention, patterns
from bort.attention.block_sparse import BlockSparsePlan, _bucket, block_sparse_attention
from bort.attention.masked import masked_attention

TOL = 1e-5  # fp32, outputs and gradients (the bar)
# Plus a relative part of 1e-6 (about 8 float32 ulps) of the reference value: a global key's ∇V sums over
# every query row, and at a magnitude of ~20 the two summation orders alone differ by ~1e-5.
RTOL = 1e-6


def _inputs(batch: int, heads: int, n: int, d: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, d, generator=gen, dtype=dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, heads, n, d, generator=gen, dtype=dtype)
    return q, k, v, grad


def _padding(batch: int, n: int, seed: int = 1) -> torch.Tensor:
    """Right padding with varied lengths; the last row keeps every token."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n + 1, (batch,), generator=gen)
    lengths[-1] = n
    return torch.arange(n)[None, :] < lengths[:, None]


def _compare(q, k, v, grad, allowed, block_size, key_padding_mask=None, tol=TOL):
    """block_sparse_attention vs masked_attention: outputs and dq, dk, dv; neither may hold NaN."""
    full = allowed[None]
    if key_padding_mask is not None:
        full = full & key_padding_mask[:, None, None, :]
    ref, _ = masked_attention(q, k, v, full)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    out = block_sparse_attention(q, k, v, allowed, block_size, key_padding_mask=key_padding_mask)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert not torch.isnan(a).any(), f"NaN in {name}"
        excess = ((a - b).abs() - tol - RTOL * b.abs()).max().item()
        err = (a - b).abs().max().item()
        assert excess <= 0, f"{name}: max |block_sparse - masked| = {err:.2e}, beyond {tol} + {RTOL}·|masked|"
    return out


@pytest.mark.parametrize("name", list(patterns.PATTERNS))
@pytest.mark.parametrize("n,block_size", [(192, 32), (257, 16)])  # 257: not a multiple of the block
def test_every_pattern_equals_the_masked_reference(name, n, block_size):
    heads = 3
    allowed = patterns.head_masks(name, n, heads, **({"window": 8} if name in ("longformer", "bigbird") else {}))
    q, k, v, grad = _inputs(2, heads, n, 16)
    _compare(q, k, v, grad, allowed, block_size, key_padding_mask=_padding(2, n))


@pytest.mark.parametrize("name", ["bigbird", "longformer", "star"])
def test_block_aligned_patterns_with_per_head_layouts(name):
    # block = block_size: every used tile is fully allowed (no element mask inside), BigBird's random
    # blocks differ per head, and rows have different numbers of key blocks (padding slots).
    n, bs, heads = 512, 32, 4
    allowed = patterns.head_masks(name, n, heads, block=bs, **({"window": 2} if name == "longformer" else {}))
    plan = BlockSparsePlan.from_mask(allowed, bs)
    sparse = [s for s in plan.segments if s.keys is not None]
    assert sparse and all(s.tile_bias is None for s in sparse)
    if name == "bigbird":
        assert plan.heads == heads and not torch.equal(allowed[0], allowed[1])
    q, k, v, grad = _inputs(2, heads, n, 16, seed=2)
    _compare(q, k, v, grad, allowed, bs, key_padding_mask=_padding(2, n, seed=3))


@pytest.mark.parametrize("recompute", [False, True])
def test_arbitrary_element_mask_with_empty_rows_and_fully_padded_inputs(recompute, monkeypatch):
    # A DAM-like mask: no block structure, some rows allowed nothing at all, and one batch row entirely
    # padding. Those rows must give 0 with finite gradients, as in the reference. `recompute`: the backward
    # recomputes the probabilities instead of using those the forward kept (what happens above the cap).
    import bort.attention.block_sparse as bsm

    if recompute:
        monkeypatch.setattr(bsm, "_SAVED_PROBS_MAX", 0)
    n, heads = 150, 2
    gen = torch.Generator().manual_seed(5)
    allowed = torch.rand(heads, n, n, generator=gen) < 0.02
    allowed[:, 7] = False
    allowed[1, 100:120] = False
    kpm = torch.ones(3, n, dtype=torch.bool)
    kpm[1] = False
    kpm[2, 90:] = False
    q, k, v, grad = _inputs(3, heads, n, 8, seed=6)
    out = _compare(q, k, v, grad, allowed, 16, key_padding_mask=kpm)
    assert out[:, :, 7].abs().max() == 0 and out[1].abs().max() == 0 and out[:, 1, 100:120].abs().max() == 0


def test_shared_mask_broadcasts_over_heads_and_value_dim_may_differ():
    n = 200
    allowed = patterns.mask("longformer", n, window=10)[None]
    q, k, _, _ = _inputs(1, 4, n, 16, seed=7)
    v = torch.randn(1, 4, n, 24, requires_grad=True)
    grad = torch.randn(1, 4, n, 24)
    _compare(q, k, v, grad, allowed, 32)


def test_chunking_over_rows_changes_nothing(monkeypatch):
    # A tiny score budget splits every segment into one query block per chunk (what long inputs get for
    # their dense rows); the result must not depend on the chunking, nor on how heads meet workers.
    import bort.attention.block_sparse as bsm

    n, heads = 192, 4
    monkeypatch.setattr(bsm, "_SCORE_BUDGET", 32 * n)  # one dense query block of 32 rows × n keys
    chunks = list(bsm._chunks(BlockSparsePlan.from_layout(torch.ones(1, 6, 6, dtype=torch.bool), 32)))
    assert [(r0, r1) for _, r0, r1 in chunks] == [(i, i + 1) for i in range(6)]
    allowed = patterns.head_masks("bigbird", n, heads, block=16, window=1, num_global=1, num_random=2)
    q, k, v, grad = _inputs(2, heads, n, 8, seed=10)
    _compare(q, k, v, grad, allowed, 32, key_padding_mask=_padding(2, n, seed=11))


def test_float64_matches_to_rounding():
    n = 130
    allowed = patterns.head_masks("bigbird", n, 2, window=4)
    q, k, v, grad = _inputs(2, 2, n, 8, seed=8, dtype=torch.float64)
    _compare(q, k, v, grad, allowed, 16, key_padding_mask=_padding(2, n), tol=1e-12)


def test_plan_for_bigbird_base_layout():
    # BigBird's own layout: block 64, 3 window, 2 global and 3 random blocks at n = 4096 computes ≈15% of the
    # score matrix; the two global query blocks (the first and the last) are computed densely, every other
    # row gathers 8 key blocks.
    n, bs = 4096, 64
    layout = patterns.block_layout("bigbird", n // bs, 1, num_heads=12, window=1, num_global=2, num_random=3)
    plan = BlockSparsePlan.from_layout(layout, bs)
    assert abs(plan.tile_fraction - 0.152) < 0.002
    dense = [s for s in plan.segments if s.keys is None]
    assert len(dense) == 1 and dense[0].rows.tolist() == [0, n // bs - 1]
    assert [s.keys.shape for s in plan.segments if s.keys is not None] == [torch.Size([12, 62, 8])]
    expanded = layout.repeat_interleave(bs, 1).repeat_interleave(bs, 2)
    small = BlockSparsePlan.from_mask(expanded[:, :1024, :1024], bs)
    same = BlockSparsePlan.from_layout(layout[:, :16, :16], bs)
    for a, b in zip(small.segments, same.segments):
        assert torch.equal(a.rows, b.rows)
        assert (a.keys is None and b.keys is None) or torch.equal(a.keys, b.keys)


def test_segment_widths_waste_at_most_a_third():
    assert [_bucket(c) for c in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 17, 25)] == \
        [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 16, 24, 32]
    assert all(_bucket(c) < 1.5 * c + 1 for c in range(1, 300))


@pytest.mark.parametrize("recompute", [False, True])
def test_dropout_drops_probabilities_and_the_backward_replays_the_mask(recompute, monkeypatch):
    # With V = identity the output is the dropped probability matrix itself: every entry is either 0 or
    # P / (1 - p), about a fraction p of the allowed ones are 0, and no disallowed entry appears.
    import bort.attention.block_sparse as bsm

    if recompute:
        monkeypatch.setattr(bsm, "_SAVED_PROBS_MAX", 0)
    n, p = 96, 0.25
    allowed = patterns.mask("longformer", n, window=12)[None]
    gen = torch.Generator().manual_seed(9)
    q, k = torch.randn(2, 2, n, 16, generator=gen), torch.randn(2, 2, n, 16, generator=gen)
    eye = torch.eye(n).expand(2, 2, n, n)
    probs = masked_attention(q, k, eye, allowed[None], need_weights=True)[1]
    torch.manual_seed(0)
    dropped = block_sparse_attention(q, k, eye, allowed, 16, dropout_p=p)
    kept = dropped != 0
    assert not bool((kept & ~allowed[None]).any())
    assert torch.allclose(dropped[kept], probs[kept] / (1 - p), atol=1e-6)
    share = 1 - kept.sum().item() / (allowed.sum().item() * 4)
    assert abs(share - p) < 0.03
    # The same global seed gives the same draws; the backward uses them (finite differences agree).
    qd, kd, vd = (t.double().requires_grad_() for t in (q[:1, :1, :40, :4], k[:1, :1, :40, :4], q[:1, :1, :40, :4]))

    def f(q_, k_, v_):
        torch.manual_seed(1)
        return block_sparse_attention(q_, k_, v_, allowed[:, :40, :40], 8, dropout_p=0.3)

    assert torch.equal(f(qd, kd, vd), f(qd, kd, vd))
    assert torch.autograd.gradcheck(f, (qd, kd, vd), fast_mode=True)


def _tiny_config(impl: str | None, **extra) -> BortConfig:
    params = {"block": 8, "window": 1, "num_global": 1, "num_random": 2, **extra}
    if impl is not None:
        params["impl"] = impl
    return BortConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=128, attention="bigbird",
                      attention_params=params)


@pytest.mark.parametrize("impl", ["block_sparse", "auto"])
def test_model_with_block_sparse_equals_masked(impl):
    torch.manual_seed(0)
    ref = BortModel(_tiny_config(None)).eval()
    model = BortModel(_tiny_config(impl, block_size=8)).eval()
    model.load_state_dict(ref.state_dict())
    ids = torch.randint(4, 100, (2, 128))
    mask = _padding(2, 128, seed=4).long()
    a = ref(ids, attention_mask=mask).last_hidden_state
    b = model(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (a - b)[real].abs().max().item() <= TOL
    # Parameter gradients through two layers (LayerNorms, FFNs): in float64, so that equality is tested to
    # rounding rather than within fp32 noise accumulated over the network.
    for m in (ref, model):
        m.double()(ids, attention_mask=mask).last_hidden_state[real].square().mean().backward()
    for (name, pa), pb in zip(ref.named_parameters(), model.parameters()):
        assert (pa.grad - pb.grad).abs().max().item() <= 1e-12, name
    mech = model.encoder.layer[0].attention.self.mechanism
    assert mech._choose(torch.zeros(1, 4, 128, 16), 0.0) == "block_sparse"
    # need_weights returns the probabilities (from the dense-masked path).
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert out.attentions[0].shape == (2, 4, 128, 128)


def test_auto_keeps_the_dense_path_when_the_layout_is_nearly_full():
    # Element-level random keys land in almost every tile, so only the window and global parts stay sparse.
    mech = get_attention("bigbird")(_tiny_config("auto", block=1, window=20, num_random=0), 0)
    assert mech._choose(torch.zeros(1, 4, 64, 16), 0.0) == "masked"
    assert mech._choose(torch.zeros(1, 4, 2048, 16), 0.0) == "block_sparse"


def test_bad_parameters_name_the_valid_values():
    with pytest.raises(ValueError, match=r"impl='fast'.*valid values: masked, block_sparse, flex, auto"):
        BortModel(_tiny_config("fast"))
    with pytest.raises(ValueError, match=r"block_size=0.*positive integer"):
        BortModel(_tiny_config("block_sparse", block_size=0))
    with pytest.raises(ValueError, match=r"unknown attention_params blok.*block_size.*impl"):
        BortModel(_tiny_config("block_sparse", blok=3))
    model = BortModel(_tiny_config("block_sparse"))
    with pytest.raises(ValueError, match=r"block=8 does not divide seq_len 60; valid values: 1, 2, 3, 4, 5, 6"):
        model(torch.randint(4, 100, (1, 60)))
    q = torch.zeros(1, 2, 10, 4)
    with pytest.raises(ValueError, match=r"bool tensor \(heads or 1, n, n\)"):
        block_sparse_attention(q, q, q, torch.ones(1, 10, 10), 4)
    with pytest.raises(ValueError, match=r"\(heads or 1, n, n\) = \(…, 10, 10\)"):
        block_sparse_attention(q, q, q, torch.ones(1, 12, 12, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"2 head layouts; expected 1 or 2|3 head layouts; expected 1 or 2"):
        block_sparse_attention(q, q, q, torch.ones(3, 10, 10, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"block_size must be a positive integer"):
        block_sparse_attention(q, q, q, torch.ones(1, 10, 10, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(batch, n\) = \(1, 10\)"):
        block_sparse_attention(q, q, q, torch.ones(1, 10, 10, dtype=torch.bool), 4, key_padding_mask=torch.ones(1, 9))
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        block_sparse_attention(q, q, q, torch.ones(1, 10, 10, dtype=torch.bool), 4, dropout_p=1.0)
    plan = BlockSparsePlan.from_mask(torch.ones(1, 12, 12, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"plan was built for n=12, but the inputs have n=10"):
        block_sparse_attention(q, q, q, plan)


# --- FlexAttention -------------------------------------------------------------------------------------------
needs_flex = pytest.mark.skipif(not flex.available(), reason="FlexAttention needs PyTorch >= 2.5")


@needs_flex
def test_flex_forward_equals_masked_on_cpu():
    # CPU runs FlexAttention's forward only; its eager path (compile=False) checks the mask translation:
    # per-head masks, padding through score_mod, and empty rows giving 0.
    n, heads = 100, 3
    allowed = patterns.head_masks("bigbird", n, heads, window=3)
    allowed[:, 5] = False
    kpm = _padding(2, n, seed=2)
    q, k, v, _ = _inputs(2, heads, n, 16, seed=3)
    with torch.no_grad():
        ref, _ = masked_attention(q, k, v, allowed[None] & kpm[:, None, None, :])
        out = flex.flex_masked_attention(q, k, v, allowed, key_padding_mask=kpm, compile=False)
    assert (out - ref).abs().max().item() <= TOL


@needs_flex
def test_flex_refuses_what_it_cannot_run():
    model = BortModel(_tiny_config("flex"))
    ids = torch.randint(4, 100, (1, 64))
    with pytest.raises(flex.FlexUnavailableError, match="forward pass on CPU.*block_sparse"):
        model.eval()(ids)  # gradients enabled: refused on CPU, not silently run another way
    with pytest.raises(flex.FlexUnavailableError, match="no attention dropout"):
        with torch.no_grad():
            model.train()(ids)


@needs_flex
@pytest.mark.slow
def test_flex_compiled_model_inference_on_cpu():
    # Compiles FlexAttention for the CPU (tens of seconds), hence slow.
    torch.manual_seed(0)
    ref = BortModel(_tiny_config(None)).eval()
    model = BortModel(_tiny_config("flex", block_size=32)).eval()
    model.load_state_dict(ref.state_dict())
    ids = torch.randint(4, 100, (2, 128))
    mask = _padding(2, 128, seed=4).long()
    with torch.no_grad():
        a = ref(ids, attention_mask=mask).last_hidden_state
        b = model(ids, attention_mask=mask).last_hidden_state
    assert (a - b)[mask.bool()].abs().max().item() <= TOL
