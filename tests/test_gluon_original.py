"""The ORIGINAL Bort's checkpoints load exactly: GluonNLP 0.8.3 numerics and finetune_bort.py's classifiers.

The side-venv tests build tiny models with the original code itself (`../shared/reference/alexa-bort`,
`bort.bort.get_bort_model` and `BortClassifier` on MXNet 1.9.1 + GluonNLP 0.8.3, see `original_bort.py`),
save them as the original does (`save_parameters`), run a padded batch there, and compare with what
`load_pretrained` makes of the files: max |Δ| <= 1e-5 * max(1, max |reference|), float32.
The other tests check the fine-tuned name layout and the errors on files of neither layout without MXNet.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bort import BortConfig, load_pretrained, save_pretrained
from bort.checkpoint import read_checkpoint
from bort.checkpoint.errors import CheckpointError
from bort.checkpoint.gluon import GLUONNLP_083_DECODER_LAYER_NORM_EPS, expected_gluon_names
from original_bort import run_original
from test_gluon_params import bort_like_params, encode_array, encode_file

# Units 64 with 8 heads (the Bort preset's head count, which no shape reveals), so that every file below loads
# with no config at all, as a user's bort.params or fine-tuned file would.
SPEC = {"layers": 2, "units": 64, "ffn": 48, "heads": 8, "vocab": 100, "max_length": 32}
BATCH, SEQ, MASKED = 3, 12, 4
# (file stem, num_classes, dropout of BortClassifier): MNLI-like, RACE (4-way over one sequence, as the original
# scores it) and STS-B (regression: one output, built with --dropout 0, so the Dense layers are children 0 and 1).
FINETUNED = [("mnli", 3, 0.1), ("race", 4, 0.1), ("stsb", 1, 0.0)]

# Runs in the side venv. It builds the models through the original's own entry points; the only liberty taken
# is registering a tiny size under a new name, since get_bort_model builds predefined sizes only.
ORIGINAL = r'''
import json, sys
import mxnet as mx
import numpy as np
import gluonnlp as nlp
from bort import bort as original

out, spec, finetuned = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
TINY = dict(original.bort_4_8_768_1024_hparams, num_layers=spec["layers"], units=spec["units"],
            hidden_size=spec["ffn"], max_length=spec["max_length"], num_heads=spec["heads"], embed_size=spec["units"])


def get_tiny_bort(**kwargs):
    # get_bort_model writes its keyword arguments into the predefined dict, and refuses them there on a
    # second call: a fresh copy per call.
    original.predefined_borts["bort_tiny"] = dict(TINY)
    return original.get_bort_model("bort_tiny", dataset_name=None, vocab=vocab, pretrained=False, **kwargs)[0]


# A local vocabulary of the right size instead of the model zoo's download (4 special tokens + words).
vocab = nlp.Vocab(nlp.data.count_tokens(["w%d" % i for i in range(spec["vocab"] - 4)]), unknown_token="<unk>",
                  padding_token="<pad>", bos_token="<s>", eos_token="</s>")
assert len(vocab) == spec["vocab"], len(vocab)
batch = np.load(out + "/batch.npz")
ids, valid = mx.nd.array(batch["input_ids"]), mx.nd.array(batch["valid_length"])
positions = mx.nd.array(batch["masked_positions"])
rng = np.random.RandomState(0)


def randomise(block, *inputs, decoder_std=None):
    """Non-trivial values everywhere; with decoder_std the MLM decoder's Dense is made small, so that the
    decoder LayerNorm's input variance is ~1e-4 and its epsilon shows in the logits."""
    block.initialize(mx.init.Zero())
    block(*inputs)  # Dense input sizes are deferred until a first forward pass fixes them
    for name, param in block._collect_params_with_prefix().items():  # the names save_parameters writes
        shape = param.shape
        if name.endswith("gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith("beta") or name.endswith("bias"):
            value = 0.1 * rng.standard_normal(shape)
        elif name.endswith("position_weight") or "embed" in name or name.endswith("decoder.3.weight"):
            value = 0.3 * rng.standard_normal(shape)
        else:  # Dense weights, (out, in): activations near unit scale
            value = rng.standard_normal(shape) / np.sqrt(shape[-1])
        if decoder_std is not None and name.endswith("decoder.0.weight"):
            value = decoder_std * rng.standard_normal(shape) / np.sqrt(shape[-1])
        elif decoder_std is not None and name.endswith("decoder.0.bias"):
            value = 0.25 * decoder_std * rng.standard_normal(shape)
        param.set_data(mx.nd.array(value.astype(np.float32)))


results = {}
net = get_tiny_bort(use_decoder=True)
randomise(net, ids, valid, positions, decoder_std=0.02)
sequence, logits = net(ids, valid, positions)  # outside autograd.record(): inference mode, no dropout
net.save_parameters(out + "/bort.params")
results["sequence_output"], results["mlm_logits"] = sequence.asnumpy(), logits.asnumpy()

for stem, classes, dropout in finetuned:
    # As finetune_bort.py's load_and_setup_model builds it; its nlp.utils.save_parameters is save_parameters.
    encoder = get_tiny_bort(use_pooler=True, use_decoder=False, use_classifier=False)
    model = original.BortClassifier(encoder, dropout=dropout, num_classes=classes)
    randomise(model, ids, valid)
    results[stem] = model(ids, valid).asnumpy()
    model.save_parameters(out + "/" + stem + ".params")
np.savez(out + "/reference.npz", **results)
print(json.dumps({"mxnet": mx.__version__, "gluonnlp": nlp.__version__}))
'''


def _batch(rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """A right-padded batch (one full row, two shorter), masked positions on real tokens only."""
    lengths = np.array([SEQ, 7, 2], dtype=np.int64)
    ids = rng.randint(4, SPEC["vocab"], size=(BATCH, SEQ)).astype(np.int64)
    ids[:, 0] = 2  # <s> in this vocabulary
    for row, length in enumerate(lengths):
        ids[row, length:] = 1  # <pad>
    positions = np.stack([rng.choice(length, size=MASKED, replace=length < MASKED) for length in lengths])
    return {"input_ids": ids, "valid_length": lengths, "masked_positions": positions.astype(np.int64)}


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("original_bort")
    np.savez(out / "batch.npz", **_batch(np.random.RandomState(1)))
    result = run_original(ORIGINAL, out, str(out), json.dumps(SPEC), json.dumps(FINETUNED))
    versions = json.loads(result.stdout.strip().splitlines()[-1])
    assert versions["gluonnlp"] == "0.8.3", versions
    return out


def _inputs(out: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = np.load(out / "batch.npz")
    ids = torch.from_numpy(batch["input_ids"])
    mask = (torch.arange(SEQ)[None, :] < torch.from_numpy(batch["valid_length"])[:, None]).long()
    assert not bool(mask.all()), "the batch must contain padding"
    return ids, mask, torch.from_numpy(batch["masked_positions"])


def _bound(reference: np.ndarray) -> float:
    return 1e-5 * max(1.0, float(np.abs(reference).max()))


@pytest.mark.gluon
def test_gluonnlp_083_bort_matches_the_original(original: Path):
    ref = np.load(original / "reference.npz")
    ids, mask, positions = _inputs(original)
    model = load_pretrained(original / "bort.params", task="mlm")  # no config: sizes from shapes, 0.8.3 numerics
    assert model.config.decoder_layer_norm_eps == GLUONNLP_083_DECODER_LAYER_NORM_EPS == 1e-12
    assert model.config.layer_norm_eps == 1e-5
    variances = []
    hook = model.lm_head.layer_norm.register_forward_pre_hook(
        lambda _module, args: variances.append(args[0].var(dim=-1, unbiased=False)))
    with torch.no_grad():
        out = model(ids, attention_mask=mask, masked_positions=positions)
    hook.remove()
    # The regime where the epsilon matters: the decoder LayerNorm's input variance is ~1e-4.
    assert 1e-5 < float(variances[0].mean()) < 1e-3, float(variances[0].mean())

    real = mask.bool().numpy()
    hidden = out.last_hidden_state.numpy()
    assert hidden.dtype == np.float32 and hidden.shape == ref["sequence_output"].shape
    hidden_delta = float(np.abs(hidden - ref["sequence_output"])[real].max())
    # The original zeroes padded positions of its output (SequenceMask); ours leaves them (docs/gluon.md).
    assert not ref["sequence_output"][~real].any()
    logits = out.logits.numpy()
    assert logits.shape == ref["mlm_logits"].shape == (BATCH, MASKED, SPEC["vocab"])
    logits_delta = float(np.abs(logits - ref["mlm_logits"]).max())
    print(f"GluonNLP 0.8.3 parity: max |Δ| hidden {hidden_delta:.3g}, logits {logits_delta:.3g} "
          f"(max |logit| {np.abs(ref['mlm_logits']).max():.3g})")
    assert hidden_delta <= _bound(ref["sequence_output"][real])
    assert logits_delta <= _bound(ref["mlm_logits"])


@pytest.mark.gluon
def test_gluonnlp_0100_decoder_epsilon_would_fail_the_bound(original: Path):
    """The same file read with GluonNLP 0.10.0's decoder epsilon (the encoder's 1e-5) misses the bound: the
    test above can tell the two apart."""
    ref = np.load(original / "reference.npz")
    ids, mask, positions = _inputs(original)
    cfg = BortConfig.preset("bort_4_8_768_1024", num_hidden_layers=SPEC["layers"], hidden_size=SPEC["units"],
                            intermediate_size=SPEC["ffn"], vocab_size=SPEC["vocab"],
                            max_position_embeddings=SPEC["max_length"], decoder_layer_norm_eps=1e-5)
    model = load_pretrained(original / "bort.params", config=cfg, task="mlm")
    assert model.config.decoder_layer_norm_eps == 1e-5  # an explicit value is kept
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, masked_positions=positions).logits.numpy()
    delta = float(np.abs(logits - ref["mlm_logits"]).max())
    print(f"with 0.10.0's decoder epsilon 1e-5: max |Δ| logits {delta:.3g} (bound {_bound(ref['mlm_logits']):.3g})")
    assert delta > 10 * _bound(ref["mlm_logits"]), delta


@pytest.mark.gluon
@pytest.mark.parametrize("stem, classes, dropout", FINETUNED)
def test_finetuned_classifier_matches_the_original(original: Path, stem: str, classes: int, dropout: float):
    ref = np.load(original / "reference.npz")[stem]
    ids, mask, _ = _inputs(original)
    path = original / f"{stem}.params"
    cfg, state, saved_task = read_checkpoint(path)
    assert saved_task == ("regression" if classes == 1 else "classification")
    assert cfg.num_labels == classes and (cfg.problem_type == "regression") == (classes == 1)
    assert {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
            "classifier.out_proj.bias"} <= set(state)
    model = load_pretrained(path, task=saved_task, strict_heads=True)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits.numpy()
    assert logits.shape == ref.shape == (BATCH, classes)
    delta = float(np.abs(logits - ref).max())
    print(f"{stem} ({classes} outputs, dropout {dropout}): max |Δ| logits {delta:.3g}")
    assert delta <= _bound(ref)


@pytest.mark.gluon
@pytest.mark.parametrize("stem, task, formats", [("bort", "mlm", ("native", "hf")),
                                                 # HF has no head of this shape (dense+tanh on the first token)
                                                 ("mnli", "classification", ("native",))])
def test_loaded_numerics_round_trip_through_our_formats(original: Path, tmp_path: Path, stem: str, task: str,
                                                        formats: tuple[str, ...]):
    """Loaded once, a file's numerics (the 0.8.3 decoder epsilon, the labels) survive native and HF saves."""
    model = load_pretrained(original / f"{stem}.params", task=task)
    ids, mask, positions = _inputs(original)
    kwargs = {"masked_positions": positions} if task == "mlm" else {}
    for fmt in formats:
        save_pretrained(model, tmp_path / fmt, format=fmt)
        back = load_pretrained(tmp_path / fmt, task=task)
        assert back.config.decoder_layer_norm_eps == 1e-12, fmt
        assert back.config.num_labels == model.config.num_labels, fmt
        with torch.no_grad():
            assert torch.equal(back(ids, attention_mask=mask, **kwargs).logits,
                               model(ids, attention_mask=mask, **kwargs).logits), fmt


# --- without MXNet: the fine-tuned layout and files of neither layout -------------------------------------------
def _write(path: Path, params: dict[str, np.ndarray]) -> Path:
    path.write_bytes(encode_file([encode_array(a) for a in params.values()], list(params)))
    return path


def _finetuned(head_indices: tuple[int, int] = (1, 3), classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    params = {"bort." + name: array for name, array in bort_like_params().items() if not name.startswith("decoder")}
    first, last = head_indices
    params.update({f"classifier.{first}.weight": rng.standard_normal((8, 8)).astype(np.float32),
                   f"classifier.{first}.bias": rng.standard_normal(8).astype(np.float32),
                   f"classifier.{last}.weight": rng.standard_normal((classes, 8)).astype(np.float32),
                   f"classifier.{last}.bias": rng.standard_normal(classes).astype(np.float32)})
    return params


@pytest.mark.parametrize("indices", [(1, 3), (0, 1)])
def test_finetuned_layout_maps_onto_our_head(tmp_path: Path, indices: tuple[int, int]):
    params = _finetuned(indices)
    path = _write(tmp_path / "model_bort_MNLI_0.params", params)
    model = load_pretrained(path, config={"preset": "bort_4_8_768_1024", "hidden_size": 8, "num_attention_heads": 2,
                                          "intermediate_size": 6, "vocab_size": 10, "max_position_embeddings": 16,
                                          "num_hidden_layers": 2}, task="classification", strict_heads=True)
    assert model.config.num_labels == 3  # from the file, over the preset's 2
    first, last = indices
    assert np.array_equal(model.classifier.dense.weight.detach().numpy(), params[f"classifier.{first}.weight"])
    assert np.array_equal(model.classifier.out_proj.bias.detach().numpy(), params[f"classifier.{last}.bias"])
    assert np.array_equal(model.bort.encoder.layer[1].output.LayerNorm.bias.detach().numpy(),
                          params["bort.encoder.transformer_cells.1.ffn.layer_norm.beta"])


def test_names_of_neither_layout_are_listed_with_the_nearest_expected_ones(tmp_path: Path):
    params = _finetuned()
    params["bort.encoder.transformer_cells.0.ffn.ffn1.weight"] = params.pop(
        "bort.encoder.transformer_cells.0.ffn.ffn_1.weight")  # a renamed layer
    params["bert.word_embed.0.weight"] = params["bort.word_embed.0.weight"]  # a foreign prefix
    path = _write(tmp_path / "odd.params", params)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: 2 Gluon parameter name(s) not understood for a 2-layer Bort/BERT model: "
                              "bert.word_embed.0.weight, bort.encoder.transformer_cells.0.ffn.ffn1.weight. ")
    assert "match neither the pretrained layout" in message and "this file looks fine-tuned" in message
    assert ("bort.encoder.transformer_cells.0.ffn.ffn1.weight → bort.encoder.transformer_cells.0.ffn.ffn_1.weight"
            in message)
    assert "bert.word_embed.0.weight → bort.word_embed.0.weight" in message


def test_a_name_with_nothing_close_says_so(tmp_path: Path):
    params = bort_like_params()
    params["optimizer_state_7"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"this file looks pretrained\. Nearest expected names: "
                                              r"optimizer_state_7 → nothing close$"):
        read_checkpoint(_write(tmp_path / "x.params", params))


@pytest.mark.parametrize("head, message", [
    ({"classifier.1.weight": (8, 8), "classifier.2.weight": (3, 8)},
     r"classifier layers at child indices 1, 2: expected the two Dense layers of the original BortClassifier"),
    ({"classifier.1.weight": (8, 8), "classifier.1.bias": (8,), "classifier.3.weight": (3, 8)},
     r"classifier\.3\.bias is missing: the BortClassifier head \(dropout > 0\) needs"),
])
def test_malformed_classifier_head_is_refused_by_name(tmp_path: Path, head: dict, message: str):
    params = {n: a for n, a in _finetuned().items() if n.startswith("bort.")}
    params.update({name: np.ones(shape, np.float32) for name, shape in head.items()})
    path = _write(tmp_path / "head.params", params)
    with pytest.raises(CheckpointError, match=rf"^{path}: {message}"):
        read_checkpoint(path)


def test_expected_names_cover_both_layouts():
    pretrained, finetuned = expected_gluon_names(2, False), expected_gluon_names(2, True)
    assert set(bort_like_params()) <= set(pretrained)
    assert {"bort.word_embed.0.weight", "classifier.0.weight", "classifier.3.bias"} <= set(finetuned)
    assert not any(name.startswith("bort.") for name in pretrained)


def test_decoder_epsilon_field_is_validated_and_defaults_to_the_encoder_one():
    cfg = BortConfig.preset("bort_4_8_768_1024", hidden_size=16, num_attention_heads=2, intermediate_size=8,
                            vocab_size=20, num_hidden_layers=1)
    from bort import BortForMaskedLM

    assert cfg.decoder_layer_norm_eps is None and BortForMaskedLM(cfg).lm_head.layer_norm.eps == 1e-5
    import dataclasses

    explicit = dataclasses.replace(cfg, decoder_layer_norm_eps=1e-12)
    assert BortForMaskedLM(explicit).lm_head.layer_norm.eps == 1e-12
    with pytest.raises(ValueError, match=r"decoder_layer_norm_eps must be in \(0, 1\], got 0 "
                                         r"\(or null for layer_norm_eps\)"):
        dataclasses.replace(cfg, decoder_layer_norm_eps=0)
    with pytest.raises(ValueError, match=r"decoder_layer_norm_eps must be a number"):
        BortConfig.from_dict({**cfg.to_dict(), "decoder_layer_norm_eps": "1e-12"})


def test_a_four_way_race_classifier_is_not_our_multiple_choice_head(tmp_path: Path):
    """The original scores RACE as one 4-way classification; our multiple-choice head has one output per choice."""
    path = _write(tmp_path / "model_bort_RACE-H_0.params", _finetuned(classes=4))
    config = {"preset": "bort_4_8_768_1024", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 6,
              "vocab_size": 10, "max_position_embeddings": 16, "num_hidden_layers": 2}
    with pytest.raises(CheckpointError, match=rf"^{path}: 2 parameter\(s\) do not fit the config:\n"
                                              r"  classifier\.out_proj\.weight: checkpoint \(4, 8\) vs model \(1, 8\)"):
        load_pretrained(path, config=config, task="multiple_choice")
    assert load_pretrained(path, config=config, task="classification").config.num_labels == 4
