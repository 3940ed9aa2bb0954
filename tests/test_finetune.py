"""Fine-tuning: batching and heads against the library's own multiple-choice head, the loop (early stopping,
best-checkpoint reload), the recipe's outputs (metrics, predictions, submissions), and real learning."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bort import BortConfig, save_pretrained
from bort.model import BortForMultipleChoice
from bort.tokenization import load_tokenizer

from conftest import shared_path
from hf_helpers import REPO, minilm_dir

tasks = pytest.importorskip("bort.data.tasks", reason="task readers not available")

from bort.finetune import heads  # noqa: E402
from bort.finetune.batching import EncodedExample, collate, encode_task_examples  # noqa: E402
from bort.finetune.runner import FinetuneSettings, read_splits, run_finetune, split_examples  # noqa: E402
from bort.finetune.trainer import HParams, fit  # noqa: E402


def _vocab() -> Path:
    return shared_path("data/vocab/bert-base-uncased/vocab.txt")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small random BERT with the real bert-base-uncased vocabulary, saved as a native checkpoint."""
    cfg = BortConfig.preset("bert-base")
    cfg = BortConfig(**{**cfg.to_dict(), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 64})
    torch.manual_seed(0)
    from bort.model import BortForMaskedLM

    out = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(BortForMaskedLM(cfg), out)
    load_tokenizer(_vocab()).save(out)
    return out


def test_multiple_choice_scores_equal_the_library_head_and_handle_ragged_choices():
    torch.manual_seed(0)
    cfg = BortConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, type_vocab_size=2)
    model = BortForMultipleChoice(cfg).eval()
    tok = load_tokenizer(_vocab())
    enc = [tok.encode("a b c", "d e"), tok.encode("a", "b c d e f"), tok.encode("q", "r")]
    for e in enc:  # keep ids inside the tiny vocabulary
        e.ids = [i % 50 for i in e.ids]
    items = [EncodedExample(enc[:2], 1), EncodedExample(enc, 0)]
    batch = collate(items, pad_id=0, kind="multiple_choice")
    with torch.no_grad():
        table = heads.scores(model, batch)
        # Reference: the library's (batch, choices, seq) head on each example alone.
        for row, item in enumerate(items):
            one = collate([EncodedExample([s], None) for s in item.sequences], 0, "classification")
            ref = model(one.input_ids[None], one.attention_mask[None], one.token_type_ids[None]).logits[0]
            assert torch.allclose(table[row, :len(item.sequences)], ref, atol=1e-5)
    assert table[0, 2] == float("-inf")
    assert heads.predictions(table, "multiple_choice")[0] in (0, 1)
    loss = heads.loss(table, batch.labels, "multiple_choice")
    assert torch.isfinite(loss)


def test_split_examples_is_seeded_and_disjoint():
    rows = list(range(10))
    a, b = split_examples(rows, 6, seed=0)
    assert sorted(a + b) == rows and len(a) == 6
    assert split_examples(rows, 6, seed=0) == (a, b)
    with pytest.raises(ValueError, match="both sides"):
        split_examples(rows, 10, seed=0)


def _sst2(n: int | None = None):
    task = tasks.get_task("SST-2")
    examples = task.read(shared_path("data/glue/SST-2"), "dev")
    return task, (list(examples)[:n] if n else list(examples))


def test_fit_early_stops_and_restores_the_best_weights(tiny_model):
    task, examples = _sst2(48)
    tok = load_tokenizer(tiny_model)
    items = encode_task_examples(tok, examples, 64)
    model = heads.load_model_for(task, str(tiny_model))
    # A learning rate of ~0 leaves the dev metric unchanged, so no evaluation after the first improves on it:
    # patience 2 must stop after the third evaluation, and the weights must be those of the first.
    hp = HParams(lr=1e-12, batch_size=8, epochs=10, warmup_ratio=0.0, weight_decay=0.0)
    events = []
    result = fit(model, task, items[:32], items[32:], examples[32:], hp, tok.pad_token_id, eval_interval=2,
                 patience=2, on_event=events.append, progress=False)
    assert result.stopped_early and result.steps == 6 and result.best_step == 2
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4, 6]


