"""Hostile or mistyped values in configs, checkpoint files and model inputs: every one is refused with the
project's own error naming the file (or argument), the field and what was expected — never a bare
TypeError, IndexError, RecursionError or an allocator failure."""
from __future__ import annotations

import json
import random
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch

from bort import BortConfig, CheckpointError, ConfigError, load_pretrained, save_pretrained
from bort.checkpoint import read_checkpoint
from bort.config import MAX_PARAMETERS
from bort.model import BortForMaskedLM, BortForSequenceClassification, BortModel
from conftest import shared_path

TINY = dict(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=24, num_hidden_layers=1,
            max_position_embeddings=20)
DEEP = "[" * 100_000  # the decoder recurses once per level: a bare RecursionError before the fix


def _tiny(task_cls=BortModel, preset="bert-base", **extra):
    torch.manual_seed(0)
    return task_cls(BortConfig.preset(preset, **{**TINY, **extra})).eval()


# --- config values ----------------------------------------------------------------------------------------
# (field, JSON text of the value, what the message must say). The JSON spelling matters: 1e12 is a float.
BAD_VALUES = [
    ("num_labels", '"3"', "num_labels must be a positive integer no larger than 1048576, got '3' (str)"),
    ("initializer_range", '"a"', "initializer_range must be a number in [0, 1], got 'a' (str)"),
    ("type_vocab_size", "true", "type_vocab_size must be an integer in 0..65536, got True (bool)"),
    ("vocab_size", "1e12",
     "vocab_size must be a positive integer no larger than 16777216, got 1000000000000.0 (float)"),
    ("vocab_size", "1000000000000", "vocab_size must be a positive integer no larger than 16777216, got 1000000000000"),
    ("num_hidden_layers", "1e6",
     "num_hidden_layers must be a positive integer no larger than 256, got 1000000.0 (float)"),
    ("num_hidden_layers", "1000000", "num_hidden_layers must be a positive integer no larger than 256, got 1000000"),
    ("hidden_size", "-1024", "hidden_size must be a positive integer no larger than 65536, got -1024"),
    ("intermediate_size", "0", "intermediate_size must be a positive integer no larger than 262144, got 0"),
    ("max_position_embeddings", "-1", "max_position_embeddings must be a positive integer no larger than 1048576"),
    ("num_attention_heads", "3", "hidden_size 1024 is not divisible by num_attention_heads 3"),
    ("hidden_dropout_prob", "1.0", "hidden_dropout_prob must be in [0, 1), got 1.0"),
    ("attention_probs_dropout_prob", "-0.1", "attention_probs_dropout_prob must be in [0, 1), got -0.1"),
    ("hidden_dropout_prob", "NaN", "hidden_dropout_prob must be in [0, 1), got nan"),
    ("layer_norm_eps", "Infinity", "layer_norm_eps must be in (0, 1], got inf"),
    ("layer_norm_eps", "0", "layer_norm_eps must be in (0, 1], got 0"),
    ("initializer_range", "-Infinity", "initializer_range must be in [0, 1], got -inf"),
    ("initializer_range", "1" + "0" * 400, "initializer_range must be in [0, 1], got 1000000"),  # beyond float
    ("classifier_dropout", "1.5", "classifier_dropout must be in [0, 1), got 1.5 (or null"),
    ("pad_token_id", "50265", "pad_token_id must be an integer in 0..50264, got 50265 (a token id of the vocabulary)"),
    ("pad_token_id", "1.0", "pad_token_id must be an integer in 0..50264, got 1.0 (float)"),
    ("position_offset", '"2"', "position_offset must be an integer >= 0, got '2' (str)"),
    ("add_pooler", '"yes"', "add_pooler must be true or false, got 'yes'"),
    ("hidden_act", "5", "hidden_act 5 is not one of gelu"),
    ("embedding_style", "null", "embedding_style None is not one of bert, gluon"),
    ("problem_type", "[1]", "problem_type [1] is not 'regression' or 'single_label_classification'"),
    ("attention", '"magic"', "unknown attention mechanism 'magic'; known: "),
    ("attention", "{}", "unknown attention mechanism {}; known: "),
    ("attention_params", '"block_size=4"', "attention_params must be an object of parameter names to values, got str"),
    ("attention_params", '[["block_size", 4]]',
     "attention_params must be an object of parameter names to values, got list"),
    ("attention_params", '{"a": ' * 12 + "1" + "}" * 12, "is nested more than 8 levels deep"),
]


