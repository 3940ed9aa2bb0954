"""The numpy reader of MXNet `.params` files and the GluonNLP → Bort name map.

Real files come from the shared fixtures (written by MXNet 1.9.1); the other layouts (V1, pre-magic legacy,
V3 scalars, bfloat16, bool, sparse) are built here byte by byte, following MXNet's `NDArray::Save`.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bort.checkpoint.errors import CheckpointError
from bort.checkpoint.gluon import gluon_to_bort_state_dict, infer_gluon_config, read_params
from conftest import shared_path

V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, np.dtype(np.uint8): 3,
         np.dtype(np.int32): 4, np.dtype(np.int8): 5, np.dtype(np.int64): 6, np.dtype(np.int16): 8,
         np.dtype(np.uint16): 9, np.dtype(np.uint32): 10, np.dtype(np.uint64): 11}


# --- a tiny writer, enough to build every layout the reader accepts ------------------------------------
def shape_bytes(shape: tuple[int, ...]) -> bytes:
    return struct.pack("<i", len(shape)) + struct.pack(f"<{len(shape)}q", *shape)


def encode_array(array: np.ndarray, layout: str = "v2", type_flag: int | None = None) -> bytes:
    """One array as MXNet writes it: layout "v2", "v3", "v1" or "legacy" (pre-magic)."""
    array = np.asarray(array)
    if layout == "legacy":
        head = struct.pack("<I", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    elif layout == "v1":
        head = struct.pack("<I", V1) + shape_bytes(array.shape)
    else:
        head = struct.pack("<Ii", V3 if layout == "v3" else V2, 0) + shape_bytes(array.shape)
    flag = FLAGS[array.dtype] if type_flag is None else type_flag
    return head + struct.pack("<iii", 1, 0, flag) + array.astype(array.dtype.newbyteorder("<")).tobytes()


def encode_file(arrays: list[bytes], names: list[str] | None) -> bytes:
    """The list container: magic, reserved, arrays, then names (none for an unnamed list)."""
    out = struct.pack("<QQQ", 0x112, 0, len(arrays)) + b"".join(arrays)
    names = names or []
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode()
        out += struct.pack("<Q", len(raw)) + raw
    return out


def write(tmp_path: Path, data: bytes, name: str = "model.params") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def fixture(name: str) -> Path:
    return shared_path("fixtures", "mxnet", name)


# --- real MXNet files -----------------------------------------------------------------------------------
def test_tiny_matches_expected_names_dtypes_and_values():
    params = read_params(fixture("tiny.params"))
    expected = np.load(fixture("tiny_params_expected.npz"))
    assert list(params) == list(expected.files)
    for name in expected.files:
        assert params[name].dtype == expected[name].dtype
        assert params[name].shape == expected[name].shape
        np.testing.assert_array_equal(params[name], expected[name])


def test_unnamed_list_file_gets_index_keys():
    params = read_params(fixture("tiny_list.params"))
    assert list(params) == ["0"]
    assert params["0"].dtype == np.float32
    np.testing.assert_array_equal(params["0"], np.array([1.0, 2.0, 3.0], dtype=np.float32))


def test_mixed_dtypes_keep_their_dtype():
    # Values as MXNet 1.9.1's own `nd.load` returns them for this file.
    params = read_params(fixture("tiny_mixed.params"))
    expected = {
        "f16": np.array([1.5, -2.0], dtype=np.float16),
        "i32": np.array([[7, 8], [9, 10]], dtype=np.int32),
        "f64": np.array([3.25], dtype=np.float64),
        "scalar1": np.array([42.0], dtype=np.float32),
    }
    assert list(params) == list(expected)
    for name, value in expected.items():
        assert params[name].dtype == value.dtype, name
        np.testing.assert_array_equal(params[name], value)


def test_gluonnlp_bert_fixture_maps_completely():
    params = read_params(fixture("gluonnlp_tiny_bert.params"))
    cfg = infer_gluon_config(params)
    assert cfg == {"vocab_size": 12, "hidden_size": 64, "max_position_embeddings": 64,
                   "num_hidden_layers": 2, "intermediate_size": 128, "type_vocab_size": 2}
    state = gluon_to_bort_state_dict(params, cfg["num_hidden_layers"])
    assert len(state) == len(params) - 1  # only the tied decoder weight is dropped

    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    expected = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,),
        "cls.seq_relationship.weight": (2, h), "cls.seq_relationship.bias": (2,),
        "lm_head.dense.weight": (h, h), "lm_head.dense.bias": (h,),
        "lm_head.layer_norm.weight": (h,), "lm_head.layer_norm.bias": (h,), "lm_head.bias": (v,),
    }
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        for proj in ("query", "key", "value"):
            expected[p + f"attention.self.{proj}.weight"] = (h, h)
            expected[p + f"attention.self.{proj}.bias"] = (h,)
        expected.update({
            p + "attention.output.dense.weight": (h, h), p + "attention.output.dense.bias": (h,),
            p + "attention.output.LayerNorm.weight": (h,), p + "attention.output.LayerNorm.bias": (h,),
            p + "intermediate.dense.weight": (i, h), p + "intermediate.dense.bias": (i,),
            p + "output.dense.weight": (h, i), p + "output.dense.bias": (h,),
            p + "output.LayerNorm.weight": (h,), p + "output.LayerNorm.bias": (h,),
        })
    assert {name: tuple(t.shape) for name, t in state.items()} == expected
    assert all(t.dtype == torch.float32 for t in state.values())
    # Values travel unchanged (gamma → weight, no transposes).
    np.testing.assert_array_equal(state["encoder.layer.1.output.LayerNorm.weight"].numpy(),
                                  params["encoder.transformer_cells.1.ffn.layer_norm.gamma"])
    np.testing.assert_array_equal(state["encoder.layer.0.intermediate.dense.weight"].numpy(),
                                  params["encoder.transformer_cells.0.ffn.ffn_1.weight"])


# --- other layouts and dtypes ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["v1", "legacy", "v2", "v3"])
def test_every_array_layout(tmp_path, layout):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, -8], dtype=np.int64)
    path = write(tmp_path, encode_file([encode_array(a, layout), encode_array(b, layout)], ["a", "b"]))
    params = read_params(path)
    np.testing.assert_array_equal(params["a"], a)
    np.testing.assert_array_equal(params["b"], b)
    assert params["b"].dtype == np.int64


def test_v3_scalar_and_empty(tmp_path):
    data = [encode_array(np.array(2.5, dtype=np.float32), "v3"), encode_array(np.zeros((2, 0), np.float32), "v3")]
    params = read_params(write(tmp_path, encode_file(data, ["s", "z"])))
    assert params["s"].shape == () and float(params["s"]) == 2.5
    assert params["z"].shape == (2, 0)


def test_bfloat16_widens_exactly_and_bool(tmp_path):
    values = np.array([1.5, -2.25, 3.0e-3], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    data = [encode_array(bits, type_flag=12), encode_array(np.array([1, 0, 1], np.uint8), type_flag=7)]
    params = read_params(write(tmp_path, encode_file(data, ["bf", "flag"])))
    assert params["bf"].dtype == np.float32
    np.testing.assert_array_equal(params["bf"], (bits.astype(np.uint32) << 16).view(np.float32))
    assert params["flag"].dtype == np.bool_ and params["flag"].tolist() == [True, False, True]


def row_sparse_array() -> bytes:
    """A 3×2 row_sparse array with one stored row (index 1), in V2 layout."""
    return (struct.pack("<Ii", V2, 1) + shape_bytes((1, 2)) + shape_bytes((3, 2)) + struct.pack("<iii", 1, 0, 0)
            + struct.pack("<i", 6) + shape_bytes((1,)) + np.array([1.0, 2.0], "<f4").tobytes()
            + np.array([1], "<i8").tobytes())


def test_sparse_is_refused_by_name_after_a_full_parse(tmp_path):
    data = [encode_array(np.ones(2, np.float32)), row_sparse_array()]
    with pytest.raises(CheckpointError, match=r"array 1 \('emb.weight'\).*row_sparse.*unsupported"):
        read_params(write(tmp_path, encode_file(data, ["dense", "emb.weight"])))


def test_array_without_data_is_refused_by_name(tmp_path):
    none_v2 = struct.pack("<Ii", V2, 0) + shape_bytes(())
    with pytest.raises(CheckpointError, match=r"array 0 \('w'\) holds no data"):
        read_params(write(tmp_path, encode_file([none_v2], ["w"])))


# --- bad input: always CheckpointError, naming the file -------------------------------------------------
def test_every_truncation_of_tiny_raises_checkpoint_error(tmp_path):
    data = fixture("tiny.params").read_bytes()
    path = tmp_path / "cut.params"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError) as info:
            read_params(path)
        assert "cut.params" in str(info.value), length
        assert "truncated" in str(info.value) or length < 8, (length, str(info.value))


def test_every_flipped_byte_parses_or_raises_checkpoint_error(tmp_path):
    # Corruption anywhere may still be a valid file (a flipped data byte); it must never crash otherwise.
    data = bytearray(fixture("tiny.params").read_bytes())
    path = tmp_path / "flip.params"
    for offset in range(len(data)):
        corrupt = bytearray(data)
        corrupt[offset] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        try:
            read_params(path)
        except CheckpointError as err:
            assert "flip.params" in str(err)


def test_truncation_message_names_array_offset_and_sizes(tmp_path):
    data = fixture("tiny.params").read_bytes()
    # The second array's data (3 float32) starts at byte 144; keep 4 of its 12 bytes.
    with pytest.raises(CheckpointError, match=r"short\.params: truncated at byte 144 while reading data of "
                                              r"array 1: expected 12 bytes, 4 remain"):
        read_params(write(tmp_path, data[:148], "short.params"))


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize("offset, fmt, value, message", [
    (0, "<Q", 0x113, r"bad list magic 0x113"),
    (24, "<I", 0xDEADBEEF, r"byte 24: bad magic 0xDEADBEEF for array 0"),
    (32, "<i", 1000, r"absurd ndim 1000 for the shape of array 0"),
    (32, "<i", -7, r"absurd ndim -7"),
    (36, "<q", 1 << 40, r"absurd shape .* more than the whole file"),
    (36, "<q", -5, r"absurd shape"),
    (28, "<i", 9, r"unknown storage type 9"),
    (60, "<i", 33, r"unknown type flag 33 for array 0"),
    (52, "<i", 4, r"unknown device type 4"),
    (16, "<Q", 1 << 60, r"absurd array count"),
    (236, "<Q", 2, r"name count 2 does not match array count 3"),
])
def test_specific_corruptions(tmp_path, offset, fmt, value, message):
    data = fixture("tiny.params").read_bytes()
    with pytest.raises(CheckpointError, match=message) as info:
        read_params(write(tmp_path, patched(data, offset, fmt, value), "bad.params"))
    assert "bad.params" in str(info.value)


def test_trailing_garbage(tmp_path):
    data = fixture("tiny.params").read_bytes() + b"\0junk"
    with pytest.raises(CheckpointError, match=r"trailing garbage: 5 unexpected bytes"):
        read_params(write(tmp_path, data))


def test_duplicate_and_non_utf8_names(tmp_path):
    one = encode_array(np.ones(1, np.float32))
    with pytest.raises(CheckpointError, match=r"duplicate array name 'w'"):
        read_params(write(tmp_path, encode_file([one, one], ["w", "w"])))
    bad_name = encode_file([one], ["w"]).replace(b"\x01\0\0\0\0\0\0\0w", b"\x01\0\0\0\0\0\0\0\xff")
    with pytest.raises(CheckpointError, match=r"name 0 is not UTF-8"):
        read_params(write(tmp_path, bad_name))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.params: cannot read"):
        read_params(tmp_path / "nothere.params")


# --- name mapping ---------------------------------------------------------------------------------------
def bort_like_params(layers: int = 2, h: int = 8, i: int = 6, v: int = 10, n: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"word_embed.0.weight": (v, h), "encoder.position_weight": (n, h),
              "encoder.layer_norm.gamma": (h,), "encoder.layer_norm.beta": (h,),
              "decoder.0.weight": (h, h), "decoder.0.bias": (h,), "decoder.2.gamma": (h,),
              "decoder.2.beta": (h,), "decoder.3.bias": (v,)}
    for layer in range(layers):
        c = f"encoder.transformer_cells.{layer}."
        for proj in ("query", "key", "value"):
            shapes[c + f"attention_cell.proj_{proj}.weight"] = (h, h)
            shapes[c + f"attention_cell.proj_{proj}.bias"] = (h,)
        shapes.update({c + "proj.weight": (h, h), c + "proj.bias": (h,), c + "layer_norm.gamma": (h,),
                       c + "layer_norm.beta": (h,), c + "ffn.ffn_1.weight": (i, h), c + "ffn.ffn_1.bias": (i,),
                       c + "ffn.ffn_2.weight": (h, i), c + "ffn.ffn_2.bias": (h,),
                       c + "ffn.layer_norm.gamma": (h,), c + "ffn.layer_norm.beta": (h,)})
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    params["decoder.3.weight"] = params["word_embed.0.weight"].copy()
    return params


def test_bort_names_and_inferred_config():
    params = bort_like_params()
    assert infer_gluon_config(params) == {"vocab_size": 10, "hidden_size": 8, "max_position_embeddings": 16,
                                          "num_hidden_layers": 2, "intermediate_size": 6, "type_vocab_size": 0}
    state = gluon_to_bort_state_dict(params, num_layers=2)
    assert "decoder.3.weight" not in state and len(state) == len(params) - 1
    assert torch.equal(state["lm_head.bias"], torch.from_numpy(params["decoder.3.bias"]))
    assert torch.equal(state["encoder.layer.1.attention.output.LayerNorm.bias"],
                       torch.from_numpy(params["encoder.transformer_cells.1.layer_norm.beta"]))
    assert torch.equal(state["encoder.layer.0.attention.self.key.weight"],
                       torch.from_numpy(params["encoder.transformer_cells.0.attention_cell.proj_key.weight"]))


def test_unknown_names_are_all_listed():
    params = bort_like_params()
    params["encoder.transformer_cells.0.proj.gamma"] = np.ones(8, np.float32)  # LayerNorm name on a Dense
    params["bertmodel0_word_embed_embedding0_weight"] = np.ones((1, 8), np.float32)  # old save_params style
    with pytest.raises(CheckpointError, match=r"2 Gluon parameter name\(s\) not understood for a 2-layer .*"
                                              r"bertmodel0_word_embed_embedding0_weight, "
                                              r"encoder\.transformer_cells\.0\.proj\.gamma"):
        gluon_to_bort_state_dict(params, num_layers=2)


def test_layers_beyond_num_layers_are_unknown():
    with pytest.raises(CheckpointError, match=r"transformer_cells\.1\."):
        gluon_to_bort_state_dict(bort_like_params(layers=2), num_layers=1)


def test_untied_decoder_weight_is_refused():
    params = bort_like_params()
    params["decoder.3.weight"] = params["decoder.3.weight"] + 1
    with pytest.raises(CheckpointError, match=r"decoder\.3\.weight .* differs from word_embed\.0\.weight"):
        gluon_to_bort_state_dict(params, num_layers=2)
    del params["word_embed.0.weight"]
    with pytest.raises(CheckpointError, match=r"word_embed\.0\.weight is missing"):
        gluon_to_bort_state_dict(params, num_layers=2)
