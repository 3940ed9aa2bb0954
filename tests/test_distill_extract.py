"""`--student-init extract`: a narrower student starts as a sub-network of its teacher.

Checked against closed-form facts rather than the code's own tables: a same-size extraction is the teacher;
removing heads and FFN neurons whose weights are zero changes no output; planted importance decides what is
kept; and what cannot be extracted is refused with the reason.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bort import BortConfig, BortForMaskedLM
from bort.checkpoint.errors import CheckpointError
from bort.distill.extract import extract_student
from bort.distill.losses import uniform_layer_map

TEACHER = BortConfig.preset("bert-base", hidden_size=32, num_attention_heads=4, intermediate_size=64,
                            num_hidden_layers=3, max_position_embeddings=64, vocab_size=120,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def distill_inputs(tmp_path_factory) -> tuple:
    """Real pretraining shards (MiniLM vocabulary) and a tiny MLM teacher for the command-line runs."""
    from conftest import make_minilm_shards, save_tiny_mlm_teacher

    root = tmp_path_factory.mktemp("extract")
    return make_minilm_shards(root / "data"), save_tiny_mlm_teacher(root / "teacher")


def _teacher(seed: int = 0) -> BortForMaskedLM:
    torch.manual_seed(seed)
    model = BortForMaskedLM(TEACHER).eval()
    with torch.no_grad():  # LayerNorm scales and biases away from 1/0, so their slicing is visible
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _student(**sizes) -> BortForMaskedLM:
    torch.manual_seed(123)
    return BortForMaskedLM(dataclasses.replace(TEACHER, **sizes)).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, TEACHER.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    return ids, mask


def test_same_size_extraction_is_the_teacher():
    teacher, student = _teacher(), _student()
    report = extract_student(student, teacher, uniform_layer_map(3, 3))
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(student(ids, mask).logits, teacher(ids, mask).logits)
    assert report["kept_initial"] == [] and report["hidden"] == list(range(32))
    assert [layer["heads"] for layer in report["layers"]] == [[0, 1, 2, 3]] * 3


def test_removing_dead_neurons_changes_no_output():
    """FFN neurons 32-63 are zero in both FFN matrices of every layer: a student with the other 32 neurons taken
    from this teacher computes exactly the same function. (Heads cannot be tested this way: a narrower attention
    is a narrower residual stream here, whose LayerNorm statistics change.)"""
    teacher = _teacher()
    with torch.no_grad():
        for layer in teacher.bort.encoder.layer:
            layer.intermediate.dense.weight[32:] = 0
            layer.intermediate.dense.bias[32:] = 0
            layer.output.dense.weight[:, 32:] = 0
    student = _student(intermediate_size=32)
    report = extract_student(student, teacher, uniform_layer_map(3, 3))
    assert all(layer["ffn"] == list(range(32)) for layer in report["layers"])
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(student(ids, mask).logits, teacher(ids, mask).logits, rtol=0, atol=1e-5)


def test_planted_importance_decides_what_is_kept():
    teacher = _teacher()
    head = TEACHER.hidden_size // TEACHER.num_attention_heads
    loud = [3, 7, 8, 20, 21, 22, 30, 31, 0, 5, 9, 14, 16, 18, 25, 27]  # 16 residual dimensions with large scales
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if name.endswith("LayerNorm.weight") and name.startswith("bort."):
                p.fill_(0.1)
                p[loud] = 1.0
        for i, layer in enumerate(teacher.bort.encoder.layer):
            strong = (i, 3)  # layer i: heads i and 3 are the strongest
            for h in range(4):
                scale = 5.0 if h in strong else 0.2
                layer.attention.self.value.weight[h * head:(h + 1) * head] *= scale
            layer.intermediate.dense.weight[:8] *= 10  # neurons 0-7 the strongest
    student = _student(hidden_size=16, num_attention_heads=2, intermediate_size=8, num_hidden_layers=3)
    report = extract_student(student, teacher, uniform_layer_map(3, 3))
    assert report["hidden"] == sorted(loud)
    assert [layer["heads"] for layer in report["layers"]] == [[0, 3], [1, 3], [2, 3]]
    assert all(layer["ffn"] == list(range(8)) for layer in report["layers"])
    t, s = teacher.state_dict(), student.state_dict()
    hidden = torch.tensor(sorted(loud))
    inner = torch.cat([torch.arange(h * head, (h + 1) * head) for h in (1, 3)])  # student layer 1 = teacher 1
    q = "bort.encoder.layer.1.attention.self.query.weight"
    assert torch.equal(s[q], t[q][inner][:, hidden])
    o = "bort.encoder.layer.1.attention.output.dense.weight"
    assert torch.equal(s[o], t[o][hidden][:, inner])
    f = "bort.encoder.layer.2.output.dense.weight"
    assert torch.equal(s[f], t[f][hidden][:, :8])
    w = "bort.embeddings.word_embeddings.weight"
    assert torch.equal(s[w], t[w][:, hidden])
    assert torch.equal(s["lm_head.bias"], t["lm_head.bias"])


def test_fewer_layers_take_the_mapped_teacher_layers():
    teacher, student = _teacher(), _student(num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    report = extract_student(student, teacher, uniform_layer_map(1, 3))
    assert [(layer["student"], layer["teacher"]) for layer in report["layers"]] == [(0, 2)]
    t, s = teacher.state_dict(), student.state_dict()
    hidden = torch.tensor(report["hidden"])
    key = "output.LayerNorm.bias"
    assert torch.equal(s[f"bort.encoder.layer.0.{key}"], t[f"bort.encoder.layer.2.{key}"][hidden])


def test_what_cannot_be_extracted_is_refused_with_the_reason():
    teacher = _teacher()
    cases = [
        (dict(hidden_size=24, num_attention_heads=4), r"head size 6 .* differs from the teacher's 8.*use 3 heads"),
        (dict(hidden_size=20, num_attention_heads=2), r"head size 10 differs from the teacher.s 8 and hidden 20 is not a multiple of it"),
        (dict(intermediate_size=128), r"intermediate_size 128 is larger than the teacher's 64"),
        (dict(vocab_size=99), r"vocab_size 99 differs from the teacher's 120"),
        (dict(layer_norm_position="pre"), r"layer_norm_position 'pre' differs"),
    ]
    for sizes, message in cases:
        with pytest.raises(CheckpointError, match="cannot extract the student from the teacher: " + message):
            extract_student(_student(**sizes), teacher, uniform_layer_map(3, 3))


def test_distill_cli_extracts_and_records_the_units(distill_inputs, tmp_path):
    """`bort distill --student-init extract` from the tiny MLM teacher; extracted.json names the kept units and
    the student's weights at step 0 (lr 0) are the teacher's slices."""
    from safetensors.torch import load_file

    from bort.cli import main

    data, teacher = distill_inputs
    student = json.dumps({"preset": "bert-base", "hidden_size": 16, "num_attention_heads": 2,
                          "intermediate_size": 24, "num_hidden_layers": 2, "max_position_embeddings": 64})
    out = tmp_path / "run"
    assert main(["distill", "--train", str(data / "train" / "part-*.rec"), "--teacher", str(teacher), "--student",
                 student, "--student-init", "extract", "--max-steps", "1", "--lr", "0", "--batch-size", "4",
                 "--output-dir", str(out), "--no-progress", "--no-plot", "--launcher", "none"]) == 0
    report = json.loads((out / "extracted.json").read_text())
    assert len(report["hidden"]) == 16 and [layer["teacher"] for layer in report["layers"]] == [1, 2]
    s, t = load_file(out / "final" / "model.safetensors"), load_file(teacher / "model.safetensors")
    hidden = torch.tensor(report["hidden"])
    ffn = torch.tensor(report["layers"][1]["ffn"])
    key = "encoder.layer.{}.intermediate.dense.weight"
    assert torch.equal(s["bort." + key.format(1)], t["bort." + key.format(2)][ffn][:, hidden])


def test_a_teacher_used_only_to_initialise_is_not_run(distill_inputs, tmp_path, monkeypatch):
    """`--student-init extract` with every distillation weight 0 trains on MLM alone: the teacher's forward is
    never called (it would only cost time), and no teacher term is logged."""
    from bort.cli import main
    from bort.train.metrics import read_jsonl

    data, teacher = distill_inputs
    calls = []
    original = BortForMaskedLM.forward

    def counting(self, *args, **kwargs):
        calls.append(self.config.hidden_size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BortForMaskedLM, "forward", counting)
    student = json.dumps({"preset": "bert-base", "hidden_size": 16, "num_attention_heads": 2,
                          "intermediate_size": 24, "num_hidden_layers": 2, "max_position_embeddings": 64})
    out = tmp_path / "run"
    assert main(["distill", "--train", str(data / "train" / "part-*.rec"), "--teacher", str(teacher), "--student",
                 student, "--student-init", "extract", "--mlm-weight", "1", "--kd-weight", "0", "--hidden-weight",
                 "0", "--attention-weight", "0", "--max-steps", "3", "--batch-size", "4", "--log-interval", "1",
                 "--output-dir", str(out), "--no-progress", "--no-plot", "--launcher", "none"]) == 0
    assert calls and set(calls) == {16}  # the student (16 wide) ran; the teacher (32 wide) never did
    train = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "train"]
    assert len(train) == 3 and all("teacher_mse" not in r and "kd" not in r for r in train)
    assert all(r["loss"] == pytest.approx(r["mlm"], rel=1e-6) for r in train)  # MLM weight 1, nothing else