@pytest.mark.parametrize("field, value, needle", BAD_VALUES)
def test_config_file_values_are_checked_by_type_and_range(tmp_path, field, value, needle):
    values = BortConfig().to_dict()
    text = json.dumps(values)[:-1] + f', "{field}": {value}}}'  # a later duplicate key wins in JSON
    path = tmp_path / "hostile-config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        BortConfig.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid BortConfig: ") and needle in message, message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        BortConfig(num_labels="3", vocab_size=1e12, hidden_dropout_prob=2.0)
    for field in ("num_labels", "vocab_size", "hidden_dropout_prob"):
        assert f"{field} must be" in str(err.value)


def test_sizes_that_are_each_plausible_but_too_large_together_are_refused_before_allocation():
    # 256 layers of width 8192 with a 32k FFN: each size is within its range, the product is 2e11 parameters.
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as err:
            BortModel(BortConfig(num_hidden_layers=256, hidden_size=8192, num_attention_heads=8,
                                 intermediate_size=32768))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "the model would have about 2.07e+11 parameters" in str(err.value)
    assert f"expected at most {MAX_PARAMETERS:.3g}" in str(err.value)
    assert peak < 1 << 20  # nothing of the model's size was allocated


@pytest.mark.parametrize("name", BortConfig.presets())
def test_every_preset_is_within_the_bounds_and_estimated_from_above(name):
    assert 5e7 < BortConfig.preset(name).estimated_parameters < MAX_PARAMETERS
    # At a small size: the estimate covers the encoder and every head, so it bounds each model's real count.
    cfg = BortConfig.preset(name, **TINY)
    counts = [sum(p.numel() for p in cls(cfg).parameters())
              for cls in (BortModel, BortForMaskedLM, BortForSequenceClassification)]
    assert max(counts) <= cfg.estimated_parameters <= 1.5 * max(counts), (counts, cfg.estimated_parameters)


def test_from_dict_and_overrides_name_the_source():
    with pytest.raises(ConfigError, match=r"^run\.json: invalid BortConfig: num_labels must be a positive integer"):
        BortConfig.from_dict({"num_labels": "3"}, source="run.json")
    with pytest.raises(ConfigError, match="preset must be a preset name"):
        BortConfig.resolve({"preset": 5})
    with pytest.raises(ConfigError, match="a config must be a BortConfig, a preset name"):
        BortConfig.resolve(3)
    with pytest.raises(ConfigError, match="unknown config field"):
        BortConfig.from_dict({1: 2})


# --- deeply nested JSON -----------------------------------------------------------------------------------
def test_deeply_nested_config_file_names_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(ConfigError, match=r"deep\.json: JSON nested too deeply to decode"):
        BortConfig.load(path)
    with pytest.raises(ConfigError, match=r"^inline config: JSON nested too deeply"):
        BortConfig.resolve('{"a":' * 100_000)


def test_integer_too_long_to_convert_names_the_file(tmp_path):
    path = tmp_path / "long.json"
    path.write_text('{"vocab_size": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match=r"long\.json: not usable JSON: Exceeds the limit .* digits"):
        BortConfig.load(path)


def test_deeply_nested_checkpoint_config_and_search_space_name_the_file(tmp_path):
    from bort.search import SearchSpaceError, load_space

    (tmp_path / "config.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match=r"config\.json: JSON nested too deeply"):
        load_pretrained(tmp_path)
    space = tmp_path / "space.json"
    space.write_text(DEEP)
    with pytest.raises(SearchSpaceError, match=r"space\.json: JSON nested too deeply"):
        load_space(space)


# --- config.json inside checkpoints ----------------------------------------------------------------------
def _patch_json(path: Path, **changes) -> None:
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


@pytest.mark.parametrize("changes, needle", [
    ({"num_labels": "3"}, "num_labels must be a positive integer no larger than 1048576, got '3' (str)"),
    ({"vocab_size": 1e12}, "vocab_size must be a positive integer no larger than 16777216"),
    ({"num_hidden_layers": 1000000}, "num_hidden_layers must be a positive integer no larger than 256"),
    ({"type_vocab_size": True}, "type_vocab_size must be an integer in 0..65536, got True (bool)"),
    ({"bort_format_version": 99}, "bort_format_version 99 is not supported: expected 1"),
    ({"task": "translation"}, "task 'translation' is not one of encoder, mlm, classification"),
    ({"task": ["mlm"]}, "task ['mlm'] is not one of"),
    ({"attention": "strided", "attention_params": {"block_size": "x"}},
     "cannot build the model from its config: attention 'strided': attention_params block_size='x'"),
])
def test_native_checkpoint_config_values_name_the_file(tmp_path, changes, needle):
    save_pretrained(_tiny(), tmp_path)
    _patch_json(tmp_path / "config.json", **changes)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value) and needle in str(err.value), str(err.value)


@pytest.mark.parametrize("changes, needle", [
    ({"pad_token_id": "0"}, "pad_token_id must be an integer >= 0 or null, got '0'"),
    ({"pad_token_id": [0]}, "pad_token_id must be an integer >= 0 or null, got [0]"),
    ({"vocab_size": True}, "vocab_size must be a positive integer no larger than 16777216, got True (bool)"),
    ({"initializer_range": "a"}, "initializer_range must be a number in [0, 1], got 'a' (str)"),
    ({"hidden_size": 1e6}, "hidden_size must be a positive integer no larger than 65536, got 1000000.0 (float)"),
])
def test_hf_checkpoint_config_values_name_the_file(tmp_path, changes, needle):
    save_pretrained(_tiny(), tmp_path, format="hf")
    _patch_json(tmp_path / "config.json", **changes)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value) and needle in str(err.value), str(err.value)


