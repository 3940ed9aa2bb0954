"""DAM (learned attention masks): Gumbel straight-through, sharing across layers, structure, penalty, search
under a λ penalty, export to a fixed mask and its execution, checkpoints, the `bort mask export` command and
the distillation flag."""
from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import torch.nn as nn

from bort import BortConfig, BortForMaskedLM, BortModel, load_pretrained, save_pretrained
from bort.attention import dam as dam_module
from bort.attention import get_attention
from bort.attention.dam import DAMMask, export_mask, gumbel_keep, mask_density, mask_penalty
from bort.attention.mask_export import to_fixed_mask
from bort.attention.masked import masked_attention
from bort.checkpoint import CheckpointError
from bort.cli import main

HEADS, LAYERS, MAXLEN, VOCAB = 4, 3, 16, 60


def tiny_config(attention: str = "dam_s", **params) -> BortConfig:
    # No dropout: outputs are compared with references entry by entry.
    return BortConfig.preset("bort_4_8_768_1024", vocab_size=VOCAB, hidden_size=32, num_attention_heads=HEADS,
                             intermediate_size=48, num_hidden_layers=LAYERS, max_position_embeddings=MAXLEN,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention=attention,
                             attention_params=params)


def inputs(n: int = 12, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, n), generator=g)
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[1, n - 4:] = 0  # padding in the second sequence
    return ids, mask


@pytest.fixture
def recorded(monkeypatch):
    """Every (layer index, mask) handed to a layer, in call order."""
    calls: list[tuple[int, torch.Tensor]] = []
    original = DAMMask.mask_for

    def spy(self, layer_idx, n):
        mask = original(self, layer_idx, n)
        calls.append((layer_idx, mask.detach().clone()))
        return mask

    monkeypatch.setattr(DAMMask, "mask_for", spy)
    return calls


class _ReferenceMasked(nn.Module):
    """Dense attention restricted to a given bool (heads, n, n) mask through `masked_attention`."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask.bool()

    def forward(self, q, k, v, key_padding_mask=None, need_weights=False):
        allowed = self.mask[None]
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask.bool()[:, None, None, :]
        return masked_attention(q, k, v, allowed, need_weights=need_weights)


def reference_model(model: nn.Module, layer_masks: list[torch.Tensor]) -> BortModel:
    """A dense-attention encoder with `model`'s weights whose layer i attends under layer_masks[i]."""
    config = BortConfig.from_dict({**model.config.to_dict(), "attention": "dense", "attention_params": {}})
    ref = BortModel(config).eval()
    encoder = model.bort if hasattr(model, "bort") else model
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(("encoder.dam.", "encoder.fixed_mask."))}
    ref.load_state_dict(state, strict=True)
    for layer, mask in zip(ref.encoder.layer, layer_masks):
        layer.attention.self.mechanism = _ReferenceMasked(mask)
    return ref


# --- the estimator ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_straight_through_is_hard_forward_and_soft_gradient(tau):
    torch.manual_seed(0)
    logits = torch.randn(7, 5, 2, requires_grad=True)
    gumbels = -torch.log(-torch.log(torch.rand(7, 5, 2)))
    weights = torch.randn(7, 5)
    keep = gumbel_keep(logits, tau, gumbels)
    perturbed = (logits + gumbels).detach()
    assert torch.equal(keep, (perturbed[..., 0] >= perturbed[..., 1]).float())  # exact 0/1
    (weights * keep).sum().backward()
    soft_logits = logits.detach().clone().requires_grad_(True)
    soft = torch.softmax((soft_logits + gumbels) / tau, dim=-1)[..., 0]
    (weights * soft).sum().backward()
    torch.testing.assert_close(logits.grad, soft_logits.grad, rtol=1e-5, atol=1e-6)


def test_gumbel_max_samples_keep_with_softmax_probability():
    # The Gumbel-max trick: P(keep) = softmax(logits)[keep]; 20k draws per entry, 4-sigma bound.
    torch.manual_seed(1)
    logits = torch.tensor([[0.0, 0.0], [1.5, -0.5], [-2.0, 0.0]])
    draws = 20000
    keep = gumbel_keep(logits.expand(draws, 3, 2).contiguous()).mean(0)
    expected = torch.softmax(logits, -1)[:, 0]
    bound = 4 * torch.sqrt(expected * (1 - expected) / draws)
    assert bool(((keep - expected).abs() <= bound).all()), (keep, expected)


