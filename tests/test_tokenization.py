"""Tokenizer parity with independent implementations on real text, loaders, training, and error messages.

References: transformers' pure-Python BERT tokenizer (`BertTokenizerLegacy`, the former slow `BertTokenizer`)
for WordPiece; for byte-level BPE the pure-Python GPT-2 algorithm that transformers 5 keeps in
`ClvpTokenizer` (the slow `RobertaTokenizer` it used to share that code with is gone), with CLVP's English
normalizer switched off. `transformers.RobertaTokenizer` is only used for Hugging Face's pair layout.
"""
from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from bort.tokenization import (
    BPE,
    WORDPIECE,
    BortTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from bort.cli import add_tokenize_args, add_train_tokenizer_args, run_tokenize, run_train_tokenizer
from conftest import REPO, shared_path

SAMPLE_TEXT = REPO / "test_data" / "sample_text.txt"


# ------------------------------------------------------------------------------------------------ real text
def _sample_lines() -> list[str]:
    path = shared_path("data", "pretrain", "sample_text.txt")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sst2_sentences() -> list[str]:
    path = shared_path("data", "glue", "SST-2", "dev.tsv")
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [row.split("\t")[0] for row in rows if row.strip()]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    out = _sample_lines() + _sst2_sentences()[:200]
    assert len(out) >= 200
    return out


@pytest.fixture(scope="module")
def pairs(sentences) -> list[tuple[str, str]]:
    return list(zip(sentences[0::2], sentences[1::2]))[:100]


@pytest.fixture(scope="module")
def roberta() -> BortTokenizer:
    return load_tokenizer(shared_path("data", "vocab", "roberta-base"))


@pytest.fixture(scope="module")
def roberta_double() -> BortTokenizer:
    """The same vocabulary with Hugging Face's `<s> A </s></s> B </s>` pairs."""
    return load_tokenizer(shared_path("data", "vocab", "roberta-base"), roberta_pair_style=True)


def _legacy_bert(vocab: Path, lowercase: bool):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BertTokenizerLegacy(str(vocab), do_lower_case=lowercase)


def _python_gpt2_bpe(vocab_json: Path, merges: Path):
    """Pure-Python GPT-2 byte-level BPE: text -> ids."""
    try:
        from transformers.models.clvp.tokenization_clvp import ClvpTokenizer
    except ImportError:  # pragma: no cover - depends on the transformers release
        pytest.skip("transformers has no pure-Python byte-level BPE (ClvpTokenizer) to compare with")
    ref = ClvpTokenizer(str(vocab_json), str(merges))
    ref._normalizer = lambda text: text  # CLVP lowercases and spells numbers; GPT-2/RoBERTa do neither
    vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    return lambda text: [vocab[t] for t in ref._tokenize(text)]


# ------------------------------------------------------------------------------------------------ WordPiece
@pytest.mark.parametrize("name,lowercase", [("bert-base-uncased", True), ("bert-base-cased", False)])
def test_wordpiece_matches_python_bert(name, lowercase, sentences, pairs):
    vocab = shared_path("data", "vocab", name, "vocab.txt")
    ours = load_tokenizer(vocab)  # lowercase inferred from the vocabulary
    assert ours.kind == WORDPIECE and ours.lowercase is lowercase
    ref = _legacy_bert(vocab, lowercase)
    assert ours.vocab_size == len(ref.vocab)
    for text in sentences:
        assert ours.encode(text).ids == ref(text)["input_ids"], text
    for a, b in pairs:
        enc, want = ours.encode(a, b), ref(a, b, return_token_type_ids=True)
        assert enc.ids == want["input_ids"], (a, b)
        assert enc.token_type_ids == want["token_type_ids"]
    # Longest-first truncation keeps both segments, dropping from the longer one (ties: the second).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in pairs[:40]:
            want = ref(a, b, max_length=24, truncation="longest_first")["input_ids"]
            assert ours.encode(a, b, max_length=24).ids == want, (a, b)


def test_wordpiece_specials_and_lowercase_override():
    vocab = shared_path("data", "vocab", "bert-base-uncased", "vocab.txt")
    tok = load_tokenizer(vocab.parent)
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (
        101, 102, 0, 100, 103)
    assert tok.encode("the [MASK] sat").ids == [101, 1996, 103, 2938, 102]
    cased_view = load_tokenizer(vocab, lowercase=False)
    assert cased_view.lowercase is False
    assert cased_view.encode("Paris").ids != tok.encode("Paris").ids
    assert tok.decode(tok.encode("Hello, world!").ids) == "hello, world!"


def test_pair_truncation_budget():
    tok = load_tokenizer(shared_path("data", "vocab", "bert-base-uncased", "vocab.txt"))
    enc = tok.encode("a b c d e f g h i j", "k l", max_length=8)
    assert enc.tokens == ["[CLS]", "a", "b", "c", "[SEP]", "k", "l", "[SEP]"]
    assert len(tok.encode("a " * 50, max_length=10)) == 10
    assert len(tok.encode("a " * 50, max_length=10, truncation=False)) == 52
    with pytest.raises(ValueError, match="max_length"):
        tok.encode("a", "b", max_length=2)


# ------------------------------------------------------------------------------------------------ byte-level BPE
def test_bpe_matches_python_gpt2_bpe(roberta, sentences):
    vocab_dir = shared_path("data", "vocab", "roberta-base")
    ref = _python_gpt2_bpe(vocab_dir / "vocab.json", vocab_dir / "merges.txt")
    extra = ["Hello world! It's 2024,   naïve café 力加 🙂", " leading space", "tabs\tand\nnewlines  "]
    for text in sentences + extra:
        assert roberta.encode(text).ids == [0] + ref(text) + [2], text


def test_bpe_specials_and_pair_styles(roberta, roberta_double):
    assert roberta.kind == BPE and roberta.vocab_size == 50265
    assert (roberta.bos_token_id, roberta.pad_token_id, roberta.eos_token_id, roberta.unk_token_id,
            roberta.mask_token_id) == (0, 1, 2, 3, 50264)
    assert roberta.cls_token == "<s>" and roberta.sep_token == "</s>"
    a, b = "The cat sat.", "It was happy."
    ids_a, ids_b = roberta.tokenize(a), roberta.tokenize(b)
    bort = roberta.encode(a, b)
    # Bort / GluonNLP: <s> A </s> B </s>, one token type.
    assert bort.ids == [0] + [roberta.token_to_id(t) for t in ids_a] + [2] + \
        [roberta.token_to_id(t) for t in ids_b] + [2]
    assert set(bort.token_type_ids) == {0}
    vocab_dir = shared_path("data", "vocab", "roberta-base")
    hf_style = roberta_double
    from transformers import RobertaTokenizer

    hf = RobertaTokenizer(vocab=str(vocab_dir / "vocab.json"), merges=str(vocab_dir / "merges.txt"))
    assert hf_style.encode(a, b).ids == hf(a, b)["input_ids"]
    assert len(hf_style.encode(a, b)) == len(bort) + 1
    # "<mask>" in text is the mask id and takes the space before it (lstrip, as roberta-base's tokenizer.json).
    assert roberta.encode("Hello <mask> world").ids == [0, 31414, 50264, 232, 2]


def test_gpt2_file_naming(roberta):
    gpt2 = load_tokenizer(shared_path("data", "vocab", "gpt2-bpe"))  # encoder.json + vocab.bpe
    assert gpt2.vocab_size == 50257 and gpt2.eos_token_id == 50256 and gpt2.mask_token_id is None
    # Same merges as RoBERTa, different id layout: the subword strings agree, the ids do not.
    text = "Bort is a small BERT."
    assert gpt2.tokenize(text) == roberta.tokenize(text)
    assert gpt2.encode(text).ids[1:-1] == [gpt2.token_to_id(t) for t in roberta.tokenize(text)]
    assert gpt2.encode(text).ids[0] == 50256


# ------------------------------------------------------------------------------------------------ GluonNLP JSON
@pytest.mark.parametrize("layout", ["identifiers", "legacy"])
def test_gluonnlp_vocab_json(tmp_path, roberta, sentences, layout):
    """A vocab in the layout `gluonnlp.Vocab.to_json()` writes, over the RoBERTa BPE tokens (as Bort's)."""
    vocab_dir = shared_path("data", "vocab", "roberta-base")
    token_to_idx = json.loads((vocab_dir / "vocab.json").read_text("utf-8"))
    idx_to_token = sorted(token_to_idx, key=token_to_idx.get)
    data = {
        "idx_to_token": idx_to_token,
        "token_to_idx": token_to_idx,
        "reserved_tokens": ["<s>", "<pad>", "</s>", "<mask>"],
        "unknown_token": "<unk>",
    }
    if layout == "identifiers":  # GluonNLP >= 0.7
        data["identifiers_to_tokens"] = {"padding_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                                         "mask_token": "<mask>"}
    else:  # older files kept padding/bos/eos at the top level
        data.update(padding_token="<pad>", bos_token="<s>", eos_token="</s>", mask_token="<mask>")
    path = tmp_path / "bort.vocab.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(ValueError, match="merges"):  # no merges beside it and none given
        load_tokenizer(path)
    if layout == "identifiers":
        tok = load_tokenizer(path, merges=vocab_dir / "merges.txt")
    else:  # a merges file beside the JSON is found too
        shutil.copy(vocab_dir / "merges.txt", tmp_path / "merges.txt")
        tok = load_tokenizer(path)
    assert tok.kind == BPE and tok.vocab_size == 50265
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 50264)
    for text in sentences[:50]:
        assert tok.encode(text).ids == roberta.encode(text).ids


def test_gluonnlp_bert_vocab_json(tmp_path, sentences):
    """GluonNLP's BERTVocab JSON (WordPiece tokens, [CLS]/[SEP] roles) loads as WordPiece with BERT's ids."""
    vocab_txt = shared_path("data", "vocab", "bert-base-uncased", "vocab.txt")
    tokens = vocab_txt.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "book_corpus_wiki_en_uncased.vocab"
    path.write_text(json.dumps({
        "idx_to_token": tokens, "token_to_idx": {t: i for i, t in enumerate(tokens)},
        "reserved_tokens": ["[PAD]", "[CLS]", "[SEP]", "[MASK]"], "unknown_token": "[UNK]",
        "identifiers_to_tokens": {"padding_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                                  "mask_token": "[MASK]"},
    }), encoding="utf-8")
    tok, ref = load_tokenizer(tmp_path), load_tokenizer(vocab_txt)  # the directory's single *.vocab file
    assert tok.kind == WORDPIECE and tok.lowercase is True
    for a, b in zip(sentences[:20], sentences[20:40]):
        assert tok.encode(a, b).ids == ref.encode(a, b).ids


# ------------------------------------------------------------------------------------------------ batches
def test_encode_batch(roberta):
    texts = ["a short one", "a somewhat longer sentence than the first"]
    batch = roberta.encode_batch(texts)
    singles = [roberta.encode(t) for t in texts]
    width = max(len(e) for e in singles)
    assert batch["input_ids"].shape == (2, width) and batch["input_ids"].dtype == torch.long
    for row, enc in enumerate(singles):
        n = len(enc)
        assert batch["input_ids"][row, :n].tolist() == enc.ids
        assert batch["input_ids"][row, n:].eq(roberta.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    pairs = [("first a", "first b"), ("second a is longer", "b")]
    lists = roberta.encode_batch(pairs, max_length=6, return_tensors=None)
    assert lists["input_ids"] == [roberta.encode(a, b, max_length=6).ids for a, b in pairs]  # both fill 6
    fixed = roberta.encode_batch(texts, max_length=16, padding="max_length")
    assert fixed["input_ids"].shape == (2, 16)
    with pytest.raises(ValueError, match="padding"):
        roberta.encode_batch(texts, padding=False)
    assert [len(r) for r in roberta.encode_batch(texts, padding=False, return_tensors=None)["input_ids"]] == \
        [len(e) for e in singles]


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("kind,size", [(WORDPIECE, 300), (BPE, 400)])
def test_train_save_load_roundtrip(tmp_path, kind, size):
    lines = [line for line in SAMPLE_TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = tmp_path / kind
    tok = train_tokenizer([str(SAMPLE_TEXT)], kind, size, out, lowercase=True, min_frequency=2,
                          show_progress=False)
    assert (out / "tokenizer.json").is_file()
    files = ["vocab.txt"] if kind == WORDPIECE else ["vocab.json", "merges.txt"]
    assert all((out / f).is_file() for f in files)
    assert tok.vocab_size <= size
    if kind == WORDPIECE:
        assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == \
            [0, 1, 2, 3, 4]
        from_files = load_tokenizer(out / "vocab.txt", lowercase=True)
    else:
        assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
        assert tok.mask_token_id == tok.vocab_size - 1 == size - 1
        from_files = load_tokenizer((out / "vocab.json", out / "merges.txt"), lowercase=True)
    reloaded = load_tokenizer(out)
    for text in lines:
        enc = tok.encode(text)
        assert enc.ids[0] == tok.cls_token_id and enc.ids[-1] == tok.sep_token_id
        assert reloaded.encode(text).ids == enc.ids == from_files.encode(text).ids
        if kind == BPE:  # byte-level: every text comes back (lowercased)
            assert tok.decode(enc.ids) == text.lower()
    assert tok.unk_token_id not in tok.encode(lines[1]).ids


def test_saved_pair_style_survives(tmp_path, roberta_double):
    roberta_double.save(tmp_path / "double")
    reloaded = load_tokenizer(tmp_path / "double")  # from tokenizer.json, which declares the double separator
    assert reloaded.roberta_pair_style is True
    assert reloaded.encode("a", "b").ids == roberta_double.encode("a", "b").ids == [0, 102, 2, 2, 428, 2]


def test_cli_glue(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(SAMPLE_TEXT, corpus / "part1.txt")
    parser = argparse.ArgumentParser()
    add_train_tokenizer_args(parser)
    args = parser.parse_args([str(corpus / "*.txt"), "--kind", "wordpiece", "--vocab-size", "250",
                              "--output-dir", str(tmp_path / "tok"), "--no-lowercase", "--quiet"])
    assert args.lowercase is False and args.min_frequency == 2
    assert run_train_tokenizer(args) == 0
    assert (tmp_path / "tok" / "vocab.txt").is_file()
    tok = load_tokenizer(tmp_path / "tok")
    capsys.readouterr()

    parser = argparse.ArgumentParser()
    add_tokenize_args(parser)
    assert run_tokenize(parser.parse_args(["--vocab", str(tmp_path / "tok"), "The rain"])) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in tok.encode("The rain").ids]
    assert run_train_tokenizer(parser_for_missing(tmp_path)) == 2
    assert "no files match" in capsys.readouterr().err


def parser_for_missing(tmp_path: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_tokenizer_args(parser)
    return parser.parse_args([str(tmp_path / "nothing" / "*.txt"), "--output-dir", str(tmp_path / "x"), "--quiet"])


# ------------------------------------------------------------------------------------------------ broken files
def test_error_messages_name_the_file(tmp_path):
    listed = tmp_path / "vocab.json"
    listed.write_text('["<s>", "<pad>"]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json: expected a JSON object mapping token to id, got list"):
        load_tokenizer(listed)

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "vocab.json").write_text('{"<s>": 0, "</s>": 1}', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tokenizer(lonely)
    assert str(lonely / "merges.txt") in str(err.value)

    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": {"type": "BPE", "vocab": {', encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not valid JSON"):
        load_tokenizer(broken)

    unigram = tmp_path / "uni" / "tokenizer.json"
    unigram.parent.mkdir()
    unigram.write_text(json.dumps({"version": "1.0", "model": {"type": "Unigram", "vocab": [["<unk>", 0.0]],
                                                             "unk_id": 0}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json.*WordPiece or BPE.*Unigram"):
        load_tokenizer(unigram.parent)

    no_specials = tmp_path / "plain_vocab.txt"
    no_specials.write_text("the\nof\nand\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"plain_vocab\.txt.*\[CLS\]"):
        load_tokenizer(no_specials)

    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x80\x81\xfe\xff" * 16)
    with pytest.raises(ValueError, match=r"weights\.bin: expected UTF-8"):
        load_tokenizer(binary)

    bpe_dir = tmp_path / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "vocab.json").write_text('{"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5}',
                                        encoding="utf-8")
    (bpe_dir / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt: line 2"):
        load_tokenizer(bpe_dir)
    (bpe_dir / "merges.txt").write_text("#version: 0.2\na z\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json.*merges\.txt.*do not fit"):
        load_tokenizer(bpe_dir)

    gluon = tmp_path / "model.vocab"
    gluon.write_text(json.dumps({"idx_to_token": {"a": 0}, "unknown_token": "<unk>"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"model\.vocab.*idx_to_token"):
        load_tokenizer(gluon)

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_dir: no tokenizer found"):
        load_tokenizer(empty)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.txt")