# --- safetensors headers ----------------------------------------------------------------------------------
def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path: Path, header: dict | bytes, data: bytes, header_len: int | None = None) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


def _first_tensor(header: dict) -> str:
    """The tensor whose data comes first (offsets start at 0)."""
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _mutations():
    def set_field(field, value):
        def mutate(header, data):
            header[_first_tensor(header)][field] = value
            return header, data
        return mutate

    def offsets(fn):
        def mutate(header, data):
            entry = header[_first_tensor(header)]
            entry["data_offsets"] = fn(*entry["data_offsets"])
            return header, data
        return mutate

    def overlap(header, data):
        first = _first_tensor(header)
        second = min((k for k in header if k not in ("__metadata__", first)),
                     key=lambda k: header[k]["data_offsets"][0])
        a, b = header[second]["data_offsets"]
        header[second]["data_offsets"] = [a - 4, b - 4]
        return header, data

    return [
        ("string offsets", offsets(lambda a, b: [str(a), str(b)]),
         "data_offsets ['0', '"),
        ("negative offsets", offsets(lambda a, b: [a - 8, b - 8]), "data_offsets [-8, "),
        ("reversed offsets", offsets(lambda a, b: [b, a]), "is not [begin, end] with integers 0 <= begin <= end"),
        ("three offsets", offsets(lambda a, b: [a, b, b]), "is not [begin, end]"),
        ("overlapping offsets", overlap, "overlaps the previous tensor: expected it to start at data byte"),
        ("out-of-file offsets", lambda h, d: (h, d[:-4]), "truncated: tensors need"),
        ("trailing bytes", lambda h, d: (h, d + b"\0" * 4), "4 unexpected bytes after the last tensor's data"),
        ("unknown dtype", set_field("dtype", "F7"), "unknown dtype 'F7': expected one of BOOL"),
        ("dtype not a string", set_field("dtype", 4), "unknown dtype 4"),
        ("shape/byte mismatch", set_field("shape", [3, 3, 3]), "of F32 needs 108 bytes but data_offsets"),
        ("huge shape", set_field("shape", [1 << 40, 1 << 40]), "needs 4835703278458516698824704 bytes"),
        ("bool in shape", set_field("shape", [True]), "shape [True] is not a list of non-negative integers"),
        ("string shape", set_field("shape", "16"), "shape '16' is not a list of non-negative integers"),
        ("entry not an object", lambda h, d: ({**h, _first_tensor(h): [1, 2]}, d),
         "expected an object with dtype, shape and data_offsets, got list"),
        ("entry without offsets", lambda h, d: ({**h, _first_tensor(h): {"dtype": "F32", "shape": [1]}}, d),
         "missing data_offsets"),
        ("metadata not strings", lambda h, d: ({**h, "__metadata__": {"format": 1}}, d),
         "__metadata__ must be an object of strings to strings"),
        ("header a list", lambda h, d: ([h], d), "header is not a JSON object (got list)"),
        ("deeply nested header", lambda h, d: (DEEP.encode(), d), "nested too deeply to decode"),
        ("header not UTF-8", lambda h, d: (b'{"\xff": 1}', d), "is not valid JSON"),
    ]


