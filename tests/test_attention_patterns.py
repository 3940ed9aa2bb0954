"""Fixed sparse patterns (SparseBERT's baselines) and their dense-masked execution."""
from __future__ import annotations

import math

import pytest
import torch

import bort.attention.masked  # noqa: F401  (registers the pattern mechanisms)
from bort import BortConfig, BortModel
from bort.attention import get_attention, patterns

NAMES = list(patterns.PATTERNS)

# SparseBERT's README ratios at n = 128; the first four are exact to 0.1, the last two within 0.5.
README = {"strided": (70.4, 0.05), "fixed": (72.7, 0.05), "logsparse": (89.8, 0.05), "star": (96.1, 0.05),
          "longformer": (88.7, 0.5), "bigbird": (93.2, 0.5)}


@pytest.mark.parametrize("name", NAMES)
def test_default_sparsity_at_128_matches_sparsebert(name):
    target, tol = README[name]
    assert abs(patterns.sparsity(patterns.mask(name, 128)) - target) <= tol


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 7, 64, 128, 300])
def test_masks_have_the_diagonal_and_expected_symmetry(name, n):
    m = patterns.mask(name, n)
    assert m.shape == (n, n) and m.dtype == torch.bool
    assert bool(m.diagonal().all())  # every token sees itself, so no real query row is ever empty
    if name not in ("fixed", "bigbird"):  # fixed's summary columns and bigbird's random keys are one-way
        assert torch.equal(m, m.T)


def test_defaults_scale_with_length():
    # strided/fixed follow sqrt(n) (sparser as n grows); window patterns stay linear (constant keys per row).
    assert patterns.resolve_params("strided", 512)["stride"] == 8
    for n in (256, 1024):
        rows = patterns.mask("longformer", n).sum(1).float()
        assert rows[1:].max() <= 2 * 6 + 2
    assert patterns.sparsity(patterns.mask("logsparse", 1024)) > patterns.sparsity(patterns.mask("logsparse", 128))


def test_bigbird_is_seeded_and_counts_exactly():
    a, b = patterns.mask("bigbird", 128, seed=3), patterns.mask("bigbird", 128, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, patterns.mask("bigbird", 128, seed=4))
    state = torch.random.get_rng_state()
    patterns.mask("bigbird", 64)
    assert torch.equal(state, torch.random.get_rng_state())  # private generator, global RNG untouched
    base = patterns.mask("bigbird", 128, num_random=0)
    extra = (a & ~base).sum(1)
    # the global rows (first and last) already see all; every other row gets exactly num_random more keys
    assert bool((extra[1:-1] == 2).all()) and extra[0] == 0 and extra[-1] == 0


@pytest.mark.parametrize("num_global,first_last,first", [(2, [0, 127], [0, 1]), (3, [0, 1, 127], [0, 1, 2]),
                                                         (1, [0], [0]), (0, [], [])])
def test_bigbird_global_positions(num_global, first_last, first):
    """Default: the first ceil(g/2) and the last floor(g/2) positions (BigBird's and HF's first and last
    blocks); global_blocks="first": the first g (the former layout). Global rows and columns are all True,
    and no other row or column is."""
    for global_blocks, expected in ((None, first_last), ("first_last", first_last), ("first", first)):
        extra = {} if global_blocks is None else {"global_blocks": global_blocks}
        m = patterns.mask("bigbird", 128, num_global=num_global, num_random=0, **extra)
        assert torch.nonzero(m.all(1)).flatten().tolist() == expected
        assert torch.nonzero(m.all(0)).flatten().tolist() == expected
    # same sparsity either way: only where the global positions sit changes
    assert patterns.sparsity(patterns.mask("bigbird", 128, num_global=num_global)) == \
        patterns.sparsity(patterns.mask("bigbird", 128, num_global=num_global, global_blocks="first"))


def test_bigbird_global_blocks_rejects_unknown_values():
    for bad in ("last", 2, None, ["first"]):
        with pytest.raises(ValueError, match=r"pattern 'bigbird': global_blocks=.*; valid values: first_last, first"):
            patterns.mask("bigbird", 32, global_blocks=bad)
    with pytest.raises(ValueError, match="unknown parameter"):  # a BigBird option only
        patterns.mask("longformer", 32, global_blocks="first")


