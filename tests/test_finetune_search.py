"""Hyper-parameter grid (parallel, resumable) and Agora (pool pruning, reference-labelled data) on a tiny
model and real SST-2 rows; the data generators."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bort import BortConfig, save_pretrained
from bort.tokenization import load_tokenizer

from conftest import shared_path

tasks = pytest.importorskip("bort.data.tasks", reason="task readers not available")

from bort.finetune import grid as grid_mod  # noqa: E402
from bort.finetune.agora import Agora  # noqa: E402
from bort.finetune.augment import MLMInfill, TokenPerturbation, vocabulary_words  # noqa: E402
from bort.finetune.batching import encode_task_examples  # noqa: E402
from bort.finetune.heads import load_model_for  # noqa: E402
from bort.finetune.trainer import HParams, predict  # noqa: E402


def _vocab():
    return shared_path("data/vocab/bert-base-uncased/vocab.txt")


def _tiny_cfg() -> BortConfig:
    base = BortConfig.preset("bert-base").to_dict()
    return BortConfig(**{**base, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(candidate encoder checkpoint, reference classifier checkpoint), both with the real BERT vocabulary."""
    from bort.model import BortForMaskedLM, BortForSequenceClassification

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_pretrained(BortForMaskedLM(_tiny_cfg()), root / "cand")
    torch.manual_seed(1)
    save_pretrained(BortForSequenceClassification(BortConfig(**{**_tiny_cfg().to_dict(), "num_labels": 2})),
                    root / "ref")
    for d in ("cand", "ref"):
        load_tokenizer(_vocab()).save(root / d)
    return root / "cand", root / "ref"


def _grid_file(tmp_path, cand, lrs):
    spec = {"task": "SST-2", "model": str(cand), "data_dir": str(shared_path("data/glue")), "dev_split": 32,
            "settings": {"max_length": 48, "max_steps": 2, "eval_batch_size": 64},
            "base": {"epochs": 1, "batch_size": 8}, "grid": {"lr": lrs, "seed": [0]}}
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    return path


def test_grid_runs_in_parallel_workers_and_never_reruns_a_finished_trial(tiny, tmp_path):
    cand, _ = tiny
    spec = grid_mod.load_grid(_grid_file(tmp_path, cand, [1e-3, 1e-4, 1e-5]))
    spec.settings.save_checkpoint = False
    out = tmp_path / "out"
    results = grid_mod.run_grid(spec, out, workers=2, progress=False)
    assert len(results) == 3 and results[0]["metric"] >= results[-1]["metric"]
    assert {r["lr"] for r in results} == {1e-3, 1e-4, 1e-5}
    for f in ("results.md", "results.csv", "results.json", "results.png"):
        assert (out / f).stat().st_size > 0
    files = {r["id"]: out / "trials" / r["id"] / "result.json" for r in results}
    stamps = {k: os.stat(p).st_mtime_ns for k, p in files.items()}
    victim = results[1]["id"]
    files[victim].unlink()  # as if the run had been killed during this trial
    again = grid_mod.run_grid(spec, out, workers=1, progress=False)
    assert {r["id"] for r in again} == set(files)
    for k, p in files.items():
        assert (os.stat(p).st_mtime_ns == stamps[k]) == (k != victim)


def test_grid_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text('{"task": "SST-2", "model": "m", "grid": {"learning_rate": [1]}}')
    with pytest.raises(ValueError, match="'learning_rate' is not a hyper-parameter; valid: .*'lr'"):
        grid_mod.load_grid(bad)
    bad.write_text('{"task": "SST-2", "model": "m", "grid": {"lr": [-1]}}')
    with pytest.raises(ValueError, match="lr must be > 0"):
        grid_mod.load_grid(bad)
    bad.write_text('{"task": "SST-2",')
    with pytest.raises(ValueError, match="g.json: not valid JSON"):
        grid_mod.load_grid(bad)
    spec = grid_mod.load_grid({"task": "SST-2", "model": "m", "grid": "bort"})
    assert len(spec.trials()) == 5 * 3 * 4 * 4 * 2


def test_agora_prunes_the_pool_and_adds_reference_labelled_points(tiny):
    cand, ref = tiny
    task = tasks.get_task("SST-2")
    rows = list(task.read(shared_path("data/glue/SST-2"), "dev"))
    train, dev = rows[:24], rows[24:48]
    tok = load_tokenizer(cand)
    reference = load_model_for(task, str(ref))

    def label(examples):
        return predict(reference, encode_task_examples(tok, examples, 48), task.kind, tok.pad_token_id)

    pool = [HParams(lr=lr, epochs=1, batch_size=8, weight_decay=0.0) for lr in (1e-3, 3e-4, 1e-4)]
    agora = Agora(task, lambda: load_model_for(task, str(cand)), lambda exs: encode_task_examples(tok, exs, 48),
                  label, TokenPerturbation(vocabulary_words(tok, 5000)), tok.pad_token_id, per_error=2,
                  fit_options={"max_steps": 2})
    model, result = agora.run(pool, train, dev, replay=1)
    # 3 θ → 2 → 1, twice (replay 1): rounds train 3 and 2 models each pass, plus the final training.
    assert [len(r.scores) for r in result.rounds] == [3, 2, 3, 2]
    assert result.trainings == 3 + 2 + 3 + 2 + 1
    assert all(r.added == 2 * r.errors for r in result.rounds)
    sizes = [r.train_size for r in result.rounds]
    assert sizes == sorted(sizes) and sizes[-1] == 24 + sum(r.added for r in result.rounds) == result.train_size
    # Pruning keeps the better half of each round's scores.
    first = result.rounds[0]
    ranked = sorted(first.scores, key=lambda s: -s["acc"])
    assert {json.dumps(s["hparams"], sort_keys=True) for s in ranked[:2]} == set(first.kept)
    # Every generated point carries the reference model's label (recomputed here) and names its source.
    assert result.added and [ex.label for ex in result.added] == label(result.added)
    assert all(ex.meta["augmented_from"] for ex in result.added)
    assert result.hparams in pool