@pytest.mark.parametrize("label, mutate, needle", _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_safetensors_header_names_the_file_and_field(tmp_path, label, mutate, needle):
    save_pretrained(_tiny(), tmp_path)
    weights = tmp_path / "model.safetensors"
    header, data = _split(weights)
    _join(weights, *mutate(header, data))
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    assert str(err.value).startswith(f"{weights}: ") and needle in str(err.value), str(err.value)


@pytest.mark.parametrize("header_len, needle", [
    (1 << 62, "header length 4611686018427387904 at byte 0 exceeds the format's limit of 100000000 bytes"),
    (50_000_000, "header length 50000000 at byte 0 runs past the end of the file"),
])
def test_huge_safetensors_header_length_is_refused_before_reading(tmp_path, header_len, needle):
    save_pretrained(_tiny(), tmp_path)
    weights = tmp_path / "model.safetensors"
    header, data = _split(weights)
    _join(weights, header, data, header_len=header_len)
    with pytest.raises(CheckpointError, match=f"^{weights}: {needle}"):
        load_pretrained(tmp_path)


def test_safetensors_fuzz_every_failure_is_a_named_checkpoint_error(tmp_path):
    save_pretrained(_tiny(), tmp_path / "good")
    original = (tmp_path / "good" / "model.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    ckpt = tmp_path / "fuzz"
    save_pretrained(_tiny(), ckpt)
    weights = ckpt / "model.safetensors"
    rng = random.Random(20)
    failures = 0
    for i in range(150):
        data = bytearray(original)
        if i % 3 == 0:
            data = data[:rng.randrange(len(data))]
        else:  # flips mostly in the header, where they change the structure
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(header_end if i % 3 == 1 else len(data))] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(data))
        try:
            load_pretrained(ckpt)
        except CheckpointError as err:
            failures += 1
            # The weights file for a malformed file; the checkpoint directory for a renamed tensor (the
            # state then lacks a parameter, which is named too).
            assert str(err).startswith(f"{weights}: ") or str(err).startswith(f"{ckpt}: "), (i, str(err))
    assert failures >= 60  # every truncation and most header flips fail


# --- Gluon .params ----------------------------------------------------------------------------------------
def _gluon_fixture() -> bytes:
    return shared_path("fixtures", "mxnet", "gluonnlp_tiny_bert.params").read_bytes()


def _header_offsets(data: bytes) -> list[int]:
    """Byte offsets of every array header (V2 magic, storage type, shape, context, type flag) and of the
    name table at the end: where a flipped byte changes the file's structure rather than a weight."""
    magic = struct.pack("<I", 0xF993FAC9)
    offsets, at = [], data.find(magic)
    while at != -1:
        offsets.extend(range(at, at + 40))
        at = data.find(magic, at + 1)
    names_start = data.find(b"word_embed") - 16
    offsets.extend(range(min(names_start, data.find(b"encoder.") - 16), len(data)))
    return offsets


def test_truncated_gluon_checkpoint_names_the_file_at_every_offset(tmp_path):
    data = _gluon_fixture()
    path = tmp_path / "cut-bert.params"
    rng = random.Random(5)
    lengths = sorted(set(range(0, 200)) | set(rng.sample(range(len(data)), 150)) | {len(data) - 1})
    for length in lengths:
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert str(err.value).startswith(f"{path}: "), (length, str(err.value))


def test_flipped_gluon_headers_and_names_name_the_file(tmp_path):
    # Flips in the name table were the cases that lost the file name: a renamed parameter ("word_ehbed"),
    # a layer index that implies another depth, shapes that imply an impossible config.
    data = _gluon_fixture()
    path = tmp_path / "flip-bert.params"
    rng = random.Random(6)
    offsets = _header_offsets(data)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 2)):
            corrupt[rng.choice(offsets)] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(corrupt))
        try:
            if i % 10 == 0:  # the whole path, model construction and state loading included (slower)
                load_pretrained(path)
            else:
                read_checkpoint(path)
            outcomes["ok"] += 1
        except CheckpointError as err:
            outcomes["error"] += 1
            assert str(err).startswith(f"{path}: "), (i, str(err))
    assert outcomes["error"] > 150, outcomes


def test_renamed_gluon_parameter_names_the_file(tmp_path):
    data = _gluon_fixture().replace(b"word_embed.0.weight", b"word_ehbed.0.weight")
    path = tmp_path / "renamed.params"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"^{path}: 1 Gluon parameter name\(s\) not understood.*word_ehbed"):
        read_checkpoint(path)