def test_bigbird_block_layout_matches_hugging_face_big_bird():
    """HF's block-sparse BigBird (training mode, so its random blocks are drawn) returns its attention
    probabilities as a dense n × n matrix: pooled to blocks, its global rows and columns (first and last
    block) equal ours for the same block size and length, its 3-block band is ours (window 1), and every
    row reads as many key blocks as ours (random blocks drawn outside window and globals in both). The
    former layout (global_blocks="first") does not match."""
    transformers = pytest.importorskip("transformers")
    bs, nb, heads, num_random = 8, 16, 2, 2
    n = bs * nb
    config = transformers.BigBirdConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=16,
        max_position_embeddings=n, attention_type="block_sparse", block_size=bs, num_random_blocks=num_random,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, sep_token_id=2)
    torch.manual_seed(0)
    model = transformers.BigBirdModel(config).train()  # eval mode would put every random block at block 0
    with torch.no_grad():
        probs = model(torch.randint(5, 50, (1, n)), output_attentions=True).attentions[0][0]
    assert probs.shape == (heads, n, n)
    hf = (probs > 0).reshape(heads, nb, bs, nb, bs).any(4).any(2)
    params = dict(block=bs, window=1, num_global=2, num_random=num_random)
    ours = patterns.block_layout("bigbird", n, bs, num_heads=heads, **params)

    def global_rows(layout):
        return torch.nonzero(layout.all(-1).all(0)).flatten().tolist()

    def global_cols(layout):
        return torch.nonzero(layout.all(-2).all(0)).flatten().tolist()

    assert global_rows(hf) == global_rows(ours) == [0, nb - 1]
    assert global_cols(hf) == global_cols(ours) == [0, nb - 1]
    for layout in (hf, ours):
        assert torch.equal(layout[:, 0], torch.ones(heads, nb, dtype=torch.bool))
        assert torch.equal(layout[:, :, -1], torch.ones(heads, nb, dtype=torch.bool))
    band = patterns.mask("bigbird", nb, window=1, num_global=0, num_random=0)
    assert bool((hf >= band).all()) and bool((ours >= band).all())
    assert torch.equal(hf.sum(-1), ours.sum(-1))
    old = patterns.block_layout("bigbird", n, bs, num_heads=heads, global_blocks="first", **params)
    assert global_rows(old) == [0, 1] != global_rows(hf)


@pytest.mark.parametrize("name", NAMES)
def test_block_layout_covers_the_mask_tightly(name):
    n, bs, heads = 64, 8, 3
    layout = patterns.block_layout(name, n, bs, num_heads=heads)
    assert layout.shape == (heads, n // bs, n // bs)
    masks = patterns.head_masks(name, n, heads)
    expanded = layout.repeat_interleave(bs, 1).repeat_interleave(bs, 2)
    assert bool((masks <= expanded).all())  # no allowed entry outside a kept tile
    tiles = masks.reshape(heads, n // bs, bs, n // bs, bs).sum((2, 4))
    assert torch.equal(tiles > 0, layout)  # and no kept tile without an allowed entry


def test_block_granularity_bigbird_layout():
    # BigBird's own block form: 3 window + 2 global + 3 random blocks of 64 at 4096 (about 15% dense).
    params = dict(block=64, window=1, num_global=2, num_random=3)
    layout = patterns.block_layout("bigbird", 4096, 64, num_heads=2, **params)
    assert torch.equal(layout[0].repeat_interleave(64, 0).repeat_interleave(64, 1),
                       patterns.mask("bigbird", 4096, **params))
    assert not torch.equal(layout[0], layout[1])  # random blocks differ per head
    assert 14.0 < 100 - patterns.sparsity(layout) < 16.5


def _reference(q, k, v, allowed):
    """softmax(QKᵀ/√d + M)·V with M = 0 where allowed, -1e9 elsewhere (finite, so rows with no key stay
    finite and are compared separately)."""
    bias = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, -1e9)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias).softmax(-1)
    return probs @ v, probs


