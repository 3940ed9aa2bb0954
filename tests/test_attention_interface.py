"""The attention interface: declared parameter schemas checked by the registry, and the optional hooks
(regularisation term, statistics) that trainers reach through the model without knowing the mechanism."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bort.attention import registry
from bort.attention.dam import mask_density, mask_penalty
from bort.attention.registry import AttentionParams, attention_params, param, register_attention
from bort.config import BortConfig, ConfigError
from bort.model import BortForMaskedLM, BortForMultipleChoice, BortModel

TOY = "toy_penalised"


@dataclass(frozen=True)
class ToyParams(AttentionParams):
    weight: float = param(0.5, "scale of the toy regulariser", above=0.0)
    mode: str = param("abs", "how the toy term is formed", choices=("abs", "square"))
    width: int = param(4, "a toy size", minimum=1)


class ToyPenalisedAttention(nn.Module):
    """Dense attention whose regulariser is `weight` × mean |scores| of its last forward."""

    def __init__(self, config, layer_idx: int = 0) -> None:
        super().__init__()
        self.params: ToyParams = attention_params(TOY, config)
        self.scale = nn.Parameter(torch.ones(()))
        self.last = None

    def forward(self, q, k, v, key_padding_mask=None, need_weights=False):
        self.last = (q * self.scale).abs().mean()
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(q * self.scale, k, v, attn_mask=mask), None

    def regularization(self) -> torch.Tensor:
        return self.params.weight * (self.last if self.last is not None else self.scale * 0)

    def statistics(self) -> dict[str, float]:
        return {"toy_scale": float(self.scale.detach())}


@pytest.fixture(autouse=True)
def toy_registered():
    """The toy mechanism is registered for each test of this file only: pytest imports every test module
    before running any, and a registration at import would show in other files' views of the registry."""
    register_attention(TOY, params=ToyParams)(ToyPenalisedAttention)
    yield
    registry._REGISTRY.pop(TOY, None)
    registry._SCHEMAS.pop(TOY, None)


def tiny(attention: str = "dense", **params) -> BortConfig:
    return BortConfig.preset("bort_4_8_768_1024", vocab_size=50, hidden_size=16, num_attention_heads=2,
                             intermediate_size=24, num_hidden_layers=2, max_position_embeddings=16,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention=attention,
                             attention_params=params)


# --- hooks ---------------------------------------------------------------------------------------------------
def test_a_new_mechanism_s_regulariser_reaches_the_model_without_trainer_changes():
    torch.manual_seed(0)
    model = BortForMaskedLM(tiny(TOY, weight=2.0))
    ids = torch.randint(4, 50, (2, 9))
    model(ids)
    mechanisms = [layer.attention.self.mechanism for layer in model.bort.encoder.layer]
    expected = torch.stack([2.0 * m.last for m in mechanisms]).sum()
    term = model.attention_regularization()
    assert term is not None and torch.equal(term, expected)
    term.backward()  # differentiable: a trainer can add it to the loss
    assert all(m.scale.grad is not None for m in mechanisms)
    assert model.attention_statistics() == {"toy_scale": 1.0}
    dense = BortForMaskedLM(tiny())
    assert dense.attention_regularization() is None and dense.attention_statistics() == {}


def test_dam_hooks_equal_the_old_penalty_and_density():
    torch.manual_seed(0)
    for params in ({}, {"penalty": "mean"}, {"per_layer": True}):
        model = BortModel(tiny("dam_u", **params)).train()
        ids = torch.randint(4, 50, (2, 11))
        model(ids, torch.ones(2, 11, dtype=torch.long))
        assert torch.equal(model.attention_regularization(), mask_penalty(model))
        assert model.attention_statistics() == {"mask_density": mask_density(model)}


def test_lra_classifier_reports_its_dam_penalty():
    from bort.lra.model import LRAClassifier

    config = BortConfig(**{**tiny("dam_s").to_dict(), "layer_norm_position": "pre", "embedding_style": "bert"})
    model = LRAClassifier(config).train()
    model(torch.randint(4, 50, (2, 7)))
    assert torch.equal(model.attention_regularization(), mask_penalty(model))
    assert set(model.attention_statistics()) == {"mask_density"}