def test_gluon_shapes_implying_an_impossible_config_name_the_file(tmp_path):
    # The word embedding's width becomes 3, 5, 6 or 7 (same byte size), which the default 8 heads cannot divide.
    import numpy as np

    from bort.checkpoint.gluon import read_params

    data = bytearray(_gluon_fixture())
    params = read_params(shared_path("fixtures", "mxnet", "gluonnlp_tiny_bert.params"))
    word = params["word_embed.0.weight"]
    # The shape (int64 dims) of the word embedding, found by its exact byte pattern.
    dims = struct.pack("<iqq", 2, *word.shape)
    at = bytes(data).find(dims)
    assert at > 0 and word.dtype == np.float32
    width = next(k for k in (3, 5, 6, 7) if word.size % k == 0)
    struct.pack_into("<iqq", data, at, 2, word.size // width, width)
    path = tmp_path / "odd-width.params"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"{path}: the array shapes imply an impossible config")
    assert f"hidden_size {width} is not divisible by num_attention_heads 8" in str(err.value)


def test_huge_declared_gluon_array_is_refused_before_allocating(tmp_path):
    data = bytearray(_gluon_fixture())
    at = bytes(data).find(struct.pack("<I", 0xF993FAC9))
    # magic, storage type, then the shape: ndim at +8, the first dim at +12.
    struct.pack_into("<q", data, at + 12, 1 << 40)
    path = tmp_path / "huge.params"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as err:
            load_pretrained(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith(f"{path}: byte ") and "absurd shape" in str(err.value)
    assert "more than the whole file" in str(err.value)
    assert peak < 16 << 20, peak


# --- model inputs -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlm():
    return _tiny(BortForMaskedLM)


IDS = torch.tensor([[2, 5, 7, 9, 3, 0], [2, 8, 8, 3, 0, 0]])


def _with(tensor: torch.Tensor, row: int, col: int, value) -> torch.Tensor:
    out = tensor.clone()
    out[row, col] = value
    return out


@pytest.mark.parametrize("kwargs, needle", [
    (dict(input_ids=_with(IDS, 1, 3, 50)), "input_ids holds 50 at row 1, position 3: expected 0..49 (vocab_size 50)"),
    (dict(input_ids=_with(IDS, 0, 2, -1)), "input_ids holds -1 at row 0, position 2: expected 0..49 (vocab_size 50)"),
    (dict(input_ids=IDS.float()), "input_ids must hold integer ids (int64 or int32), got dtype float32"),
    (dict(input_ids=IDS, token_type_ids=_with(torch.zeros_like(IDS), 0, 4, 2)),
     "token_type_ids holds 2 at row 0, position 4: expected 0..1 (type_vocab_size 2)"),
    (dict(input_ids=IDS, token_type_ids=torch.zeros(2, 5, dtype=torch.long)),
     "token_type_ids shape (2, 5) does not match input_ids (2, 6)"),
    (dict(input_ids=IDS, masked_positions=torch.tensor([[0, 6], [1, 2]])),
     "masked_positions holds 6 at row 0, position 1: expected 0..5 (positions of the 6-token input)"),
    (dict(input_ids=IDS, masked_positions=torch.tensor([[0, 1], [-1, 2]])),
     "masked_positions holds -1 at row 1, position 0: expected 0..5"),
    (dict(input_ids=IDS, masked_positions=torch.tensor([[0.5, 1.0], [1.0, 2.0]])),
     "masked_positions must hold integer ids (an integer dtype), got dtype float32"),
    (dict(input_ids=torch.zeros(1, 40, dtype=torch.long)),
     "input length 40 exceeds the model's 20 positions: input_ids has 40 tokens per row, expected at most 20"),
    (dict(input_ids=IDS, attention_mask=_with(torch.ones(2, 6), 1, 5, 0.5)),
     "attention_mask holds 0.5 at row 1, position 5: expected 1 for a real token and 0 for padding"),
    (dict(input_ids=IDS, attention_mask=torch.tensor([[0.0] * 6, [0.0] * 4 + [-1e4] * 2])),
     "attention_mask holds -10000.0 at row 1, position 4: expected 1 for a real token and 0 for padding "
     "(bool masks are accepted; additive 0/-inf masks are not)"),
    (dict(input_ids=IDS, attention_mask=_with(torch.ones(2, 6), 0, 1, 2)),
     "attention_mask holds 2.0 at row 0, position 1"),
    (dict(input_ids=IDS, attention_mask=_with(torch.ones(2, 6), 0, 3, float("nan"))),
     "attention_mask holds nan at row 0, position 3"),
    (dict(input_ids=IDS, attention_mask=torch.zeros(2, 6)),
     "attention_mask has no real token in any of its 2 rows (all entries are 0)"),
    (dict(input_ids=IDS, attention_mask=torch.zeros(2, 6, dtype=torch.bool)),
     "attention_mask has no real token in any of its 2 rows"),
])
def test_bad_model_inputs_name_the_argument_value_and_range(mlm, kwargs, needle):
    with pytest.raises(ValueError) as err:
        mlm(**kwargs)
    assert needle in str(err.value), str(err.value)


def test_a_row_without_real_tokens_warns_and_gives_what_attention_over_nothing_gives(mlm):
    from bort.model import EmptyRowWarning

    mask = torch.tensor([[1] * 6, [0] * 6])
    with pytest.warns(EmptyRowWarning, match=r"attention_mask row\(s\) \[1\] hold no real token \(1 of 2\)"):
        out = mlm(IDS, mask).logits
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[0], mlm(IDS[:1], mask[:1]).logits[0])  # the other rows are untouched


