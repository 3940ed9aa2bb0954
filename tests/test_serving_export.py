"""Serving export (`bort export`, bort.export): ONNX Runtime and torch.export programs against eager PyTorch on
padded batches of other shapes than the export example, int8 and bf16, tracing, and refusals."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from bort.cli import main
from bort.config import BortConfig
from bort.export import REFUSED, ExportError, export_model, quantize_int8
from bort.model import BortForMaskedLM, BortForSequenceClassification, BortModel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY = dict(vocab_size=60, hidden_size=24, num_attention_heads=3, intermediate_size=20, num_hidden_layers=2,
            max_position_embeddings=32)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _model(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "classifier":
        return BortForSequenceClassification(BortConfig(**{**TINY, "num_labels": 3, **overrides})).eval()
    if kind == "encoder":  # token types and a pooler: a third input and a second output
        return BortModel(BortConfig(**{**TINY, "type_vocab_size": 2, "add_pooler": True, **overrides})).eval()
    return BortForMaskedLM(BortConfig(**{**TINY, **overrides})).eval()


def _padded(model: torch.nn.Module, batch: int, length: int) -> dict[str, torch.Tensor]:
    """A batch whose rows have different real lengths (row 0 full, the last row only its first token)."""
    gen = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row, real in enumerate(torch.linspace(length, 1, batch).long().tolist()):
        mask[row, real:] = 0
    ids = ids.masked_fill(mask == 0, 0)  # padding ids, as a tokenizer writes them
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model.config.type_vocab_size > 0:
        inputs["token_type_ids"] = (torch.arange(length) >= length // 2).long().expand(batch, -1).clone()
    return inputs


def _eager(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
    if isinstance(model, BortModel):
        return [out.last_hidden_state, out.pooler_output]
    return [out.logits]


def _run_onnx(path, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(inputs)
    return [torch.from_numpy(o) for o in session.run(None, {k: v.numpy() for k, v in inputs.items()})]


def _run_pt2(path, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    program = torch.export.load(str(path))
    with torch.no_grad():
        return list(program.module()(*inputs.values()))


# Shapes unlike the export example (batch 2, 16 tokens): more rows, fewer and more tokens, one row, the most
# positions the model has.
SHAPES = [(5, 11), (1, 29), (3, 32)]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("kind", ["classifier", "encoder", "mlm"])
def test_export_matches_eager_on_padded_batches_of_other_shapes(tmp_path, fmt, kind):
    model = _model(kind)
    dest = tmp_path / f"model.{fmt}"
    report = export_model(model, dest, fmt)
    assert report.example_shape == [2, 16] and report.max_abs_diff <= 1e-4
    assert report.inputs == ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "encoder" else [])
    assert sorted(os.listdir(tmp_path)) == [dest.name]  # no temporary left beside it
    run = _run_onnx if fmt == "onnx" else _run_pt2
    for batch, length in SHAPES:
        inputs = _padded(model, batch, length)
        got, want = run(dest, inputs), _eager(model, inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            diff = (g - w).abs().max().item()
            assert diff <= 1e-4, f"{fmt} {kind} {batch}x{length}: max |exported - eager| = {diff}"


def test_onnx_has_dynamic_batch_and_sequence_axes(tmp_path):
    model = _model("classifier")
    export_model(model, tmp_path / "m.onnx", "onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "seq"], value.name
        assert all(not d.HasField("dim_value") for d in dims)


def test_int8_onnx_is_quantized_runs_and_stays_close(tmp_path):
    model = _model("classifier")
    report = export_model(model, tmp_path / "q.onnx", "onnx", quantize="int8")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # really int8 matmuls, not the fp32 graph
    inputs = _padded(model, 5, 11)
    got, want = _run_onnx(tmp_path / "q.onnx", inputs)[0], _eager(model, inputs)[0]
    diff = (got - want).abs().max().item()
    print(f"int8 ONNX vs fp32 eager: max |diff| {diff:.3g} (export check {report.max_abs_diff:.3g}); "
          f"logit scale {want.abs().max().item():.3g}")
    assert 0 < diff < 0.05 + 0.05 * want.abs().max().item()


@pytest.mark.slow  # torchao quantization and two exports: about 5 s
def test_bf16_and_int8_pt2_run_close_to_fp32(tmp_path):
    model = _model("classifier")
    inputs = _padded(model, 5, 11)
    want = _eager(model, inputs)[0]
    export_model(model, tmp_path / "b.pt2", "pt2", dtype="bf16")
    got = _run_pt2(tmp_path / "b.pt2", inputs)[0]
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max().item() < 0.05
    export_model(model, tmp_path / "q.pt2", "pt2", quantize="int8")
    got = _run_pt2(tmp_path / "q.pt2", inputs)[0]
    assert 0 < (got - want).abs().max().item() < 0.05  # quantized (not identical), yet close


def test_torchao_int8_eager_quantizes_linears_and_stays_close():
    model = _model("classifier")
    quantized = quantize_int8(model)
    assert type(quantized.bort.encoder.layer[0].intermediate.dense.weight) is not torch.nn.Parameter  # torchao's
    assert type(model.bort.encoder.layer[0].intermediate.dense.weight) is torch.nn.Parameter  # the original kept
    inputs = _padded(model, 4, 9)
    diff = (_eager(quantized, inputs)[0] - _eager(model, inputs)[0]).abs().max().item()
    assert 0 < diff < 0.05


def test_trace_on_unpadded_example_is_right_on_padded_batches():
    """The issue: a graph traced on an all-real mask dropped the mask (0.0156 off on real tokens)."""
    model = _model("classifier")
    example = (torch.randint(1, 60, (2, 16)), torch.ones(2, 16, dtype=torch.long))

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids, attention_mask).logits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(Logits().eval(), example)
    for batch, length in [(2, 16), (4, 16), (3, 9)]:
        inputs = _padded(model, batch, length)
        assert not bool(inputs["attention_mask"].all())
        with torch.no_grad():
            got = traced(inputs["input_ids"], inputs["attention_mask"])
        diff = (got - _eager(model, inputs)[0]).abs().max().item()
        assert diff <= 1e-5, f"traced graph off by {diff} on a padded {batch}x{length} batch"


@pytest.mark.parametrize("attention, words", [
    ("yoso", ["'yoso'", "YOSO's sampled path", "random hash", "autograd.Function"]),
    ("dam_s", ["'dam_s'", "DAM search mask", "bort mask export"]),
    ("strided", ["'strided'", "branches in Python on the data"]),
])
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_unexportable_mechanisms_are_refused_with_the_reason_and_nothing_written(tmp_path, attention, words, fmt):
    params = {"strided": {"stride": 4}}.get(attention)
    model = _model("classifier", attention=attention, **({"attention_params": params} if params else {}))
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "out" / f"m.{fmt}", fmt)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_every_registered_non_dense_mechanism_has_a_refusal_reason():
    from bort.attention import available_attention

    assert set(available_attention()) - set(REFUSED) == {"dense"}


def test_bf16_onnx_and_bad_options_are_refused(tmp_path):
    model = _model("classifier")
    with pytest.raises(ExportError, match="bf16 with format onnx: ONNX Runtime's CPU execution provider has no "
                                          "bfloat16 kernels"):
        export_model(model, tmp_path / "m.onnx", "onnx", dtype="bf16")
    with pytest.raises(ExportError, match="quantize int8 with dtype bf16: choose one"):
        export_model(model, tmp_path / "m.pt2", "pt2", quantize="int8", dtype="bf16")
    with pytest.raises(ExportError, match="export format 'tflite': expected one of onnx, pt2"):
        export_model(model, tmp_path / "m.tflite", "tflite")
    assert os.listdir(tmp_path) == []


def test_export_that_fails_its_check_leaves_nothing_and_keeps_an_older_file(tmp_path, monkeypatch):
    import bort.export as export

    model = _model("classifier")
    dest = tmp_path / "m.pt2"
    dest.write_bytes(b"older export")
    monkeypatch.setitem(export._TOLERANCE, "fp32", (-1.0, 0.0))  # no graph can pass: the check must refuse
    with pytest.raises(ExportError, match=r"differs from eager PyTorch by .* on a padded \(3, 21\) batch"):
        export_model(model, dest, "pt2")
    assert sorted(os.listdir(tmp_path)) == ["m.pt2"] and dest.read_bytes() == b"older export"


def test_cli_exports_a_checkpoint_and_refuses_yoso(tmp_path, capsys):
    from bort.checkpoint import save_pretrained

    model = _model("classifier")
    save_pretrained(model, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "m.onnx")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["format"] == "onnx" and report["task"] == "classification" and report["outputs"] == ["logits"]
    inputs = _padded(model, 3, 7)
    assert (_run_onnx(tmp_path / "m.onnx", inputs)[0] - _eager(model, inputs)[0]).abs().max().item() <= 1e-4

    save_pretrained(_model("classifier", attention="yoso"), tmp_path / "yoso")
    assert main(["export", str(tmp_path / "yoso"), str(tmp_path / "y.pt2")]) == 2
    err = capsys.readouterr().err
    assert "bort export: error:" in err and "attention mechanism 'yoso' cannot be exported" in err
    assert str(tmp_path / "yoso") in err
    assert not (tmp_path / "y.pt2").exists()
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "m.bin")]) == 2
    assert "cannot tell the format from the suffix 'bin'" in capsys.readouterr().err
