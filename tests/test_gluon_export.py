"""Gluon `.params` export: the NDArray writer (byte for byte what MXNet writes), our models in the original
Bort's names (read back by our reader and, in the side venv, loaded strictly and run by the original code with
the same outputs), and the refusal of what the original graph cannot compute."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bort import BortConfig, load_pretrained, save_pretrained
from bort.checkpoint import CheckpointError
from bort.checkpoint.gluon import read_params
from bort.checkpoint.gluon_export import export_gluon, gluon_state, original_preset, write_params
from bort.cli import main
from bort.model import BortForMaskedLM, BortForMultipleChoice, BortForSequenceClassification, BortModel
from conftest import shared_path

SIZES = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4, vocab_size=24,
             max_position_embeddings=16)
TOLERANCE = 1e-5


def tiny_config(**overrides) -> BortConfig:
    # GluonNLP 0.8.3's decoder LayerNorm uses eps 1e-12: set ours to match, so outputs can be compared exactly.
    return BortConfig.preset("bort_4_8_768_1024", **{**SIZES, "decoder_layer_norm_eps": 1e-12, **overrides})


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`model` with every weight random and far from its initialisation (LayerNorm gains around 1, offsets and
    biases non-zero), so a misplaced or transposed array changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_gain = "LayerNorm.weight" in name or "layer_norm.weight" in name
            param.copy_(1 + 0.2 * noise if is_gain else 0.2 * noise)
    return model.eval()


# --- the writer ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny.params", "tiny_mixed.params", "gluonnlp_tiny_bert.params"])
def test_write_params_reproduces_files_written_by_mxnet(tmp_path: Path, name: str):
    original = shared_path("fixtures", "mxnet", name)
    arrays = read_params(original)
    out = write_params(tmp_path / name, arrays)
    assert out.read_bytes() == original.read_bytes()


def test_write_params_round_trips_through_the_reader(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(">f4"),
              "n": np.arange(6, dtype=np.int64).reshape(1, 2, 3), "ü": np.zeros((0,), np.float32),
              "t": torch.arange(4, dtype=torch.float32)[::2]}  # a non-contiguous tensor
    path = write_params(tmp_path / "a.params", arrays)
    back = read_params(path)
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        expected = value.numpy() if isinstance(value, torch.Tensor) else value
        assert back[key].dtype == expected.dtype.newbyteorder("=") and np.array_equal(back[key], expected)
    assert [p.name for p in tmp_path.iterdir()] == ["a.params"]  # no temporary file left


@pytest.mark.parametrize("arrays, message", [
    ({"ok": np.ones(2, np.float32), "s": np.float32(3.0)}, "array 's' is a 0-d scalar"),
    ({"c": np.ones(2, np.complex64)}, "array 'c' has dtype complex64, which MXNet cannot save"),
    ({3: np.ones(2, np.float32)}, "array name 3 is not a string"),
])
def test_write_params_refuses_what_mxnet_cannot_hold_and_writes_nothing(tmp_path: Path, arrays, message):
    with pytest.raises(CheckpointError, match=message) as err:
        write_params(tmp_path / "x.params", arrays)
    assert str(tmp_path / "x.params") in str(err.value)
    assert list(tmp_path.iterdir()) == []


# --- layout --------------------------------------------------------------------------------------------------
def _cell_names(prefix: str, layer: int) -> list[str]:
    cell = f"{prefix}encoder.transformer_cells.{layer}."
    return [cell + n for n in (
        "attention_cell.proj_query.weight", "attention_cell.proj_query.bias", "attention_cell.proj_key.weight",
        "attention_cell.proj_key.bias", "attention_cell.proj_value.weight", "attention_cell.proj_value.bias",
        "proj.weight", "proj.bias", "ffn.ffn_1.weight", "ffn.ffn_1.bias", "ffn.ffn_2.weight", "ffn.ffn_2.bias",
        "ffn.layer_norm.gamma", "ffn.layer_norm.beta", "layer_norm.gamma", "layer_norm.beta")]


def _encoder_names(prefix: str) -> list[str]:
    return ([f"{prefix}encoder.position_weight", f"{prefix}encoder.layer_norm.gamma",
             f"{prefix}encoder.layer_norm.beta"] + _cell_names(prefix, 0) + _cell_names(prefix, 1)
            + [f"{prefix}word_embed.0.weight"])


def test_mlm_export_has_the_original_names_and_order_and_reads_back(tmp_path: Path):
    model = randomised(BortForMaskedLM(tiny_config()), seed=1)
    path = save_pretrained(model, tmp_path / "mlm.params", format="gluon")
    arrays = read_params(path)
    assert list(arrays) == _encoder_names("") + ["decoder.0.weight", "decoder.0.bias", "decoder.2.gamma",
                                                 "decoder.2.beta", "decoder.3.weight", "decoder.3.bias"]
    state = model.state_dict()
    assert np.array_equal(arrays["decoder.3.weight"], state["bort.embeddings.word_embeddings.weight"].numpy())
    assert np.array_equal(arrays["encoder.transformer_cells.1.ffn.ffn_2.weight"],
                          state["bort.encoder.layer.1.output.dense.weight"].numpy())
    assert np.array_equal(arrays["encoder.transformer_cells.0.layer_norm.gamma"],
                          state["bort.encoder.layer.0.attention.output.LayerNorm.weight"].numpy())
    # Our reader gives back the very same model.
    back = load_pretrained(path, config=tiny_config(), task="mlm").state_dict()
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_classifier_export_uses_the_bort_classifier_layout(tmp_path: Path, num_labels: int):
    model = randomised(BortForSequenceClassification(tiny_config(num_labels=num_labels)), seed=2)
    arrays = read_params(export_gluon(model, tmp_path / "clf.params"))
    assert list(arrays) == _encoder_names("bort.") + ["classifier.1.weight", "classifier.1.bias",
                                                      "classifier.3.weight", "classifier.3.bias"]
    assert arrays["classifier.3.weight"].shape == (num_labels, 32)
    assert np.array_equal(arrays["classifier.1.weight"], model.classifier.dense.weight.detach().numpy())
    assert np.array_equal(arrays["classifier.3.bias"], model.classifier.out_proj.bias.detach().numpy())
    # Our reader of fine-tuned original checkpoints gives back the very same model.
    task = "classification" if num_labels > 1 else "regression"
    back = load_pretrained(tmp_path / "clf.params", config=model.config, task=task).state_dict()
    state = model.state_dict()
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_pooled_bert_style_classifier_maps_the_pooler_to_the_first_dense():
    model = randomised(BortForSequenceClassification(tiny_config(add_pooler=True)), seed=3)
    assert model.use_pooler
    state = gluon_state(model)
    assert torch.equal(state["classifier.1.weight"], model.bort.pooler.dense.weight)
    assert torch.equal(state["classifier.3.weight"], model.classifier.weight)


def test_encoder_export_and_half_precision(tmp_path: Path):
    model = randomised(BortModel(tiny_config()), seed=4).to(torch.bfloat16)
    arrays = read_params(export_gluon(model, tmp_path / "enc.params"))
    assert list(arrays) == _encoder_names("")
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert np.array_equal(arrays["word_embed.0.weight"],
                          model.embeddings.word_embeddings.weight.float().detach().numpy())


def test_mlm_export_warns_when_the_decoder_epsilon_differs_from_the_original(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    export_gluon(BortForMaskedLM(tiny_config(decoder_layer_norm_eps=None)), tmp_path / "a.params")
    assert "the MLM decoder's LayerNorm eps is 1e-05 here and 1e-12 in the original (GluonNLP 0.8.3)" in caplog.text
    caplog.clear()
    export_gluon(BortForMaskedLM(tiny_config()), tmp_path / "b.params")
    assert "LayerNorm eps" not in caplog.text


def test_original_preset_names_the_model_name_of_get_bort_model():
    assert original_preset(BortConfig.preset("bort_4_8_768_1024")) == "bort_4_8_768_1024"
    assert original_preset(BortConfig.preset("bort_4_8_768_1024", num_hidden_layers=2, num_attention_heads=16,
                                             intermediate_size=512)) == "bort_2_16_512_1024"
    assert original_preset(tiny_config()) is None


# --- refusals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, reason", [
    ({"attention": "dam_s"}, "attention 'dam_s' is a DAM learned attention mask, which the original Bort cannot "
                             "represent (it has only dense multi-head attention)"),
    ({"attention": "yoso"}, "attention 'yoso' is YOSO hashing attention"),
    ({"attention": "strided"}, "attention 'strided' is a sparse attention pattern"),
    ({"attention": "bigbird"}, "attention 'bigbird' is a sparse attention pattern"),
    ({"attention": "fixed_mask"}, "attention 'fixed_mask' is a fixed (binarised DAM) attention mask"),
    ({"layer_norm_position": "pre"}, "layer_norm_position 'pre': the original Bort is post-LN"),
    ({"type_vocab_size": 2}, "type_vocab_size 2: the original Bort has no token-type embedding"),
    ({"position_offset": 2}, "position_offset 2: the original Bort numbers positions from 0"),
    ({"hidden_act": "relu"}, "hidden_act 'relu': the original Bort uses GELU"),
    ({"layer_norm_eps": 1e-12}, "layer_norm_eps 1e-12: the original Bort's encoder LayerNorms use 1e-05"),
    ({"add_pooler": True}, "the model has a pooler, which the original BortModel lacks"),
])
def test_export_refuses_what_the_original_cannot_compute(tmp_path: Path, overrides, reason):
    model = BortForMaskedLM(tiny_config(**overrides))
    dest = tmp_path / "out.params"
    with pytest.raises(CheckpointError) as err:
        save_pretrained(model, dest, format="gluon")
    assert str(err.value).startswith("cannot export BortForMaskedLM to a Gluon .params file: ")
    assert reason in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_export_lists_every_reason_at_once(tmp_path: Path):
    model = BortModel(tiny_config(attention="yoso", type_vocab_size=2))
    with pytest.raises(CheckpointError, match="YOSO hashing attention.*; type_vocab_size 2"):
        export_gluon(model, tmp_path / "out.params")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_multiple_choice_and_a_name_without_params_suffix(tmp_path: Path):
    with pytest.raises(CheckpointError, match="multiple-choice model .* the original Bort has no per-choice scorer"):
        export_gluon(BortForMultipleChoice(tiny_config()), tmp_path / "mc.params")
    with pytest.raises(CheckpointError, match=r"out\.bin: a Gluon checkpoint's file name must end in \.params"):
        export_gluon(BortModel(tiny_config()), tmp_path / "out.bin")
    assert list(tmp_path.iterdir()) == []


# --- the command ---------------------------------------------------------------------------------------------
def test_convert_infers_gluon_from_the_destination(tmp_path: Path, capsys: pytest.CaptureFixture):
    model = randomised(BortForMaskedLM(tiny_config()), seed=5)
    save_pretrained(model, tmp_path / "native")
    dest = tmp_path / "out" / "bort.params"
    assert main(["convert", str(tmp_path / "native"), str(dest)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "gluon" and report["task"] == "mlm" and report["original_preset"] is None
    arrays = read_params(dest)
    assert "decoder.3.bias" in arrays
    assert np.array_equal(arrays["decoder.3.bias"], model.lm_head.bias.detach().numpy())


def test_convert_refuses_a_dam_checkpoint_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture):
    save_pretrained(BortForMaskedLM(tiny_config(attention="dam_u")), tmp_path / "dam")
    dest = tmp_path / "out"
    assert main(["convert", str(tmp_path / "dam"), str(dest / "bort.params"), "--to", "gluon"]) == 2
    err = capsys.readouterr().err
    assert "bort convert: error: cannot export BortForMaskedLM to a Gluon .params file" in err
    assert "'dam_u' is a DAM learned attention mask" in err
    assert not dest.exists()


# --- the original code accepts it ------------------------------------------------------------------------------
ORIGINAL_SNIPPET = textwrap.dedent("""
    import json, sys
    import mxnet as mx, gluonnlp as nlp, numpy as np
    from bort import bort as original

    sizes, work = json.loads(sys.argv[1]), sys.argv[2]
    # The original builds only its presets: add one of the test's sizes (embedding width = units, as in both).
    original.predefined_borts["tiny"] = dict(
        original.bort_4_8_768_1024_hparams, num_layers=sizes["num_hidden_layers"], units=sizes["hidden_size"],
        embed_size=sizes["hidden_size"], hidden_size=sizes["intermediate_size"],
        num_heads=sizes["num_attention_heads"], max_length=sizes["max_position_embeddings"])
    # A local vocabulary of the right size instead of the model zoo's (4 special tokens + the rest).
    vocab = nlp.Vocab(nlp.data.count_tokens(["w%d" % i for i in range(sizes["vocab_size"] - 4)]))
    assert len(vocab) == sizes["vocab_size"]
    batch = np.load(work + "/batch.npz")
    inputs, valid = mx.nd.array(batch["input_ids"]), mx.nd.array(batch["valid_length"])
    out = {}

    def strict_load(net, name):  # no allow_missing / ignore_extra; then save it again for a byte comparison
        net.load_parameters(work + "/" + name + ".params")
        net.save_parameters(work + "/" + name + ".resaved.params")

    net, _ = original.get_bort_model("tiny", vocab=vocab, pretrained=False)
    strict_load(net, "mlm")
    seq, logits = net(inputs, valid, mx.nd.array(batch["masked_positions"]))
    out["mlm_sequence"], out["mlm_logits"] = seq.asnumpy(), logits.asnumpy()

    net, _ = original.get_bort_model("tiny", vocab=vocab, pretrained=False, use_decoder=False)
    strict_load(net, "encoder")
    out["encoder_sequence"] = net(inputs, valid).asnumpy()

    for name, classes in (("classification", 3), ("regression", 1)):
        bort, _ = original.get_bort_model("tiny", vocab=vocab, pretrained=False, use_decoder=False)
        net = original.BortClassifier(bort, num_classes=classes)  # finetune_bort.py's model, default dropout
        strict_load(net, name)
        out[name] = net(inputs, valid).asnumpy()

    arrays = np.load(work + "/arrays.npz")
    mx.nd.save(work + "/nd_save.params", {k: mx.nd.array(arrays[k], dtype=arrays[k].dtype) for k in arrays.files})
    np.savez(work + "/original.npz", **out)