def test_token_types_given_to_a_model_without_them():
    model = _tiny(preset="bort_4_8_768_1024", num_attention_heads=2)
    with pytest.raises(ValueError, match=r"token_type_ids given but this model has no token-type embedding "
                                         r"\(type_vocab_size 0\): found 1 at row 0, position 0"):
        model(IDS, token_type_ids=torch.ones_like(IDS))
    assert model(IDS, token_type_ids=torch.zeros_like(IDS)).last_hidden_state.shape == (2, 6, 16)


def test_valid_inputs_pass_in_every_mask_form(mlm):
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    pos = torch.tensor([[1, 5], [0, 3]])
    with torch.no_grad():
        want = mlm(IDS, mask, torch.zeros_like(IDS), pos).logits
        for form in (mask.bool(), mask.float(), mask.int()):
            assert torch.equal(mlm(IDS, form, torch.zeros_like(IDS), pos).logits, want)
        assert mlm(IDS.int()).logits.shape == (2, 6, 50)


def test_checks_are_skipped_while_tracing(mlm):
    """A traced graph must not bake in host-side checks (it would warn and freeze the values); the eager
    call before export checked the example inputs."""
    import warnings

    classifier = _tiny(BortForSequenceClassification)
    mask = torch.ones_like(IDS)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = classifier

        def forward(self, ids, attention_mask):
            return self.inner(ids, attention_mask).logits

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(Logits(), (IDS, mask), check_trace=False)
    # The checks read their reductions back with one .tolist(), which the tracer would warn about.
    assert not [w for w in caught if "Python list" in str(w.message)], [str(w.message) for w in caught]
    assert torch.allclose(traced(IDS, mask), classifier(IDS, mask).logits, atol=1e-6)


def test_lra_classifier_inputs_get_the_same_named_errors():
    from bort.lra.model import LRAClassifier, lra_config
    from bort.lra.tasks import get_task

    model = LRAClassifier(lra_config(get_task("listops"), vocab_size=20, hidden_size=16, intermediate_size=16,
                                     num_attention_heads=2)).eval()
    ids = torch.randint(1, 20, (2, 8))
    assert model(ids, torch.ones_like(ids)).logits.shape == (2, 10)
    with pytest.raises(ValueError, match=r"input_ids holds 20 at row 1, position 2: expected 0\.\.19"):
        model(_with(ids, 1, 2, 20))
    with pytest.raises(ValueError, match=r"attention_mask holds -10000\.0 at row 0, position 0"):
        model(ids, torch.full((2, 8), -1e4))


def test_dam_mask_size_is_refused_before_allocation():
    """dam_u's logits grow with max_length²: a config asking for 10^5 positions is refused by name, not by the
    allocator (2 × 10^10 floats); dam_s at the same length is linear and fine."""
    cfg = BortConfig.preset("bert-base", vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                            num_hidden_layers=1, attention="dam_u", attention_params={"max_length": 100_000})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"attention 'dam_u': max_length 100000 needs 40,000,000,000 mask "
                                             r"logits .* more than the 268,435,456 allowed"):
            BortModel(cfg)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    BortModel(BortConfig(**{**cfg.to_dict(), "attention": "dam_s"}))