def _mechanism(name, heads=3, **params):
    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=heads * 4, num_attention_heads=heads,
                               intermediate_size=8, attention=name, attention_params=params)
    return get_attention(name)(config, 0).eval()


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_masked_mechanism_equals_reference_with_padding(name, need_weights):
    torch.manual_seed(0)
    b, h, n, d = 2, 3, 24, 8
    mech = _mechanism(name, heads=h)
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    kpm = torch.ones(b, n, dtype=torch.bool)
    kpm[1, 15:] = False
    out, probs = mech(q, k, v, key_padding_mask=kpm, need_weights=need_weights)
    allowed = patterns.head_masks(name, n, h)[None] & kpm[:, None, None, :]
    ref, ref_probs = _reference(*(t.detach().clone().requires_grad_() for t in (q, k, v)), allowed)
    ok = allowed.any(-1, keepdim=True)  # rows with at least one key (the others are zero by design)
    assert torch.allclose(out * ok, ref * ok, atol=1e-5)
    if need_weights:
        assert torch.allclose(probs * ok, ref_probs * ok, atol=1e-5)
        assert bool((probs[~allowed.expand_as(probs)] == 0).all())
    else:
        assert probs is None
    # Gradients for q, k and v with the same upstream gradient, restricted to rows that have keys.
    w = torch.randn(b, h, n, d) * ok
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    (_reference(qr, kr, vr, allowed)[0] * w).sum().backward()
    (out * w).sum().backward()
    for got, want in ((q.grad, qr.grad), (k.grad, kr.grad), (v.grad, vr.grad)):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(need_weights):
    # No global token and a window of 1: padded queries far from real keys see nothing.
    mech = _mechanism("longformer", heads=2, window=1, num_global=0)
    q, k, v = (torch.randn(1, 2, 10, 4, requires_grad=True) for _ in range(3))
    kpm = torch.tensor([[True] * 4 + [False] * 6])
    out, probs = mech(q, k, v, key_padding_mask=kpm, need_weights=need_weights)
    assert torch.isfinite(out).all() and bool((out[:, :, 6:] == 0).all())
    if need_weights:
        assert bool((probs[:, :, 6:] == 0).all())
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_pattern_mask_is_cached_per_length():
    mech = _mechanism("bigbird", heads=2)
    first = mech.pattern_mask(32, torch.device("cpu"))
    assert first.shape == (2, 32, 32) and mech.pattern_mask(32, torch.device("cpu")) is first
    assert _mechanism("strided").pattern_mask(32, torch.device("cpu")).shape == (1, 32, 32)


def test_bort_model_with_longformer_trains():
    torch.manual_seed(0)
    config = BortConfig.preset("bert-base", num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=32, attention="longformer")
    model = BortModel(config)
    ids = torch.randint(5, 100, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 12:] = 0
    out = model(ids, mask, output_attentions=True)
    out.last_hidden_state.sum().backward()
    assert torch.isfinite(out.last_hidden_state).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.encoder.parameters() if p.requires_grad)
    probs = out.attentions[0]
    assert bool((probs[0, :, 15, 1:9] == 0).all()) and bool((probs[0, :, 15, 9:] > 0).all())  # window 6 + global 0
    assert bool((probs[1, :, :, 12:] == 0).all())  # padded keys


@pytest.mark.parametrize("call, message", [
    (lambda: patterns.mask("diagonal", 16), "valid patterns: strided, fixed, longformer"),
    (lambda: patterns.mask("longformer", 8, window=9), "window=9 does not fit seq_len 8; valid values: 0..7"),
    (lambda: patterns.mask("strided", 8, stride=0), "valid values: 1..8"),
    (lambda: patterns.mask("star", 12, block=5), "block=5 does not divide seq_len 12; valid values: 1, 2, 3, 4, 6"),
    (lambda: patterns.mask("fixed", 16, width=2), "valid parameters: stride, summary, block"),
    (lambda: patterns.mask("fixed", 16, stride=4, summary=5), "summary=5 does not fit"),
    (lambda: patterns.mask("bigbird", 16, seed=1.5), "seed must be an integer"),
    (lambda: patterns.block_layout("strided", 12, 5), "block_size 5 does not divide seq_len 12"),
    (lambda: get_attention("longformr"), "known:"),
    (lambda: _mechanism("star", radius=2), "unknown attention_params radius; valid parameters: block, "),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()


def test_sparsity_of_empty_mask_is_an_error():
    with pytest.raises(ValueError):
        patterns.sparsity(torch.zeros(0, 0, dtype=torch.bool))


def test_mask_cache_stays_bounded_over_many_lengths():
    """Length-bucketed batches bring many lengths: the per-length mask cache keeps only the newest few."""
    from bort.attention import masked

    cfg = BortConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=8, attention="longformer")
    mech = masked.MECHANISMS["longformer"](cfg)
    for n in range(16, 16 + 3 * masked._CACHE_LIMIT):
        mech.pattern_mask(n, torch.device("cpu"))
    assert len(mech._cache) == masked._CACHE_LIMIT
    assert (16 + 3 * masked._CACHE_LIMIT - 1, torch.device("cpu")) in mech._cache
