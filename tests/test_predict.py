"""`bort predict`: file order restored whatever the batching, torch vs ONNX Runtime, truncation counted,
vocabulary mismatch refused, leaderboard file written, and `run_finetune.py --only_inference` running it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bort import BortConfig, save_pretrained
from bort.cli import main as bort_main
from bort.data.tasks import get_task
from bort.model import BortForSequenceClassification
from bort.predict import PredictError, Predictor, predict_task
from bort.tokenization import load_tokenizer

from conftest import shared_path
from hf_helpers import REPO

MAX_POSITIONS = 24


def _classifier(vocab_size: int = 30522) -> BortForSequenceClassification:
    cfg = BortConfig.preset("bert-base")
    cfg = BortConfig(**{**cfg.to_dict(), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 64, "max_position_embeddings": MAX_POSITIONS,
                        "vocab_size": vocab_size, "num_labels": 2})
    torch.manual_seed(3)
    model = BortForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a head large enough that the random model predicts both classes
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
        model.classifier.bias.zero_()
    return model


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(model directory with its tokenizer, data root with glue/SST-2 dev+test, the dev sentences)."""
    vocab = shared_path("data/vocab/bert-base-uncased/vocab.txt")
    rows = shared_path("data/glue/SST-2/dev.tsv").read_text(encoding="utf-8").splitlines()[1:61]
    root = tmp_path_factory.mktemp("predict")
    model_dir = root / "model"
    save_pretrained(_classifier(), model_dir)
    load_tokenizer(vocab).save(model_dir)
    data = root / "data" / "glue" / "SST-2"
    data.mkdir(parents=True)
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    sentences = [r.split("\t")[0] for r in rows]
    (data / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, s in enumerate(sentences)),
                                   encoding="utf-8")
    return model_dir, root / "data", sentences


def _reference(model_dir: Path, sentences: list[str]) -> list[int]:
    """Each sentence alone (no padding), in file order, through the eager model."""
    from bort.checkpoint import load_pretrained

    model = load_pretrained(model_dir, task="classification").eval()
    tok = load_tokenizer(model_dir)
    out = []
    with torch.no_grad():
        for s in sentences:
            ids = torch.tensor([tok.encode(s, max_length=MAX_POSITIONS).ids])
            out.append(int(model(ids, torch.ones_like(ids)).logits.argmax(-1)))
    return out


def test_predictions_are_in_file_order_for_every_batch_size(fixture_dirs):
    model_dir, data, sentences = fixture_dirs
    want = _reference(model_dir, sentences)
    assert len(set(want)) == 2  # a model predicting one class would not show a reordering
    for batch_size in (1, 7, 32, 100):
        got = predict_task(str(model_dir), "SST-2", str(data), "dev", batch_size=batch_size, progress=False)
        assert got["predictions"] == want, batch_size
        assert got["examples"] == 60 and got["metrics"]["acc"] == pytest.approx(
            sum(p == int(r.split()[-1]) for p, r in zip(want, _labels(data))) / 60)


def _labels(data: Path) -> list[str]:
    return (data / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]


def test_long_rows_are_truncated_and_counted(fixture_dirs):
    model_dir, data, sentences = fixture_dirs
    tok = load_tokenizer(model_dir)
    long_rows = [i for i, s in enumerate(sentences) if len(tok.encode(s)) > MAX_POSITIONS]
    assert 0 < len(long_rows) < len(sentences)
    got = predict_task(str(model_dir), "SST-2", str(data), "dev", progress=False)
    assert got["truncated"] == len(long_rows) and got["max_positions"] == MAX_POSITIONS
    assert got["truncated_rows"] == [f"dev-{i}" for i in long_rows]


def test_torch_and_onnxruntime_fp32_agree_and_int8_bf16_run(fixture_dirs):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model_dir, data, _ = fixture_dirs
    task = get_task("SST-2")
    examples = task.read(data / "glue" / "SST-2", "dev")
    from bort.predict import load_task_model

    model = load_task_model(str(model_dir), task)
    tok = load_tokenizer(model_dir)
    eager = Predictor(model, tok, task.kind, batch_size=16).predict(examples)
    ort = Predictor(model, tok, task.kind, backend="onnxruntime", batch_size=16).predict(examples)
    assert ort.predictions == eager.predictions and ort.truncated == eager.truncated > 0
    for precision, backend in (("bf16", "torch"), ("int8", "torch"), ("int8", "onnxruntime")):
        other = Predictor(model, tok, task.kind, precision=precision, backend=backend).predict(examples)
        assert len(other.predictions) == 60 and set(other.predictions) <= {0, 1}
        assert model.classifier.weight.dtype == torch.float32  # the caller's model is left as it was
    with pytest.raises(PredictError, match="bfloat16"):
        Predictor(model, tok, task.kind, precision="bf16", backend="onnxruntime")


def test_a_tokenizer_of_another_vocabulary_is_refused_before_any_prediction(fixture_dirs, tmp_path, capsys):
    _, data, _ = fixture_dirs
    small = tmp_path / "small"
    save_pretrained(_classifier(vocab_size=1000), small)
    load_tokenizer(shared_path("data/vocab/bert-base-uncased/vocab.txt")).save(small)
    out = tmp_path / "out"
    code = bort_main(["predict", str(small), "--task", "SST-2", "--data-dir", str(data), "--split", "test",
                      "--output-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "30522 ids" in err and "embeds 1000" in err
    assert not out.exists()


def test_cli_writes_the_leaderboard_file_and_reports_truncation(fixture_dirs, tmp_path, capsys):
    model_dir, data, sentences = fixture_dirs
    out = tmp_path / "sub"
    code = bort_main(["predict", str(model_dir), "--task", "sst-2", "--data-dir", str(data), "--split", "test",
                      "--batch-size", "8", "--output-dir", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["metrics"] is None and summary["examples"] == 60 and summary["sentences_per_second"] > 0
    assert f"were longer than the model's {MAX_POSITIONS} positions and were truncated" in captured.err
    lines = Path(summary["submission"]).read_text().splitlines()
    assert lines[0].split("\t") == ["index", "prediction"]
    want = _reference(model_dir, sentences)
    labels = get_task("SST-2").labels
    assert [line.split("\t") for line in lines[1:]] == [[str(i), labels[p]] for i, p in enumerate(want)]


def test_a_checkpoint_without_a_classifier_is_refused(fixture_dirs, tmp_path):
    _, data, _ = fixture_dirs
    from bort.model import BortModel

    encoder = tmp_path / "encoder"
    save_pretrained(BortModel(_classifier().config), encoder)
    load_tokenizer(shared_path("data/vocab/bert-base-uncased/vocab.txt")).save(encoder)
    with pytest.raises(PredictError, match="needs a fine-tuned classification head"):
        predict_task(str(encoder), "SST-2", str(data), "dev", progress=False)


def test_run_finetune_only_inference_runs_predict(fixture_dirs, tmp_path):
    model_dir, data, sentences = fixture_dirs
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "run_finetune.py"), "--task_name", "SST", "--model",
                           str(model_dir), "--data_dir", str(data), "--output_dir", str(out), "--only_inference",
                           "--batch_size", "16", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dev, test = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert dev["split"] == "dev" and set(dev["metrics"]) == {"acc"} and test["split"] == "test"
    assert dev["batch_size"] == 16 and dev["truncated"] == test["truncated"] > 0
    lines = (out / "submission" / Path(test["submission"]).name).read_text().splitlines()
    assert len(lines) == 61 and not (out / "best").exists()