def test_uses_token_types_and_score_choices():
    bert = BortForMultipleChoice(BortConfig.preset("bert-base", vocab_size=50, hidden_size=16, num_attention_heads=2,
                                                   intermediate_size=24, num_hidden_layers=1)).eval()
    assert bert.uses_token_types and not BortModel(tiny()).uses_token_types
    torch.manual_seed(0)
    ids = torch.randint(4, 50, (2, 3, 6))
    full = bert(ids).logits
    # Example 0 has 3 choices, example 1 only its first 2: flattened, the third is not encoded at all.
    flat = torch.cat([ids[0], ids[1, :2]])
    example, slot = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 2, 0, 1])
    table = bert.score_choices(flat, None, None, example, slot)
    assert table.shape == (2, 3) and table[1, 2] == float("-inf")
    assert torch.allclose(table[0], full[0], atol=1e-5) and torch.allclose(table[1, :2], full[1, :2], atol=1e-5)
    with pytest.raises(ValueError, match="one index per choice"):
        bert.score_choices(flat, None, None, example[:2], slot)


# --- schema validation -------------------------------------------------------------------------------------
def test_unknown_names_list_the_valid_parameters():
    with pytest.raises(ConfigError, match=f"attention '{TOY}': unknown attention_params colour, size; valid "
                                          "parameters: mode, weight, width"):
        BortModel(tiny(TOY, size=3, colour="red"))


def test_bad_values_name_the_parameter_the_value_and_what_is_allowed():
    cases = [({"mode": "cube"}, "attention_params mode='cube' is not one of the valid values: abs, square"),
             ({"weight": 0}, "attention_params weight=0 must be > 0; weight: scale of the toy regulariser"),
             ({"weight": "1"}, "attention_params weight='1' must be a finite number"),
             ({"weight": float("nan")}, "attention_params weight=nan must be a finite number"),
             ({"width": True}, "attention_params width=True must be a positive integer"),
             ({"width": 2.0}, "attention_params width=2.0 must be a positive integer"),
             ({"width": 0}, "attention_params width=0 must be a positive integer")]
    for params, message in cases:
        with pytest.raises(ConfigError) as err:
            BortModel(tiny(TOY, **params))
        assert str(err.value).startswith(f"attention '{TOY}': ") and message in str(err.value), str(err.value)
    p = attention_params(TOY, tiny(TOY, weight=3, mode="square"))
    assert p == ToyParams(weight=3.0, mode="square", width=4) and isinstance(p.weight, float)


def test_bool_is_refused_where_an_integer_is_expected_in_every_mechanism():
    for name, key in (("dam_s", "max_length"), ("fixed_mask", "block_size"), ("strided", "block_size"),
                      ("yoso", "num_hash"), ("yoso", "hash_code_len")):
        with pytest.raises(ConfigError, match=f"attention '{name}': attention_params {key}=True must be a"):
            attention_params(name, tiny(name, **{key: True}))


def test_every_mechanism_declares_its_parameters_with_help():
    for name in registry.available_attention():
        schema = registry.attention_schema(name)
        if schema is None:
            continue
        described = schema.describe()
        assert described and all(text for text in described.values()), name
    assert "sum, mean" in registry.attention_schema("dam_s").describe()["penalty"]


def test_a_schema_must_be_an_attention_params_dataclass():
    with pytest.raises(TypeError, match="must be an AttentionParams dataclass"):
        register_attention("toy_bad", params=dict)
    assert "toy_bad" not in registry.available_attention()


def test_cross_parameter_checks_run_in_the_registry():
    with pytest.raises(ConfigError, match="attention 'yoso': exact_backward=True asks for backward 'exact'"):
        attention_params("yoso", tiny("yoso", backward="lsh", exact_backward=True))
    assert attention_params("dam_s", tiny("dam_s")).max_length == 16  # default from max_position_embeddings
    assert attention_params("yoso_e", tiny("yoso_e", exact_backward=True)).backward == "exact"


def test_builtin_name_table_matches_what_the_modules_register():
    """`names.BUILTIN_ATTENTION` lets a config be validated without importing torch; it must name exactly the
    mechanisms the modules register, each under the module that registers it."""
    import importlib

    from bort.attention.names import BUILTIN_ATTENTION

    for module in set(BUILTIN_ATTENTION.values()):
        importlib.import_module(f"bort.attention.{module}")
    builtins = {name: cls for name, cls in registry._REGISTRY.items() if cls.__module__.startswith("bort.attention.")}
    assert {name: cls.__module__.rsplit(".", 1)[1] for name, cls in builtins.items()} == BUILTIN_ATTENTION


def test_get_attention_imports_a_builtin_on_first_use():
    import subprocess
    import sys

    code = ("import sys\nfrom bort.attention import registry\nassert 'bort.attention.yoso' not in sys.modules\n"
            "cls = registry.get_attention('yoso')\nassert cls.__module__ == 'bort.attention.yoso'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