def test_offset_expansion_equals_advanced_indexing_forward_and_backward():
    from bort.attention.dam import _OffsetsToPairs

    torch.manual_seed(0)
    for n in (1, 2, 7, 33):
        x = torch.randn(3, n, requires_grad=True)
        idx = torch.arange(n)
        offsets = (idx[:, None] - idx[None, :]).abs()
        expected = x[:, offsets]
        got = _OffsetsToPairs.apply(x)
        assert torch.equal(got, expected)
        g = torch.randn(3, n, n)
        (ge,) = torch.autograd.grad(expected, x, g)
        (gg,) = torch.autograd.grad(got, x, g)
        torch.testing.assert_close(gg, ge, rtol=1e-5, atol=1e-5)


# --- sampling and sharing -----------------------------------------------------------------------------------
def test_one_sample_per_forward_shared_by_all_layers_fresh_across_forwards(recorded):
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_s")).train()
    ids, mask = inputs()
    model(ids, mask)
    first = [m for _, m in recorded]
    assert [i for i, _ in recorded] == list(range(LAYERS))
    assert all(torch.equal(m, first[0]) for m in first)
    assert set(first[0].unique().tolist()) <= {0.0, 1.0}
    recorded.clear()
    model(ids, mask)
    second = [m for _, m in recorded]
    assert all(torch.equal(m, second[0]) for m in second)
    assert not torch.equal(first[0], second[0])  # 4 heads × 12 offsets of fresh noise


def test_per_layer_option_draws_a_different_mask_per_layer(recorded):
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_u", per_layer=True)).train()
    assert model.encoder.dam.logits.shape == (LAYERS, HEADS, MAXLEN, MAXLEN, 2)
    model(*inputs())
    masks = [m for _, m in recorded]
    assert len(masks) == LAYERS
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_training_forward_runs_the_hard_mask(recorded):
    # The search forward (additive −10000 bias, float mask with a gradient) equals dense attention under the
    # sampled bool mask at every real token. A row left with no allowed real key differs by design (under
    # the bias it spreads over the dropped keys, as the original; under the hard mask it is 0), so offset 0
    # is made certain to be kept: every real query then sees itself. Padded queries never feed real tokens.
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_s")).train()
    with torch.no_grad():
        model.encoder.dam.logits[:, :, 0, 0] = 30.0
    ids, mask = inputs()
    out = model(ids, mask).last_hidden_state
    masks = [m.bool() for _, m in recorded]
    real = mask.bool()
    for b in range(len(ids)):
        rows = masks[0][:, real[b]][:, :, real[b]]  # (heads, real queries, real keys)
        assert bool(rows.any(-1).all())
    expected = reference_model(model, masks)(ids, mask).last_hidden_state
    torch.testing.assert_close(out[real], expected[real], rtol=1e-5, atol=1e-5)


def test_eval_mode_uses_the_deterministic_mask(recorded):
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_u")).eval()
    ids, mask = inputs()
    a = model(ids, mask).last_hidden_state
    b = model(ids, mask).last_hidden_state
    assert torch.equal(a, b)
    assert all(m.dtype == torch.bool and torch.equal(m, export_mask(model, 12)) for _, m in recorded)


# --- structure ----------------------------------------------------------------------------------------------
def test_dam_s_mask_depends_only_on_the_offset(recorded):
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_s")).train()
    model(*inputs(n=12))
    sampled = recorded[0][1]
    idx = torch.arange(12)
    offsets = (idx[:, None] - idx[None, :]).abs()
    assert torch.equal(sampled, sampled[:, 0, :][:, offsets])  # row 0 holds offsets 0..n-1
    logits = model.encoder.dam.logits.detach()[0]
    keep = logits[..., 0] >= logits[..., 1]  # (heads, offsets)
    n = MAXLEN
    offsets = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
    assert torch.equal(export_mask(model), keep[:, offsets])
    assert torch.equal(export_mask(model), logits.argmax(-1).eq(0)[:, offsets])


def test_dam_u_masks_are_symmetric_and_export_is_the_argmax_of_the_symmetrised_logits(recorded):
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_u")).train()
    for _ in range(3):
        model(*inputs(n=12))
    for _, m in recorded:
        assert torch.equal(m, m.transpose(-1, -2))
    logits = model.encoder.dam.logits.detach()[0]
    sym = (logits + logits.transpose(1, 2)) / 2
    exported = export_mask(model)
    assert exported.shape == (HEADS, MAXLEN, MAXLEN)
    assert torch.equal(exported, sym.argmax(-1).eq(0))
    assert torch.equal(exported, exported.transpose(-1, -2))