""")


@pytest.fixture(scope="module")
def original_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.nn.Module], dict]:
    from original_bort import run_original

    work = tmp_path_factory.mktemp("gluon_export")
    models = {
        "mlm": randomised(BortForMaskedLM(tiny_config()), seed=10),
        "encoder": randomised(BortModel(tiny_config()), seed=11),
        "classification": randomised(BortForSequenceClassification(tiny_config(num_labels=3)), seed=12),
        "regression": randomised(BortForSequenceClassification(
            tiny_config(num_labels=1, problem_type="regression")), seed=13),
    }
    for name, model in models.items():
        export_gluon(model, work / f"{name}.params")
    rng = np.random.default_rng(0)
    valid = np.array([10, 6, 3])
    ids = rng.integers(0, SIZES["vocab_size"], size=(3, 10))
    ids[np.arange(10)[None, :] >= valid[:, None]] = 1  # padding
    batch = {"input_ids": ids.astype(np.float32), "valid_length": valid.astype(np.float32),
             "masked_positions": np.array([[0, 4, 9], [1, 2, 5], [0, 1, 2]], dtype=np.float32)}
    np.savez(work / "batch.npz", **batch)
    arrays = {"w": rng.standard_normal((3, 5)).astype(np.float32), "v": rng.standard_normal(7).astype(np.float32),
              "cube": rng.standard_normal((2, 1, 4)).astype(np.float32), "half": np.ones(3, np.float16),
              "ints": np.arange(6, dtype=np.int32).reshape(2, 3), "double": np.array([0.5, -1.0])}
    np.savez(work / "arrays.npz", **arrays)
    write_params(work / "ours_save.params", arrays)
    run_original(ORIGINAL_SNIPPET, work, json.dumps(SIZES), str(work))
    return work, models, batch


def _bound(reference: np.ndarray) -> float:
    return TOLERANCE * max(1.0, float(np.abs(reference).max()))


@pytest.mark.gluon
def test_original_mx_nd_save_writes_the_same_bytes(original_run):
    work, _, _ = original_run
    assert (work / "ours_save.params").read_bytes() == (work / "nd_save.params").read_bytes()


@pytest.mark.gluon
@pytest.mark.parametrize("name", ["mlm", "encoder", "classification", "regression"])
def test_original_loads_our_export_strictly_and_saves_the_same_bytes(original_run, name: str):
    work, _, _ = original_run
    assert (work / f"{name}.params").read_bytes() == (work / f"{name}.resaved.params").read_bytes()


@pytest.mark.gluon
def test_original_reproduces_our_outputs(original_run):
    work, models, batch = original_run
    ref = np.load(work / "original.npz")
    ids = torch.from_numpy(batch["input_ids"]).long()
    valid = torch.from_numpy(batch["valid_length"]).long()
    mask = (torch.arange(ids.shape[1])[None, :] < valid[:, None]).long()
    real = mask.bool().numpy()
    with torch.no_grad():
        mlm = models["mlm"](ids, attention_mask=mask,
                            masked_positions=torch.from_numpy(batch["masked_positions"]).long())
        encoder = models["encoder"](ids, attention_mask=mask)
        scores = {name: models[name](ids, attention_mask=mask).logits for name in ("classification", "regression")}
    deltas = {
        "mlm_sequence": (np.abs(mlm.last_hidden_state.numpy() - ref["mlm_sequence"])[real].max(),
                         _bound(ref["mlm_sequence"][real])),
        "mlm_logits": (np.abs(mlm.logits.numpy() - ref["mlm_logits"]).max(), _bound(ref["mlm_logits"])),
        "encoder_sequence": (np.abs(encoder.last_hidden_state.numpy() - ref["encoder_sequence"])[real].max(),
                             _bound(ref["encoder_sequence"][real])),
    }
    for name, logits in scores.items():
        assert logits.shape == ref[name].shape
        deltas[name] = (np.abs(logits.numpy() - ref[name]).max(), _bound(ref[name]))
    print("exported .params run by the original: " + ", ".join(f"{k} max|Δ| {d:.3g} (bound {b:.3g})"
                                                                for k, (d, b) in deltas.items()))
    assert float(np.abs(ref["mlm_logits"]).max()) > 1.0  # outputs of some size: the comparison means something
    for name, (delta, bound) in deltas.items():
        assert delta <= bound, f"{name}: max |Δ| {delta:.3g} > {bound:.3g}"