def test_run_finetune_writes_metrics_predictions_checkpoint_and_submission(tiny_model, tmp_path):
    task = tasks.get_task("SST-2")
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    src = shared_path("data/glue/SST-2/dev.tsv")
    shutil.copy(src, data / "dev.tsv")
    # A test file in GLUE's layout (index<TAB>sentence), made from real dev sentences.
    rows = src.read_text(encoding="utf-8").splitlines()[1:21]
    (data / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{r.split(chr(9))[0]}\n"
                                                                 for i, r in enumerate(rows)), encoding="utf-8")
    out = tmp_path / "out"
    settings = FinetuneSettings(task="sst-2", model=str(tiny_model), data_dir=str(tmp_path), output_dir=str(out),
                                hparams=HParams(lr=1e-3, epochs=1, batch_size=16), max_length=64, dev_split=64,
                                progress=False)
    summary = run_finetune(settings)
    assert summary["train_examples"] == 64 and summary["dev_examples"] == 872 - 64
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dev"] == summary["dev"] and set(summary["dev"]) >= {"acc"}
    lines = (out / "dev_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 872 - 64
    acc = sum(json.loads(x)["prediction"] == json.loads(x)["label"] for x in lines) / len(lines)
    assert acc == pytest.approx(summary["dev"]["acc"], abs=1e-9)
    sub = Path(summary["submission"]).read_text().splitlines()
    assert sub[0].split("\t") == ["index", "prediction"] and len(sub) == 21
    assert {line.split("\t")[1] for line in sub[1:]} <= set(task.labels)
    assert (out / "curves.png").stat().st_size > 0
    # The best checkpoint reloads (with its tokenizer) and reproduces the reported dev metric.
    from bort.finetune.trainer import evaluate

    _, dev = split_examples(list(task.read(data, "dev")), 64, 0)
    model = heads.load_model_for(task, str(out / "best"))
    tok = load_tokenizer(out / "best")
    metrics, _ = evaluate(model, task, encode_task_examples(tok, dev, 64), dev, tok.pad_token_id)
    assert metrics == pytest.approx(summary["dev"])


def test_finetune_cli_reports_missing_files_and_bad_rows(tiny_model, tmp_path):
    data = tmp_path / "CoLA"
    data.mkdir()
    cmd = [sys.executable, str(REPO / "run_finetune.py"), "--task", "CoLA", "--model", str(tiny_model),
           "--data-dir", str(data), "--output-dir", str(tmp_path / "o"), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "dev.tsv" in r.stderr
    good = shared_path("data/glue/CoLA/dev.tsv").read_text(encoding="utf-8").splitlines()
    (data / "dev.tsv").write_text("\n".join(good[:20] + ["broken row without tabs"] + good[20:]) + "\n",
                                  encoding="utf-8")
    r = subprocess.run(cmd + ["--dev-split", "20", "--max-steps", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "line 21" in r.stderr, r.stderr
    r = subprocess.run(cmd + ["--dev-split", "20", "--max-steps", "1", "--skip-bad-rows"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [b["line"] for b in saved["bad_rows"]] == [21]


@pytest.mark.slow
def test_minilm_learns_sst2_from_600_dev_rows(tmp_path):
    """The issue's figure: the real MiniLM, 600 SST-2 dev rows for training, 272 held out: ≥ 80% in ≤ 10 min."""
    start = time.perf_counter()
    settings = FinetuneSettings(task="SST-2", model=str(minilm_dir()), data_dir=str(shared_path("data/glue")),
                                output_dir=str(tmp_path / "sst2"), max_length=128, dev_split=600,
                                hparams=HParams(lr=5e-5, epochs=3, batch_size=16, warmup_ratio=0.1,
                                                weight_decay=0.01, optimizer="adamw"), progress=False)
    summary = run_finetune(settings)
    elapsed = time.perf_counter() - start
    assert summary["dev_examples"] == 272
    assert summary["dev"]["acc"] >= 0.80, summary["dev"]
    assert elapsed <= 600


def test_finetune_with_a_dam_search_logs_penalty_and_density(tiny_model, tmp_path):
    """Fine-tuning a DAM model with --dam-lambda adds λ·Σ|M| and logs the mask density; a dense model refuses."""
    from bort.checkpoint import load_pretrained

    dam_dir = tmp_path / "dam"
    model = load_pretrained(tiny_model, config={"attention": "dam_s", "attention_params": {"max_length": 64}},
                            task="mlm")
    save_pretrained(model, dam_dir)
    load_tokenizer(_vocab()).save(dam_dir)
    settings = FinetuneSettings(task="SST-2", model=str(dam_dir), data_dir=str(shared_path("data/glue")),
                                output_dir=str(tmp_path / "o"), hparams=HParams(lr=1e-3, epochs=1, batch_size=8),
                                max_length=64, dev_split=32, dam_lambda=1e-3, progress=False, log_interval=1)
    run_finetune(settings)
    records = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert train and all(r["penalty"] > 0 and 0 < r["mask_density"] <= 1 for r in train)
    with pytest.raises(ValueError, match="needs a model with dam_s/dam_u"):
        run_finetune(FinetuneSettings(**{**settings.__dict__, "model": str(tiny_model),
                                         "output_dir": str(tmp_path / "o2")}))


@pytest.mark.parametrize("name, subdir, dev_split, keys", [
    ("ReCoRD", "superglue/ReCoRD/sample", None, {"f1", "em"}),     # candidate ranking, variable choices
    ("COPA", "superglue/COPA", None, {"acc"}),                     # two choices
    ("STS-B", "glue/STS-B", 20, {"pearson", "spearman"}),          # regression
    ("RACE-middle", "race/RACE", None, {"acc"}),                   # four choices over long articles
])
def test_every_head_kind_runs_end_to_end_on_real_files(tiny_model, tmp_path, name, subdir, dev_split, keys):
    out = tmp_path / "o"
    summary = run_finetune(FinetuneSettings(task=name, model=str(tiny_model), data_dir=str(shared_path("data", subdir)),
                                            output_dir=str(out), hparams=HParams(lr=1e-3, epochs=1, batch_size=4),
                                            max_length=96, max_steps=2, dev_split=dev_split, progress=False))
    assert keys <= set(summary["dev"]) and summary["steps"] == 2
    task = tasks.get_task(name)
    preds = [json.loads(x)["prediction"] for x in (out / "dev_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == summary["dev_examples"]
    if task.kind == "multiple_choice":
        _, dev, _, _ = read_splits(task, FinetuneSettings(task=name, model="",
                                                          data_dir=str(shared_path("data", subdir))))
        assert all(0 <= p < len(ex.choices) for p, ex in zip(preds, dev))
    if summary["submission"]:
        assert Path(summary["submission"]).stat().st_size > 0


def test_run_finetune_sh_launches_like_the_original(tiny_model, tmp_path):
    """`./scripts/run_finetune.sh TASK MODEL [flags]` with the data root and output from the environment."""
    import os

    env = {**os.environ, "BORT_DATA_DIR": str(shared_path("data")), "BORT_OUTPUT_DIR": str(tmp_path / "out")}
    r = subprocess.run([str(REPO / "scripts" / "run_finetune.sh"), "CoLA", str(tiny_model), "--dev-split", "20",
                        "--max-steps", "1", "--max-length", "32", "--no-progress"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["task"] == "CoLA"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dev_examples"] == 20
    r = subprocess.run([str(REPO / "scripts" / "run_finetune.sh")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "usage" in r.stderr


def test_hparams_and_settings_declare_their_checks_and_report_every_problem():
    """One validation path (`bort.train.settings`): each field's constraint is declared, all problems are
    listed at once under the class name; HParams stays frozen and hashable (grids compare trials by value)."""
    from bort.finetune.runner import FinetuneRecipe
    from bort.train.recipe import Recipe
    from bort.train.settings import SettingsError

    with pytest.raises(SettingsError, match=r"^HParams: lr must be > 0, got -1; batch_size must be a positive "
                                            r"integer, got True; warmup_ratio must be in \[0, 1\), got 1"):
        HParams(lr=-1, batch_size=True, warmup_ratio=1)
    with pytest.raises(ValueError, match=r"optimizer 'sgd' is not one of adamw, bertadam"):
        HParams(optimizer="sgd")
    assert HParams(optimizer="AdamW").optimizer == "AdamW"  # build_optimizer takes any case
    assert len({HParams(), HParams(), HParams(lr=1e-3)}) == 2
    with pytest.raises(AttributeError):
        HParams().lr = 1.0  # type: ignore[misc]

    with pytest.raises(SettingsError, match=r"^FinetuneSettings: max_length must be a positive integer, got 0; "
                                            r"patience must be a positive integer, got 0; log_interval must be a "
                                            r"positive integer, got 0; report_to must be one of none, tensorboard"):
        FinetuneSettings(task="SST-2", model="m", max_length=0, patience=0, log_interval=0, report_to="wandb")
    with pytest.raises(SettingsError, match=r"config must be a JSON object"):
        FinetuneSettings(task="SST-2", model="m", config=["attention"])
    settings = FinetuneSettings(task="SST-2", model="m", hparams=HParams(lr=1e-3), dev_split=10)
    assert FinetuneSettings.from_dict(settings.to_dict()) == settings  # what metrics.json records reads back
    assert issubclass(FinetuneRecipe, Recipe) and "metrics.json" in FinetuneRecipe.artefacts
