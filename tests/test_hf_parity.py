"""Parity with Hugging Face `transformers` (an independent implementation) on real and random weights."""
from __future__ import annotations

import pytest
import torch

from bort import BortConfig, BortForMaskedLM, load_pretrained, save_pretrained

from hf_helpers import minilm_dir, real_sentences

transformers = pytest.importorskip("transformers")
TOL = 1e-5


def _real_batch(directory, count=10):
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    batch = tok(real_sentences(count), padding=True, truncation=True, max_length=128, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= min(5, count), "the batch must mix lengths so padding is exercised"
    return batch


def _max_diff_on_real_tokens(a, b, mask):
    return (a - b)[mask.bool()].abs().max().item()


@pytest.fixture(scope="module")
def minilm():
    directory = minilm_dir()
    ours = load_pretrained(directory)
    ref = transformers.BertModel.from_pretrained(str(directory), attn_implementation="eager").eval()
    return directory, ours, ref


def test_real_minilm_matches_transformers_on_padded_real_sentences(minilm):
    directory, ours, ref = minilm
    batch = _real_batch(directory)
    with torch.no_grad():
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        want = ref(**batch)
    diff = _max_diff_on_real_tokens(got.last_hidden_state, want.last_hidden_state, batch["attention_mask"])
    assert diff <= TOL, f"max |Δ last_hidden_state| {diff:.2e}"
    assert (got.pooler_output - want.pooler_output).abs().max().item() <= TOL


def test_exported_checkpoint_reloads_in_transformers(minilm, tmp_path):
    directory, ours, _ = minilm
    save_pretrained(ours, tmp_path / "hf", format="hf")
    reloaded = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    batch = _real_batch(directory)
    with torch.no_grad():
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).last_hidden_state
        want = reloaded(**batch).last_hidden_state
    assert _max_diff_on_real_tokens(got, want, batch["attention_mask"]) <= TOL
    ours_again = load_pretrained(tmp_path / "hf")
    for (k, a), (_, b) in zip(ours.state_dict().items(), ours_again.state_dict().items()):
        assert torch.equal(a, b), k


def _tiny_hf(kind: str):
    common = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "bert":
        return transformers.BertConfig(type_vocab_size=2, **common)
    return transformers.RobertaConfig(type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5, **common)


def _randomise(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _inputs(vocab=97, batch=3, n=12, seed=1, pad=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, n), generator=gen)
    mask = torch.ones(batch, n, dtype=torch.long)
    for row, length in enumerate([n, n - 4, 5][:batch]):
        mask[row, length:] = 0
        ids[row, length:] = pad
    return ids, mask


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_masked_lm_matches_transformers(kind, tmp_path):
    hf_cls = transformers.BertForMaskedLM if kind == "bert" else transformers.RobertaForMaskedLM
    ref = _randomise(hf_cls(_tiny_hf(kind))).eval()
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, task="mlm", strict_heads=True)
    assert ours.config.position_offset == (2 if kind == "roberta" else 0)
    ids, mask = _inputs(pad=1 if kind == "roberta" else 0)
    positions = torch.tensor([[1, 5, 0], [2, 7, 3], [4, 1, 2]])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        full = ours(ids, mask).logits
        at = ours(ids, mask, masked_positions=positions).logits
    real = mask.bool()
    assert (full - want)[real].abs().max().item() <= TOL
    assert at.shape == (3, 3, 97)
    assert torch.allclose(at, torch.stack([full[b, positions[b]] for b in range(3)]), atol=TOL)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_classification_and_regression_heads_match_transformers(kind, tmp_path):
    hf_cls = transformers.BertForSequenceClassification if kind == "bert" else transformers.RobertaForSequenceClassification
    for num_labels in (3, 1):
        cfg = _tiny_hf(kind)
        cfg.num_labels = num_labels
        ref = _randomise(hf_cls(cfg)).eval()
        ref.save_pretrained(tmp_path / str(num_labels))
        task = "classification" if num_labels > 1 else "regression"
        ours = load_pretrained(tmp_path / str(num_labels), task=task, strict_heads=True)
        ids, mask = _inputs(pad=1 if kind == "roberta" else 0)
        labels = torch.tensor([0, 2, 1]) if num_labels > 1 else torch.tensor([0.5, -1.0, 2.0])
        with torch.no_grad():
            want = ref(input_ids=ids, attention_mask=mask, labels=labels)
            got = ours(ids, mask, labels=labels)
        assert (got.logits - want.logits).abs().max().item() <= TOL
        assert abs(got.loss.item() - want.loss.item()) <= 1e-4


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_multiple_choice_matches_transformers(kind, tmp_path):
    hf_cls = transformers.BertForMultipleChoice if kind == "bert" else transformers.RobertaForMultipleChoice
    ref = _randomise(hf_cls(_tiny_hf(kind))).eval()
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, task="multiple_choice", strict_heads=True)
    ids, mask = _inputs(batch=3, pad=1 if kind == "roberta" else 0)
    ids, mask = ids.view(1, 3, -1).repeat(2, 1, 1), mask.view(1, 3, -1).repeat(2, 1, 1)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 2]))
        got = ours(ids, mask, labels=torch.tensor([1, 2]))
    assert got.logits.shape == (2, 3)
    assert (got.logits - want.logits).abs().max().item() <= TOL
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5


def test_bort_shaped_model_exports_to_transformers_masked_lm(tmp_path):
    cfg = BortConfig.preset("bort_4_8_768_1024", vocab_size=101, hidden_size=32, num_attention_heads=4,
                            intermediate_size=24, num_hidden_layers=2, max_position_embeddings=30)
    ours = _randomise(BortForMaskedLM(cfg)).eval()
    save_pretrained(ours, tmp_path, format="hf")
    ref = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path)).eval()
    ids, mask = _inputs(vocab=101, pad=1)
    with torch.no_grad():
        diff = (ours(ids, mask).logits - ref(input_ids=ids, attention_mask=mask).logits)[mask.bool()].abs().max()
    assert diff.item() <= TOL
    back = load_pretrained(tmp_path, task="mlm", strict_heads=True)
    with torch.no_grad():
        assert torch.allclose(back(ids, mask).logits, ours(ids, mask).logits, atol=TOL)


def test_attention_probabilities_match_transformers_eager(minilm):
    directory, ours, ref = minilm
    batch = _real_batch(directory, count=4)
    with torch.no_grad():
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_attentions=True,
                   output_hidden_states=True)
        want = ref(**batch, output_attentions=True, output_hidden_states=True)
    real = batch["attention_mask"].bool()
    assert len(got.attentions) == len(want.attentions) == 6
    for a, b in zip(got.attentions, want.attentions):
        assert (a - b).abs()[real[:, None, :, None].expand_as(a)].max().item() <= TOL
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert _max_diff_on_real_tokens(a, b, batch["attention_mask"]) <= TOL
