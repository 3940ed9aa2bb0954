"""BortConfig: presets, JSON round trip and validation messages."""
from __future__ import annotations

import json

import pytest

from bort import BortConfig, ConfigError


@pytest.mark.parametrize("name", BortConfig.presets())
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = BortConfig.preset(name)
    path = tmp_path / "c.json"
    cfg.save(path)
    assert BortConfig.load(path) == cfg
    assert BortConfig.from_dict(json.loads(cfg.to_json_string())) == cfg


def test_bort_preset_matches_the_released_shape():
    cfg = BortConfig.preset("bort_4_8_768_1024")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size) == (4, 8, 1024, 768)
    assert cfg.head_dim == 128 and cfg.type_vocab_size == 0 and cfg.position_offset == 0
    assert cfg.layer_norm_eps == 1e-5 and cfg.vocab_size == 50265 and not cfg.add_pooler
    small = BortConfig.preset("bort_2_16_512_1024")
    assert (small.num_hidden_layers, small.num_attention_heads, small.intermediate_size) == (2, 16, 512)
    assert BortConfig() == cfg  # the default is the released Bort
    roberta = BortConfig.preset("roberta-large")
    assert roberta.position_offset == 2 and roberta.max_sequence_length == 512


def test_preset_names_are_forgiving_and_overridable():
    assert BortConfig.preset("BERT_BASE", num_hidden_layers=2).num_hidden_layers == 2


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        BortConfig.preset("bert-huge")
    for name in BortConfig.presets():
        assert name in str(err.value)


def test_hidden_not_divisible_by_heads_is_explained():
    with pytest.raises(ConfigError, match="hidden_size 100 is not divisible by num_attention_heads 3"):
        BortConfig(hidden_size=100, num_attention_heads=3)


@pytest.mark.parametrize("field,value,needle", [
    ("num_hidden_layers", 0, "num_hidden_layers must be a positive integer"),
    ("hidden_act", "swish2", "hidden_act 'swish2'"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob must be in [0, 1)"),
    ("embedding_style", "tf", "embedding_style 'tf'"),
    ("position_offset", 600, "position_offset 600 leaves no positions"),
])
def test_invalid_fields_are_named(field, value, needle):
    with pytest.raises(ConfigError) as err:
        BortConfig(**{field: value})
    assert needle in str(err.value)


def test_config_file_errors_name_file_and_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hidden_size": 64,\n  "num_hidden_layers": }')
    with pytest.raises(ConfigError) as err:
        BortConfig.load(bad)
    assert "bad.json" in str(err.value) and "line 2" in str(err.value)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"hiden_size": 64}')
    with pytest.raises(ConfigError, match="unknown config field.*hiden_size"):
        BortConfig.load(unknown)
    with pytest.raises(ConfigError, match="not found"):
        BortConfig.load(tmp_path / "missing.json")


def test_resolve_accepts_every_spec(tmp_path):
    cfg = BortConfig.preset("bert-base", num_hidden_layers=1)
    path = tmp_path / "c.json"
    cfg.save(path)
    assert BortConfig.resolve(cfg) is cfg
    assert BortConfig.resolve(str(path)) == cfg
    assert BortConfig.resolve({"preset": "bert-base", "num_hidden_layers": 1}) == cfg
    assert BortConfig.resolve("bert-base").num_hidden_layers == 12
    assert BortConfig.resolve({"hidden_size": 64, "num_attention_heads": 4}).hidden_size == 64
