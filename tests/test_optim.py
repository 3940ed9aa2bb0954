"""Optimisers and schedules: hand-written updates, weight-decay grouping, bitwise resume, schedule values."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bort import BortConfig, BortForMaskedLM
from bort.train.optim import BertAdam, build_optimizer, decay_param_groups
from bort.train.schedule import build_schedule

IMPLEMENTATIONS = [dict(fused=True), dict(foreach=True), dict(foreach=False)]


def _grads(step: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=["fused", "foreach", "loop"])
def test_bertadam_matches_hand_written_update(impl):
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-6, 0.1
    w0 = np.random.default_rng(0).standard_normal((4, 3))
    param = nn.Parameter(torch.tensor(w0))  # float64, so the comparison is tight
    opt = BertAdam([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, **impl)
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for step in range(3):
        g = _grads(step, w0.shape)
        param.grad = torch.tensor(g)
        opt.step()
        # GluonNLP BERTAdam / MXNet adamw_update: no bias correction, decay from the pre-step weight.
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (np.sqrt(v) + eps) + wd * w)
        np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-12, atol=1e-14)
    assert opt.state[param]["step"] == 3


def test_bertadam_differs_from_adamw_by_the_bias_correction_at_step_1():
    b1, b2, lr = 0.9, 0.999, 0.01
    g = torch.tensor(_grads(0, (5,)))
    deltas = {}
    for name, cls in (("bert", BertAdam), ("adamw", torch.optim.AdamW)):
        p = nn.Parameter(torch.zeros(5, dtype=torch.float64))
        opt = cls([p], lr=lr, betas=(b1, b2), eps=0.0, weight_decay=0.0)
        p.grad = g.clone()
        opt.step()
        deltas[name] = p.detach().clone()
    factor = (1 - b1) / math.sqrt(1 - b2)  # AdamW divides m by (1 − β1) and √v by √(1 − β2)
    torch.testing.assert_close(deltas["bert"], factor * deltas["adamw"], rtol=1e-12, atol=0)


def _tiny_mlm() -> BortForMaskedLM:
    torch.manual_seed(0)
    return BortForMaskedLM(BortConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=24, max_position_embeddings=16))


@pytest.mark.parametrize("name", ["adamw", "bertadam"])
def test_weight_decay_excludes_layernorm_and_biases_on_a_real_model(name):
    model = _tiny_mlm()
    opt = build_optimizer(model, name, lr=1e-4, weight_decay=0.01)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_id) == sum(len(g["params"]) for g in opt.param_groups) == len(named)  # each once (tied too)
    for pname, p in named.items():
        exempt = pname.endswith("bias") or "LayerNorm" in pname or "layer_norm" in pname
        assert by_id[id(p)] == (0.0 if exempt else 0.01), pname
    assert by_id[id(model.bort.embeddings.word_embeddings.weight)] == 0.01
    assert by_id[id(model.lm_head.bias)] == 0.0
    if name == "adamw":
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True  # fused on CPU


def test_grouping_by_shape_when_names_are_unknown():
    linear, norm = nn.Linear(3, 4), nn.LayerNorm(4)
    opt = build_optimizer(list(linear.parameters()) + list(norm.parameters()), "bertadam", weight_decay=0.5)
    decayed = [p for g in opt.param_groups if g["weight_decay"] for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is linear.weight
    groups = decay_param_groups(nn.Sequential(linear, norm), 0.5)
    assert groups[0]["param_names"] == ["0.weight"]
    with pytest.raises(ValueError, match="unknown optimiser"):
        build_optimizer(linear, "sgd")


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 2))


def _train(model, opt, sched, steps: int, start: int) -> None:
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=g), torch.randn(5, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def _roundtrip(obj: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["adamw", "bertadam"])
@pytest.mark.parametrize("kind", ["linear", "poly"])
def test_state_dict_round_trip_continues_bitwise(name, kind):
    build = lambda model: build_optimizer(model, name, lr=1e-2, weight_decay=0.1)  # noqa: E731
    model = _net()
    opt = build(model)
    sched = build_schedule(opt, total_steps=10, warmup_ratio=0.2, kind=kind, power=2.0)
    _train(model, opt, sched, 4, start=0)
    saved = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    _train(model, opt, sched, 4, start=4)

    resumed = _net()
    resumed.load_state_dict(saved["model"])
    opt2 = build(resumed)
    sched2 = build_schedule(opt2, total_steps=10, warmup_ratio=0.2, kind=kind, power=2.0)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _train(resumed, opt2, sched2, 4, start=4)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert sched.get_last_lr() == sched2.get_last_lr()


def _lr_at(kind: str, step: int, total: int = 100, warmup_ratio: float = 0.1, power: float = 2.0) -> float:
    """Learning-rate factor used by optimiser step `step` (1-based), read off a real scheduler."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_schedule(opt, total, warmup_ratio, kind, power)
    for _ in range(step - 1):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_schedule_values():
    # W = 10 warmup steps of T = 100: step n runs at n/10, then decays from step 10 to 0 at step 100.
    assert _lr_at("linear", 1) == pytest.approx(0.1)
    assert _lr_at("linear", 10) == pytest.approx(1.0)  # warmup end
    assert _lr_at("linear", 55) == pytest.approx(0.5)  # midpoint of the decay
    assert _lr_at("linear", 100) == pytest.approx(0.0)  # end
    assert _lr_at("poly", 55) == pytest.approx(0.25)
    assert _lr_at("poly", 10) == pytest.approx(1.0)
    assert _lr_at("constant", 55) == _lr_at("constant", 100) == pytest.approx(1.0)
    assert _lr_at("bort_linear", 11) == pytest.approx(0.89)  # the original's 1 − n/T after warmup
    assert _lr_at("linear", 1, warmup_ratio=0.0) == pytest.approx(99 / 100)
    with pytest.raises(ValueError, match="unknown schedule"):
        _lr_at("cosine", 1)