def test_per_layer_export_has_a_layer_axis():
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_s", per_layer=True))
    logits = model.encoder.dam.logits.detach()
    exported = export_mask(model, 10)
    offsets = (torch.arange(10)[:, None] - torch.arange(10)[None, :]).abs()
    assert exported.shape == (LAYERS, HEADS, 10, 10)
    assert torch.equal(exported, logits.argmax(-1).eq(0)[:, :, offsets])


# --- penalty, density, search -------------------------------------------------------------------------------
@pytest.mark.parametrize("per_layer", [False, True])
def test_penalty_is_the_sum_of_the_sampled_masks(recorded, per_layer):
    torch.manual_seed(0)
    model = BortForMaskedLM(tiny_config("dam_u", per_layer=per_layer)).train()
    model(*inputs())
    sets = recorded if per_layer else recorded[:1]
    expected = sum(float(m.sum()) for _, m in sets)
    assert float(mask_penalty(model).detach()) == expected
    assert mask_density(model) == pytest.approx(expected / (len(sets) * HEADS * 12 * 12))
    assert mask_penalty(BortModel(tiny_config("dense"))) is None
    assert mask_density(BortModel(tiny_config("dense"))) is None


def test_penalty_gradient_is_the_l1_subgradient_through_the_soft_sample(monkeypatch):
    # With the noise fixed at 0 the soft sample is s = softmax(logits)[keep]; an offset d appears in
    # c(d) = n (d = 0) or 2(n − d) entries, and the L1 norm's subgradient is 1 at a kept entry, 0 at a dropped
    # one (the original's torch.norm(p=1)), so d penalty / d keep-logit = c(d)·s(1 − s) when kept, else 0.
    monkeypatch.setattr(dam_module, "sample_logistic", torch.zeros_like)
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_s", init_std=1.0)).train()
    n = 10
    model(*inputs(n=n))
    mask_penalty(model).backward()
    logits = model.encoder.dam.logits.detach()[0, :, :n]
    s = torch.softmax(logits, -1)[..., 0]
    kept = logits[..., 0] >= logits[..., 1]
    count = torch.tensor([n] + [2 * (n - d) for d in range(1, n)], dtype=torch.float32)
    expected = torch.where(kept, count * s * (1 - s), torch.zeros(()))
    grad = model.encoder.dam.logits.grad[0]
    torch.testing.assert_close(grad[:, :n, 0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad[:, :n, 1], -expected, rtol=1e-5, atol=1e-6)
    assert bool((grad[:, n:] == 0).all())  # offsets longer than the input are not used


@pytest.mark.parametrize("kind", ["dam_s", "dam_u"])
def test_lambda_penalty_lowers_the_density_during_a_search(kind):
    # The task's straight-through gradient is scaled by the 10000 of the bias, so on a loss of this size the
    # penalty needs a λ near 1 to win within a few steps (seeds 0-4 measured: 0.07-0.24 vs 0.40-0.55 free).
    def search(lam: float) -> float:
        torch.manual_seed(0)
        model = BortForMaskedLM(tiny_config(kind)).train()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        ids, mask = inputs(n=12, batch=4)
        for _ in range(8):
            out = model(ids, mask, labels=ids)
            loss = out.loss + lam * mask_penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(export_mask(model, 12).float().mean())

    torch.manual_seed(0)
    start = float(export_mask(BortForMaskedLM(tiny_config(kind)), 12).float().mean())
    free, penalised = search(0.0), search(1.0)
    assert start > 0.3 and free > 0.3
    assert penalised < 0.3 and penalised < free - 0.15  # the penalty, not the task loss, makes it sparse


def test_fully_padded_sequence_stays_finite_in_search_and_eval():
    torch.manual_seed(0)
    model = BortForMaskedLM(tiny_config("dam_s")).train()
    ids, mask = inputs()
    mask[2] = 0  # a sequence with no real token at all
    out = model(ids, mask, labels=ids)
    (out.loss + 1e-3 * mask_penalty(model)).backward()
    assert bool(torch.isfinite(out.logits).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    assert bool(torch.isfinite(model.eval()(ids, mask).logits).all())
    fixed = to_fixed_mask(model).eval()
    assert bool(torch.isfinite(fixed(ids, mask).logits).all())


def test_need_weights_path_equals_the_fused_path():
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_u")).train()
    ids, mask = inputs()
    torch.manual_seed(5)
    fused = model(ids, mask).last_hidden_state
    torch.manual_seed(5)  # same Gumbel noise
    out = model(ids, mask, output_attentions=True)
    torch.testing.assert_close(out.last_hidden_state, fused, rtol=1e-5, atol=1e-5)
    probs = out.attentions[0]
    assert probs.shape == (3, HEADS, 12, 12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, HEADS, 12))


# --- export to a fixed mask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dam_s", "dam_u"])
def test_exported_model_equals_masked_attention_reference(kind):
    torch.manual_seed(0)
    searched = BortForMaskedLM(tiny_config(kind, init_keep=0.5, init_std=1.0)).eval()
    fixed = to_fixed_mask(searched).eval()
    assert fixed.config.attention == "fixed_mask"
    assert fixed.config.attention_params == {"impl": "masked", "length": MAXLEN, "per_layer": False, "block_size": 64}
    ids, mask = inputs(n=12)
    mask_12 = export_mask(searched, 12)
    assert 0.0 < float(mask_12.float().mean()) < 1.0
    expected = reference_model(searched, [mask_12] * LAYERS)(ids, mask).last_hidden_state
    got = fixed(ids, mask)
    torch.testing.assert_close(got.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    # The searched model in eval mode runs the same mask.
    torch.testing.assert_close(searched(ids, mask).logits, got.logits, rtol=0, atol=0)
    # Weights other than the mask are carried over unchanged.
    for key, value in fixed.state_dict().items():
        if "fixed_mask" not in key:
            assert torch.equal(value, searched.state_dict()[key]), key


def test_exported_per_layer_mask_runs_each_layers_own_mask():
    torch.manual_seed(0)
    searched = BortModel(tiny_config("dam_u", per_layer=True)).eval()
    fixed = to_fixed_mask(searched, length=12).eval()
    masks = export_mask(searched, 12)
    ids, mask = inputs(n=9)  # shorter than the stored 12: the top-left crop
    expected = reference_model(searched, [m[:, :9, :9] for m in masks])(ids, mask).last_hidden_state
    torch.testing.assert_close(fixed(ids, mask).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sequence length 13 exceeds the stored mask's length 12"):
        fixed(*inputs(n=13))


def test_block_sparse_execution_of_the_exported_mask_equals_masked(monkeypatch):
    block_sparse = pytest.importorskip("bort.attention.block_sparse", reason="block-sparse kernel not in this tree")
    torch.manual_seed(0)
    searched = BortForMaskedLM(tiny_config("dam_s", init_keep=-0.5, init_std=1.0)).eval()
    masked = to_fixed_mask(searched, impl="masked").train()
    sparse = to_fixed_mask(searched, impl="block_sparse", block_size=4).train()
    ids, mask = inputs(n=14)
    a, b = masked(ids, mask, labels=ids), sparse(ids, mask, labels=ids)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    a.loss.backward()
    b.loss.backward()
    for (name, pa), pb in zip(masked.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)

    # One plan serves every layer and later forwards; a new mask invalidates it.
    built = []
    original = block_sparse.BlockSparsePlan.from_mask
    monkeypatch.setattr(block_sparse.BlockSparsePlan, "from_mask",
                        classmethod(lambda cls, *a, **k: built.append(1) or original(*a, **k)))
    stored = sparse.bort.encoder.fixed_mask
    stored._plans.clear()
    sparse(ids, mask)
    sparse(ids, mask)
    assert len(built) == 1
    stored.set_mask(torch.ones(HEADS, MAXLEN, MAXLEN, dtype=torch.bool))
    out = sparse.eval().bort(ids, mask).last_hidden_state
    assert len(built) == 2
    everything = [torch.ones(HEADS, 14, 14, dtype=torch.bool)] * LAYERS
    expected = reference_model(sparse, everything)(ids, mask).last_hidden_state
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --- checkpoints --------------------------------------------------------------------------------------------
def test_dam_and_fixed_mask_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    searched = BortForMaskedLM(tiny_config("dam_s", per_layer=True, temperature=0.5)).eval()
    save_pretrained(searched, tmp_path / "dam")
    loaded = load_pretrained(tmp_path / "dam", task="mlm")
    assert loaded.config.attention_params == {"per_layer": True, "temperature": 0.5}
    assert torch.equal(loaded.bort.encoder.dam.logits, searched.bort.encoder.dam.logits)
    ids, mask = inputs()
    assert torch.equal(loaded(ids, mask).logits, searched(ids, mask).logits)

    fixed = to_fixed_mask(searched, length=12)
    save_pretrained(fixed, tmp_path / "fixed")
    again = load_pretrained(tmp_path / "fixed", task="mlm")
    assert again.bort.encoder.fixed_mask.mask.dtype == torch.bool
    assert torch.equal(again.bort.encoder.fixed_mask.mask, export_mask(searched, 12))
    assert torch.equal(again(ids, mask).logits, fixed.eval()(ids, mask).logits)


def test_dense_checkpoint_loads_into_a_dam_model_with_fresh_logits(tmp_path, caplog):
    torch.manual_seed(0)
    dense = BortForMaskedLM(tiny_config("dense")).eval()
    save_pretrained(dense, tmp_path / "dense")
    with caplog.at_level(logging.WARNING):
        model = load_pretrained(tmp_path / "dense", config={"attention": "dam_u"}, task="mlm")
    assert "newly initialised parameter(s): bort.encoder.dam.logits" in caplog.text
    assert model.bort.encoder.dam.logits.shape == (1, HEADS, MAXLEN, MAXLEN, 2)
    assert torch.equal(model.bort.embeddings.word_embeddings.weight, dense.bort.embeddings.word_embeddings.weight)
    # A fixed-mask model cannot be filled from a dense checkpoint: the mask is not something to invent.
    with pytest.raises(CheckpointError, match="bort.encoder.fixed_mask.mask"):
        load_pretrained(tmp_path / "dense", config={"attention": "fixed_mask"}, task="mlm")


def test_deepcopy_after_a_training_forward():
    torch.manual_seed(0)
    model = BortModel(tiny_config("dam_s")).train()
    model(*inputs())
    twin = copy.deepcopy(model)
    assert twin.encoder.layer[1].attention.self.mechanism.shared("dam_s") is twin.encoder.dam
    assert torch.equal(twin.encoder.dam.logits, model.encoder.dam.logits)


# --- the command --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_layer", [False, True])
def test_cli_export_writes_a_loadable_checkpoint_sparsity_and_heatmaps(tmp_path, capsys, per_layer):
    from PIL import Image

    torch.manual_seed(0)
    searched = BortForMaskedLM(tiny_config("dam_s", per_layer=per_layer)).eval()
    save_pretrained(searched, tmp_path / "searched")
    assert main(["mask", "export", str(tmp_path / "searched"), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    mask = export_mask(searched)
    zeros = 100 * (1 - mask.float().mean(dim=(-1, -2)))
    for s in range(LAYERS if per_layer else 1):
        for h in range(HEADS):
            z = float(zeros[s, h] if per_layer else zeros[h])
            assert f"{'layer %d ' % s if per_layer else ''}head {h}: sparsity {z:.1f}%" in printed
    assert f"overall: sparsity {100 * (1 - float(mask.float().mean())):.1f}%" in printed
    stats = json.loads((tmp_path / "out" / "mask_sparsity.json").read_text())
    assert stats["overall"] == pytest.approx(100 * (1 - float(mask.float().mean())), abs=1e-3)

    fixed = load_pretrained(tmp_path / "out", task="mlm")
    assert fixed.config.attention == "fixed_mask"
    assert torch.equal(fixed.bort.encoder.fixed_mask.mask, mask if per_layer else mask[None])
    ids, am = inputs()
    torch.testing.assert_close(fixed(ids, am).logits, searched(ids, am).logits, rtol=0, atol=0)

    pngs = sorted(p.name for p in (tmp_path / "out" / "mask_heatmaps").iterdir())
    names = [f"layer_{s:02d}_head_{h:02d}.png" for s in range(LAYERS) for h in range(HEADS)] if per_layer \
        else [f"head_{h:02d}.png" for h in range(HEADS)]
    assert pngs == sorted(names + ["grid.png"])
    with Image.open(tmp_path / "out" / "mask_heatmaps" / names[0]) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_cli_export_options_and_errors(tmp_path, capsys):
    torch.manual_seed(0)
    save_pretrained(BortModel(tiny_config("dam_u")), tmp_path / "searched")
    assert main(["mask", "export", str(tmp_path / "searched"), str(tmp_path / "out"), "--impl", "block_sparse",
                 "--length", "8", "--no-heatmaps"]) == 0
    values = json.loads((tmp_path / "out" / "config.json").read_text())
    assert values["attention_params"] == {"impl": "block_sparse", "length": 8, "per_layer": False, "block_size": 64}
    assert not (tmp_path / "out" / "mask_heatmaps").exists()
    capsys.readouterr()

    save_pretrained(BortModel(tiny_config("dense")), tmp_path / "dense")
    assert main(["mask", "export", str(tmp_path / "dense"), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "attention is 'dense', not a DAM search" in err and "dam_s, dam_u" in err
    assert main(["mask", "export", str(tmp_path / "searched"), str(tmp_path / "out3"), "--length", "99"]) == 2
    assert "sequence length 99 exceeds the mask's max_length 16" in capsys.readouterr().err


# --- bad input ----------------------------------------------------------------------------------------------
def test_clear_errors_for_unknown_mechanisms_and_parameters():
    with pytest.raises(ValueError, match="unknown attention mechanism 'dam'.*dam_s, dam_u.*fixed_mask"):
        get_attention("dam")
    with pytest.raises(ValueError, match="unknown attention_params tau; valid parameters: eval_mask, init_keep, "
                                         "init_std, max_length, penalty, per_layer, temperature"):
        BortModel(tiny_config("dam_s", tau=1.0))
    with pytest.raises(ValueError, match="attention 'dam_u': attention_params temperature=0 must be > 0"):
        BortModel(tiny_config("dam_u", temperature=0))
    with pytest.raises(ValueError, match="attention 'dam_u': attention_params per_layer='yes' must be true or false"):
        BortModel(tiny_config("dam_u", per_layer="yes"))
    with pytest.raises(ValueError, match="attention 'fixed_mask': attention_params impl='flex' is not one of the valid "
                                         "values: masked, block_sparse"):
        BortModel(tiny_config("fixed_mask", impl="flex"))
    with pytest.raises(ValueError, match="unknown attention_params window; valid parameters: block_size, impl, "
                                         "length, per_layer"):
        BortModel(tiny_config("fixed_mask", window=3))
    model = BortModel(tiny_config("dam_s", max_length=8))
    with pytest.raises(ValueError, match="sequence length 10 exceeds the mask's max_length 8"):
        model(*inputs(n=10))
    with pytest.raises(ValueError, match="needs a model with one DAM mask.*'dense'"):
        export_mask(BortModel(tiny_config("dense")))
    mechanism = get_attention("dam_s")(tiny_config("dam_s"), 0)
    q = torch.randn(1, HEADS, 5, 8)
    with pytest.raises(RuntimeError, match="has no shared state"):
        mechanism(q, q, q)


# --- distillation -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from bort.data.instances import InstanceSettings
    from bort.data.pretraining import create_pretraining_data
    from bort.tokenization import load_tokenizer

    from hf_helpers import REPO, minilm_dir

    out = tmp_path_factory.mktemp("dam_data")
    create_pretraining_data(str(REPO / "test_data" / "sample_text.txt"), out / "train",
                            load_tokenizer(minilm_dir() / "vocab.txt"),
                            InstanceSettings(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1),
                            progress=False)
    return out / "train"


def test_distillation_with_dam_lambda_adds_the_penalty_and_logs_density(shards, tmp_path):
    from bort.distill.recipe import DistillSettings, run_distillation
    from bort.train.metrics import read_jsonl

    student = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 4,
                          "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 32,
                          "attention": "dam_s"})
    settings = DistillSettings(train=[str(shards / "part-*.rec")], student=student, output_dir=str(tmp_path),
                               batch_size=4, max_steps=4, lr=1e-3, log_interval=1, eval_interval=0,
                               checkpoint_interval=0, progress=False, dam_lambda=1e-3)
    run_distillation(settings)
    train = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "train"]
    assert len(train) == 4
    for r in train:
        assert 0.0 < r["mask_density"] < 1.0
        # loss = mlm_weight·MLM + λ·Σ|M|; Σ|M| of a (4, n, n) mask lies in [0, 4n²]
        assert r["loss"] == pytest.approx(0.1 * r["mlm"] + 1e-3 * r["mask_penalty"], rel=1e-5)
        assert 0 < r["mask_penalty"] <= 4 * 32 * 32
    final = load_pretrained(tmp_path / "final", task="mlm")
    assert final.config.attention == "dam_s"

    dense = json.loads(student)
    dense["attention"] = "dense"
    bad = DistillSettings(**{**settings.__dict__, "student": json.dumps(dense), "output_dir": str(tmp_path / "b")})
    with pytest.raises(ValueError, match="needs a student with attention dam_s or dam_u, not 'dense'"):
        run_distillation(bad)


# --- fidelity options: weight decay, penalty "sum"/"mean", eval mask "argmax"/"sample" -----------------------
def _decay_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    """Each named parameter of `model` → the weight decay of the optimiser group holding it."""
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def _assert_only_logits_exempted(decay: dict[str, float], weight_decay: float) -> None:
    logits = [name for name in decay if name.endswith("dam.logits")]
    assert len(logits) == 1 and decay[logits[0]] == 0.0
    for name, wd in decay.items():  # every other parameter by the usual rule (biases and norms exempt)
        if name not in logits:
            exempt = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            assert wd == (0.0 if exempt else weight_decay), name


class _OptimizerBuilt(Exception):
    """Raised by the spy once a trainer has built its optimiser: nothing after it matters here."""


def test_finetune_trainer_does_not_decay_the_mask_logits(monkeypatch):
    from bort.finetune import trainer
    from bort.finetune.trainer import HParams, fit

    built = []

    def spy(*args, **kwargs):
        built.append(trainer_build(*args, **kwargs))
        raise _OptimizerBuilt

    trainer_build = trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer", spy)
    model = BortModel(tiny_config("dam_s"))
    with pytest.raises(_OptimizerBuilt):
        fit(model, None, [object()], [object()], [], HParams(), pad_id=0, progress=False)
    assert HParams().weight_decay == 110.0  # the default that would pull every logit to 0 within steps
    _assert_only_logits_exempted(_decay_of(built[0], model), 110.0)


def test_lra_trainer_does_not_decay_the_mask_logits_and_refuses_lambda_without_a_mask(tmp_path):
    from bort.lra import listops
    from bort.lra.runner import LRARecipe, LRASettings

    from conftest import shared_path

    rows = [r for r in listops.read_listops(shared_path("data", "lra", "listops", "nangia_bowman_d20s.first8000.tsv"))
            if len(listops.tokenize(r.expression)) <= 30][:80]
    data = tmp_path / "small.tsv"
    data.write_text("".join(f"{r.label}\t{r.expression}\n" for r in rows), encoding="utf-8")
    settings = LRASettings(data=str(data), output_dir=None, attention="dam_s", max_steps=2, batch_size=8,
                           weight_decay=0.1, dev_size=10, test_size=10, progress=False, dam_lambda=1e-3)
    run = LRARecipe(settings).build()
    _assert_only_logits_exempted(_decay_of(run.optimizer, run.model), 0.1)
    with pytest.raises(ValueError, match="dam_lambda 0.001 needs attention dam_s or dam_u.*not 'dense'"):
        LRARecipe(LRASettings(**{**settings.__dict__, "attention": "dense"})).build()


def test_distillation_recipe_does_not_decay_the_mask_logits(shards, tmp_path):
    from bort.distill.recipe import DistillationRecipe, DistillSettings

    student = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 4,
                          "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 32,
                          "attention": "dam_u"})
    recipe = DistillationRecipe(DistillSettings(train=[str(shards / "part-*.rec")], student=student,
                                                output_dir=str(tmp_path), batch_size=4, max_steps=1,
                                                progress=False, dam_lambda=1e-3, weight_decay=0.01))
    try:
        recipe.setup()
    finally:
        recipe.cleanup()
    decay = _decay_of(recipe.optimizer, recipe.joint)
    assert "student.bort.encoder.dam.logits" in decay
    _assert_only_logits_exempted(decay, 0.01)


@pytest.mark.parametrize("kind", ["dam_s", "dam_u"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_mean_penalty_is_the_sum_over_the_number_of_entries(kind, per_layer):
    ids, mask = inputs(n=12)
    penalties = {}
    for mode in ("sum", "mean"):
        torch.manual_seed(0)  # the same logits and the same samples for both
        model = BortModel(tiny_config(kind, per_layer=per_layer, penalty=mode)).train()
        model(ids, mask)
        penalties[mode] = mask_penalty(model)
    entries = (LAYERS if per_layer else 1) * HEADS * 12 * 12
    assert float(penalties["sum"].detach()) > 0
    torch.testing.assert_close(penalties["mean"], penalties["sum"] / entries, rtol=1e-6, atol=0)
    # An all-kept mask: Σ|M| grows with n², the mean is 1 at every length.
    for n in (8, 16):
        model = BortModel(tiny_config(kind, per_layer=per_layer, penalty="mean", init_keep=50.0)).train()
        model(*inputs(n=n))
        assert float(mask_penalty(model).detach()) == 1.0


@pytest.mark.parametrize("kind", ["dam_s", "dam_u"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_documented_mean_lambda_gives_sparsebert_gradient_at_128(kind, per_layer):
    # The module docstring: λ_mean = λ_sum × sets × heads × 128 × 128 matches "sum" at n = 128.
    lam_sum, n = 5e-5, 128
    sets = LAYERS if per_layer else 1
    lam_mean = lam_sum * sets * HEADS * 128 * 128
    grads = {}
    for mode, lam in (("sum", lam_sum), ("mean", lam_mean)):
        torch.manual_seed(0)
        dam = DAMMask(tiny_config(kind, max_length=n, per_layer=per_layer, penalty=mode), kind).train()
        for layer in range(LAYERS):
            dam.mask_for(layer, n)
        (lam * dam.penalty()).backward()
        grads[mode] = dam.logits.grad.clone()
    assert grads["sum"].abs().max() > 0
    torch.testing.assert_close(grads["mean"], grads["sum"], rtol=1e-5, atol=1e-12)
    if not per_layer and kind == "dam_s":
        assert 5e-5 * 12 * 128 * 128 == pytest.approx(9.8304)  # SparseBERT's λ, 12 heads, as documented


@pytest.mark.parametrize("kind", ["dam_s", "dam_u"])
def test_eval_sample_draws_a_fresh_mask_each_pass_argmax_does_not(kind, recorded):
    ids, mask = inputs()
    torch.manual_seed(0)
    argmax = BortModel(tiny_config(kind)).eval()
    with torch.no_grad():
        assert torch.equal(argmax(ids, mask).last_hidden_state, argmax(ids, mask).last_hidden_state)
    assert all(m.dtype == torch.bool for _, m in recorded)
    recorded.clear()

    torch.manual_seed(0)
    sample = BortModel(tiny_config(kind, eval_mask="sample")).eval()
    with torch.no_grad():
        a = sample(ids, mask).last_hidden_state
        b = sample(ids, mask).last_hidden_state
    masks = [m for layer, m in recorded if layer == 0]
    assert len(masks) == 2 and all(m.dtype == torch.float32 for m in masks)
    changed = float((masks[0] != masks[1]).float().mean())
    assert 0.3 < changed < 0.7  # logits near 0 at init: each entry kept with probability ≈ 1/2 per pass
    assert not torch.allclose(a, b)
    # Eval "sample" runs exactly the training forward (no dropout here): same RNG, same output.
    torch.manual_seed(7)
    with torch.no_grad():
        evaluated = sample(ids, mask).last_hidden_state
    torch.manual_seed(7)
    with torch.no_grad():
        trained = sample.train()(ids, mask).last_hidden_state
    assert torch.equal(evaluated, trained)
    # Export (and so `bort mask export`) binarises by the argmax whatever the eval mode.
    assert torch.equal(export_mask(sample), export_mask(argmax))


def test_bad_penalty_and_eval_mask_values_list_the_valid_ones():
    from bort.config import ConfigError

    with pytest.raises(ConfigError, match="attention 'dam_s': attention_params penalty='l1' is not one of the valid values: "
                                          "sum, mean"):
        BortModel(tiny_config("dam_s", penalty="l1"))
    with pytest.raises(ConfigError, match="attention 'dam_u': attention_params eval_mask='hard' is not one of the valid "
                                          "values: argmax, sample"):
        BortModel(tiny_config("dam_u", eval_mask="hard"))
    with pytest.raises(ConfigError, match="penalty=1 is not one of the valid values: sum, mean"):
        BortModel(tiny_config("dam_u", penalty=1))


def test_penalty_on_a_fixed_mask_is_refused_with_the_reason():
    from bort.config import ConfigError

    for params in ({"penalty": "mean"}, {"penalty": "sum"}, {"eval_mask": "sample"}):
        with pytest.raises(ConfigError, match=f"'fixed_mask': {next(iter(params))}=.* a fixed mask has nothing "
                                              "to learn"):
            BortModel(tiny_config("fixed_mask", **params))
    # A DAM model searched with the mean penalty converts to a fixed mask without it (nothing left to learn);
    # adding it back to the converted config is refused.
    searched = BortModel(tiny_config("dam_s", penalty="mean", eval_mask="sample"))
    fixed = to_fixed_mask(searched)
    assert fixed.config.attention == "fixed_mask" and "penalty" not in fixed.config.attention_params
    assert mask_penalty(fixed) is None  # the trainers' --dam-lambda refuses such a model
    edited = BortConfig.from_dict({**fixed.config.to_dict(),
                                   "attention_params": {**fixed.config.attention_params, "penalty": "mean"}})
    with pytest.raises(ConfigError, match="penalty='mean' has nothing to act on: a fixed mask has nothing to learn"):
        BortModel(edited)