def test_token_perturbation_changes_every_field_reproducibly():
    task = tasks.get_task("SST-2")
    ex = list(task.read(shared_path("data/glue/SST-2"), "dev"))[0]
    gen = TokenPerturbation(["alpha", "beta"], p_drop=0.2, p_swap=0.2, p_replace=0.2)
    a = gen([ex], 3, np.random.default_rng(0))
    b = gen([ex], 3, np.random.default_rng(0))
    assert [x.text_a for x in a] == [x.text_a for x in b]
    assert all(x.text_a != ex.text_a and x.label is None for x in a)
    assert len({x.guid for x in a}) == 3
    with pytest.raises(ValueError, match="p_drop"):
        TokenPerturbation(["a"], p_drop=2)


def test_mlm_infill_uses_the_teachers_predictions(tiny):
    from bort.checkpoint import load_pretrained

    cand, _ = tiny
    tok = load_tokenizer(cand)
    mlm = load_pretrained(cand, task="mlm")
    gen = MLMInfill(mlm, tok, rate=0.3, top_k=1)  # top-1: each masked token becomes the teacher's argmax
    task = tasks.get_task("SST-2")
    ex = list(task.read(shared_path("data/glue/SST-2"), "dev"))[5]
    out = gen([ex], 1, np.random.default_rng(0))[0]
    assert out.text_a != ex.text_a.lower() and out.label is None
    with pytest.raises(ValueError, match="masked-LM head"):
        MLMInfill(load_pretrained(cand), tok)


def test_grid_on_ray_gives_the_same_results_as_local_workers(tiny, tmp_path):
    """The same trials as Ray tasks (a local Ray instance): identical metrics to the in-process run."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("BORT_RAY_REQUIRED"):
            raise
        pytest.skip("Ray is not installed (pip install 'bort[ray]')")
    cand, _ = tiny
    spec = grid_mod.load_grid(_grid_file(tmp_path, cand, [1e-3, 1e-4]))
    spec.settings.save_checkpoint = False
    local = grid_mod.run_grid(spec, tmp_path / "local", workers=1, progress=False)
    remote = grid_mod.run_grid(spec, tmp_path / "ray", workers=2, backend="ray", progress=False)
    assert [(r["id"], r["metric"]) for r in remote] == [(r["id"], r["metric"]) for r in local]


def test_agora_command_writes_rounds_report_and_final_model(tiny, tmp_path):
    from bort.cli import main

    cand, ref = tiny
    out = tmp_path / "agora"
    rc = main(["agora", str(_grid_file(tmp_path, cand, [1e-3, 1e-4])), "--reference", str(ref), "--holdout", "40",
               "--max-new-per-round", "10", "--output-dir", str(out)])
    assert rc == 0
    summary = json.loads((out / "agora.json").read_text())
    assert summary["pool"] == 2 and summary["trainings"] == 3 and summary["holdout_examples"] == 40
    assert set(summary["holdout"]) == {"acc"} and summary["added"] == len((out / "generated.jsonl").read_text().splitlines())
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rounds] == ["round", "final"]
    assert (out / "agora.png").stat().st_size > 0 and (out / "best" / "config.json").exists()


def test_grid_and_agora_settings_are_checked_before_the_output_directory_is_touched(tmp_path):
    from bort.finetune.agora_recipe import AgoraSettings
    from bort.train.settings import SettingsError

    spec = grid_mod.load_grid({"task": "SST-2", "model": "m", "grid": {"lr": [1e-4]}})
    out = tmp_path / "out"
    with pytest.raises(SettingsError, match=r"^GridSettings: workers must be a positive integer, got 0; backend "
                                            r"'slurm' is not one of local, ray"):
        grid_mod.run_grid(spec, out, workers=0, backend="slurm", progress=False)
    assert not out.exists()

    with pytest.raises(SettingsError, match=r"^AgoraSettings: per_error must be a positive integer, got 0; holdout "
                                            r"must be an integer >= 0, got -1; --generator mlm needs --mlm-teacher"):
        AgoraSettings(grid="g.json", reference="r", generator="mlm", per_error=0, holdout=-1)
    with pytest.raises(SettingsError, match="reference must name the fine-tuned model that labels the generated "
                                            "points, got ''"):
        AgoraSettings(grid="g.json", reference="")
    assert not out.exists()


def test_grid_keep_checkpoints_overrides_the_grid_files_setting(tiny, tmp_path):
    cand, _ = tiny
    settings = grid_mod.GridSettings(grid=str(_grid_file(tmp_path, cand, [1e-3])), output_dir=str(tmp_path / "o"),
                                     progress=False, keep_checkpoints=False)
    summary = grid_mod.GridRecipe(settings).run()
    assert summary["trials"] == 1 and summary["best"] == summary["results"][0]
    assert not (tmp_path / "o" / "trials" / summary["best"]["id"] / "best").exists()
    assert (tmp_path / "o" / "results.json").exists()