# --- parameters a module declares exempt (`no_weight_decay`) ------------------------------------------------
class _Gated(nn.Module):
    """A weight, a non-weight matrix it declares exempt, and a declared nested parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.gates = nn.Parameter(torch.ones(3, 4))
        self.inner = nn.Linear(4, 4, bias=False)

    def no_weight_decay(self) -> set[str]:
        return {"gates", "inner.weight"}


def test_modules_declare_their_own_no_decay_parameters():
    model = nn.Sequential(nn.Linear(4, 4), _Gated())
    model[0].weight = model[1].inner.weight  # tied: exempt under either name
    groups = {g["weight_decay"]: g["param_names"] for g in decay_param_groups(model, 0.3)}
    assert sorted(groups[0.3]) == ["1.proj.weight"]
    assert sorted(groups[0.0]) == ["0.bias", "0.weight", "1.gates", "1.proj.bias"]


@pytest.mark.parametrize("name", ["adamw", "bertadam"])
def test_declared_parameters_are_not_decayed_by_a_step(name):
    # Zero gradients: a step changes a parameter only through weight decay (Adam's update is 0).
    model = _Gated()
    opt = build_optimizer(model, name, lr=1e-3, weight_decay=110.0)  # the fine-tuning default
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    assert torch.equal(model.gates, before["gates"]) and torch.equal(model.inner.weight, before["inner.weight"])
    torch.testing.assert_close(model.proj.weight, before["proj.weight"] * (1 - 1e-3 * 110.0))


def test_dam_logits_are_declared_and_nothing_else_changes_group():
    config = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16)
    torch.manual_seed(0)
    dense = decay_param_groups(BortForMaskedLM(BortConfig(**config)), 0.01)
    dam = decay_param_groups(BortForMaskedLM(BortConfig(**config, attention="dam_s")), 0.01)
    names = lambda groups, wd: sorted(n for g in groups if g["weight_decay"] == wd for n in g["param_names"])  # noqa: E731
    assert names(dam, 0.01) == names(dense, 0.01)
    assert names(dam, 0.0) == sorted(names(dense, 0.0) + ["bort.encoder.dam.logits"])


def test_declaring_a_parameter_the_module_lacks_is_an_error_naming_both():
    class Wrong(_Gated):
        def no_weight_decay(self) -> set[str]:
            return {"gate"}

    with pytest.raises(ValueError, match=r"Wrong \(1\) declares 'gate' exempt from weight decay but has no such "
                                         r"parameter; its parameters: gates, inner.weight, proj.bias, proj.weight"):
        decay_param_groups(nn.Sequential(nn.Linear(2, 2), Wrong()), 0.1)
