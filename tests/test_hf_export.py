"""Hugging Face round trip a user can rely on: `AutoTokenizer` gives our ids on the real GLUE dev sentences and
pairs, every head we train loads in the `AutoModelFor*` class that reproduces it, nothing random is left, and a
re-import gives back the same config. `transformers` is the independent reference here."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bort import BortConfig, load_pretrained, save_pretrained
from bort.checkpoint import read_checkpoint
from bort.cli import main
from bort.model import TASK_MODELS
from bort.tokenization import BORT_VOCABULARY, BortTokenizer, load_tokenizer

from conftest import shared_path
from hf_helpers import minilm_dir
from test_hf_parity import _inputs as padded_batch  # a padded batch with rows of 12, 8 and 5 tokens

transformers = pytest.importorskip("transformers")
TOL = 1e-5


# ============================================================================================== tokenizer
def _tsv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


@pytest.fixture(scope="module")
def glue_dev():
    sst2 = [row[0] for row in _tsv(shared_path("data", "glue", "SST-2", "dev.tsv"))]
    rte = [(row[1], row[2]) for row in _tsv(shared_path("data", "glue", "RTE", "dev.tsv"))]
    assert (len(sst2), len(rte)) == (872, 277)
    return sst2, rte


VOCABULARIES = {
    # name: (loader, the HF class the saved tokenizer_config.json must name, HF class AutoTokenizer builds)
    "bert-base-uncased": (lambda: load_tokenizer(shared_path("data", "vocab", "bert-base-uncased", "vocab.txt")),
                          "BertTokenizerFast"),
    "bert-base-cased": (lambda: load_tokenizer(shared_path("data", "vocab", "bert-base-cased", "vocab.txt")),
                        "BertTokenizerFast"),
    # Bort's own vocabulary and pair layout <s> A </s> B </s>: RobertaTokenizerFast would insert a second </s>
    "bort": (lambda: load_tokenizer(BORT_VOCABULARY), "PreTrainedTokenizerFast"),
    "roberta-base": (lambda: load_tokenizer(shared_path("data", "vocab", "roberta-base", "vocab.json"),
                                            roberta_pair_style=True), "RobertaTokenizerFast"),
}


@pytest.mark.parametrize("name", list(VOCABULARIES))
def test_autotokenizer_gives_our_ids_on_all_sst2_sentences_and_rte_pairs(name, glue_dev, tmp_path):
    sst2, rte = glue_dev
    loader, hf_class = VOCABULARIES[name]
    ours = loader()
    ours.save(tmp_path, model_max_length=512)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == hf_class
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))

    want = [ours.encode(text).ids for text in sst2]
    got = theirs(sst2)["input_ids"]
    same = sum(a == b for a, b in zip(want, got))
    assert same == 872, f"{872 - same} of 872 SST-2 sentences differ, first: {next(i for i in range(872) if want[i] != got[i])}"

    firsts, seconds = [a for a, _ in rte], [b for _, b in rte]
    want = [ours.encode(a, b).ids for a, b in rte]
    got = theirs(firsts, seconds)["input_ids"]
    assert sum(a == b for a, b in zip(want, got)) == 277
    # truncation of pairs (longest first) cuts the same tokens; RTE's premises are often longer than 64
    want = [ours.encode(a, b, max_length=64).ids for a, b in rte]
    got = theirs(firsts, seconds, truncation=True, max_length=64)["input_ids"]
    assert sum(len(w) == 64 for w in want) > 50, "the check must really truncate"
    assert sum(a == b for a, b in zip(want, got)) == 277


@pytest.mark.parametrize("name", ["bert-base-uncased", "bort"])
def test_padding_true_works_in_transformers_and_equals_ours(name, glue_dev, tmp_path):
    _, rte = glue_dev
    ours = VOCABULARIES[name][0]()
    ours.save(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (theirs.pad_token_id, theirs.cls_token_id, theirs.sep_token_id, theirs.mask_token_id) == \
        (ours.pad_token_id, ours.cls_token_id, ours.sep_token_id, ours.mask_token_id)
    firsts, seconds = [a for a, _ in rte[:16]], [b for _, b in rte[:16]]
    got = theirs(firsts, seconds, padding=True, return_tensors="pt")
    want = ours(firsts, seconds, padding=True, return_tensors="pt")
    assert len(set(want["attention_mask"].sum(1).tolist())) > 8, "rows of many lengths, so padding is exercised"
    for key in got:
        assert torch.equal(got[key], want[key]), key
    assert (got["input_ids"][got["attention_mask"] == 0] == ours.pad_token_id).all()


def test_saved_tokenizer_files_name_the_special_tokens(tmp_path):
    load_tokenizer(BORT_VOCABULARY).save(tmp_path, model_max_length=512)
    specials = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert specials == {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
                        "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 512 and config["pad_token"] == "<pad>"
    # and our own loader still reads the directory it wrote, pair layout included
    again = load_tokenizer(tmp_path)
    assert again.encode("a", "b").ids == load_tokenizer(BORT_VOCABULARY).encode("a", "b").ids


def test_bort_tokenizer_is_callable_the_hf_way():
    tok = load_tokenizer(minilm_dir() / "vocab.txt")
    one = tok("Hello world")
    assert one == {"input_ids": [101, 7592, 2088, 102], "attention_mask": [1, 1, 1, 1], "token_type_ids": [0] * 4}
    pair = tok("Hello world", "again", return_tensors="pt")
    assert pair["input_ids"].shape == (1, 6) and pair["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1]]
    batch = tok(["a b c d e f", "a"], ["x", "y"], padding="max_length", max_length=6, return_tensors="np")
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 1, 0]]
    assert tok(["a b c"], truncation=False, max_length=3)["input_ids"] == [[101, 1037, 1038, 1039, 102]]
    assert tok(["a b c"], max_length=3)["input_ids"] == [[101, 1037, 102]]  # max_length alone truncates, as HF
    with pytest.raises(ValueError, match="text has 2 entries but text_pair has 1"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="truncation must be"):
        tok("a", truncation="only_second", max_length=4)
    with pytest.raises(TypeError, match="text_pair must be a list"):
        tok(["a"], "b")
    with pytest.raises(ValueError, match="rows differ in length"):
        tok(["a", "a b"], return_tensors="pt")


# ============================================================================================== models
def _bort_config(**overrides) -> BortConfig:
    return BortConfig.preset("bort_4_8_768_1024", vocab_size=101, hidden_size=32, num_attention_heads=4,
                             intermediate_size=24, num_hidden_layers=2, max_position_embeddings=30, **overrides)


def _randomise(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


HEADS = {
    # task: (HF auto class, our config overrides)
    "mlm": ("AutoModelForMaskedLM", {}),
    "classification": ("AutoModelForSequenceClassification", {"num_labels": 3}),
    "regression": ("AutoModelForSequenceClassification", {"num_labels": 1, "problem_type": "regression"}),
    "multiple_choice": ("AutoModelForMultipleChoice", {}),
}


def _outputs(model, ids, mask, task):
    with torch.no_grad():
        if task == "multiple_choice":  # (batch 2, choices 3, seq)
            ids, mask = ids.view(1, 3, -1).repeat(2, 1, 1), mask.view(1, 3, -1).repeat(2, 1, 1)
        return model(input_ids=ids, attention_mask=mask).logits, mask


@pytest.mark.parametrize("shape", ["bort", "roberta"])
@pytest.mark.parametrize("task", list(HEADS))
def test_every_head_exports_to_the_auto_class_that_reproduces_it(task, shape, tmp_path):
    auto_class, overrides = HEADS[task]
    if shape == "roberta":  # positions from pad + 1, no pooler: RoBERTa's layout with Bort's head
        overrides = {**overrides, "position_offset": 2, "embedding_style": "bert"}
    cfg = _bort_config(**overrides)
    ours = _randomise(TASK_MODELS[task](cfg))
    save_pretrained(ours, tmp_path, format="hf")

    theirs, info = getattr(transformers, auto_class).from_pretrained(str(tmp_path), output_loading_info=True)
    assert info["missing_keys"] in ([], set()), f"HF initialised these randomly: {info['missing_keys']}"
    expected_arch = ("Bert" if shape == "bort" else "Roberta") + {
        "mlm": "ForMaskedLM", "classification": "ForSequenceClassification",
        "regression": "ForSequenceClassification", "multiple_choice": "ForMultipleChoice"}[task]
    assert type(theirs).__name__ == expected_arch
    ids, mask = padded_batch(vocab=101)
    want, real = _outputs(ours, ids, mask, task)
    got, _ = _outputs(theirs.eval(), ids, mask, task)
    assert got.shape == want.shape
    diff = ((got - want)[real.bool()] if task == "mlm" else got - want).abs().max().item()
    assert diff <= TOL, f"max |Δ logits| {diff:.2e}"

    # re-import: the same config (type_vocab_size 0, no pooler of our own), the same weights, the same head
    cfg_back, _, saved_task = read_checkpoint(tmp_path)
    assert cfg_back == ours.config
    assert saved_task == task
    back = load_pretrained(tmp_path, task=task, strict_heads=True)
    assert back.config.type_vocab_size == 0 and back.config.add_pooler is False
    assert back.state_dict().keys() == ours.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_bert_classifier_with_pooler_round_trips_unchanged(tmp_path):
    cfg = BortConfig.preset("bert-base", vocab_size=97, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                            num_hidden_layers=2, max_position_embeddings=40, num_labels=3)
    ours = _randomise(TASK_MODELS["classification"](cfg))
    save_pretrained(ours, tmp_path, format="hf")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    ids, mask = padded_batch(vocab=97, pad=0)
    assert (_outputs(ours, ids, mask, "classification")[0] - _outputs(theirs, ids, mask, "classification")[0]) \
        .abs().max().item() <= TOL
    assert read_checkpoint(tmp_path)[0] == cfg


def test_encoder_without_pooler_loads_in_automodel_with_add_pooling_layer_false(tmp_path):
    ours = _randomise(TASK_MODELS[None](_bort_config()))
    save_pretrained(ours, tmp_path, format="hf")
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as weights:
        assert not any("pooler" in k for k in weights.keys()), "no pooler is invented on export"
    # AutoModel always builds BERT's pooler: it reports it missing (random), and add_pooling_layer=False
    # loads exactly what was exported
    _, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    theirs, info = transformers.AutoModel.from_pretrained(str(tmp_path), add_pooling_layer=False,
                                                          output_loading_info=True)
    assert not info["missing_keys"] and theirs.pooler is None
    ids, mask = padded_batch(vocab=101)
    with torch.no_grad():
        diff = (ours(ids, mask).last_hidden_state - theirs.eval()(input_ids=ids, attention_mask=mask)
                .last_hidden_state)[mask.bool()].abs().max().item()
    assert diff <= TOL
    assert read_checkpoint(tmp_path)[0] == ours.config


# ============================================================================================== convert
def _bort_classifier_with_tokenizer(directory: Path) -> BortTokenizer:
    tokenizer = load_tokenizer(BORT_VOCABULARY)
    cfg = BortConfig.preset("bort_4_8_768_1024", vocab_size=tokenizer.vocab_size, hidden_size=32,
                            num_attention_heads=4, intermediate_size=24, num_hidden_layers=2,
                            max_position_embeddings=64, num_labels=2)
    save_pretrained(_randomise(TASK_MODELS["classification"](cfg)), directory)
    tokenizer.save(directory)  # what a fine-tuning run leaves in best/
    return tokenizer


def test_convert_carries_the_tokenizer_of_a_finetuned_model_to_hf(tmp_path, capsys):
    tokenizer = _bort_classifier_with_tokenizer(tmp_path / "best")
    assert main(["convert", str(tmp_path / "best"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "classification" and report["tokenizer"] == "PreTrainedTokenizerFast"
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert len(theirs) == tokenizer.vocab_size, "not a stand-in vocabulary"
    sentences = ["hello world", "it 's a charming and often affecting journey . "]
    batch = theirs(sentences, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist()[0][:4] == tokenizer.encode("hello world").ids
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    ours = load_pretrained(tmp_path / "best", task="classification")
    with torch.no_grad():
        diff = (model(**batch).logits - ours(**tokenizer(sentences, padding=True, return_tensors="pt")).logits)
    assert diff.abs().max().item() <= TOL
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["model_max_length"] == 64
    # and from the HF export back to native: the tokenizer comes along again
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "native")]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "classification"
    assert load_tokenizer(tmp_path / "native").encode("hello world").ids == tokenizer.encode("hello world").ids


def test_convert_of_an_hf_directory_carries_its_tokenizer(tmp_path, capsys):
    assert main(["convert", str(minilm_dir()), str(tmp_path / "out"), "--to", "hf"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"] == "BertTokenizerFast"
    want = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    got = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = ["Hello world, naïve café!", "Bort is small."]
    assert got(text, padding=True)["input_ids"] == want(text, padding=True)["input_ids"]


def test_convert_refuses_a_tokenizer_larger_than_the_model_before_writing(tmp_path, capsys):
    cfg = _bort_config()  # 101 ids
    save_pretrained(TASK_MODELS[None](cfg), tmp_path / "src")
    load_tokenizer(BORT_VOCABULARY).save(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer has 50265 ids but the model's vocab_size is 101" in err and str(tmp_path / "src") in err
    assert not (tmp_path / "hf").exists()


def test_convert_reports_no_tokenizer_when_the_source_has_none(tmp_path, capsys):
    save_pretrained(TASK_MODELS[None](_bort_config()), tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"] is None
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]


def test_convert_refuses_a_broken_tokenizer_beside_the_checkpoint(tmp_path, capsys):
    save_pretrained(TASK_MODELS[None](_bort_config()), tmp_path / "src")
    (tmp_path / "src" / "tokenizer.json").write_text('{"model": ')
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the tokenizer" in err and str(tmp_path / "src" / "tokenizer.json") in err
    assert not (tmp_path / "hf").exists()
