"""bench/trilogy.py, the end-to-end experiment, in its quick mode: every stage runs on the real MiniLM teacher and
the distilled student learns (held-out MLM loss below the untrained student's); a kill during distillation
resumes at that stage and step; a missing input names its stage and file."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import shared_path
from hf_helpers import REPO, minilm_dir

sys.path.insert(0, str(REPO))
from bench import trilogy  # noqa: E402


def _state(work: Path) -> dict:
    return json.loads((work / "state.json").read_text(encoding="utf-8"))


def _train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in trilogy.read_records(run_dir / "metrics.jsonl") if r.get("event") == "train"]


def test_quick_runs_every_stage_and_the_distilled_student_learns(tmp_path, capsys):
    minilm_dir()
    glue = shared_path("data", "glue", "SST-2", "dev.tsv").parents[1]  # SST-2 is not redistributable: skip without it
    out = tmp_path / "results"
    status = trilogy.main(["--quick", "--work-dir", str(tmp_path / "work"), "--out-dir", str(out),
                           "--glue-dir", str(glue)])
    assert status == 0, capsys.readouterr().err
    result = json.loads((out / "trilogy.json").read_text(encoding="utf-8"))
    assert result["stages_done"] == list(trilogy.STAGES)
    distill = result["distill"]
    assert distill["final"]["distilled"] < distill["untrained_eval_mlm_loss"]
    assert distill["final"]["control"] < distill["untrained_eval_mlm_loss"]
    assert distill["final"]["extracted_mlm"] < distill["extracted_eval_mlm_loss"]
    models = {row["model"]: row for row in result["models"]}
    for name in trilogy.MODELS:
        assert 0.0 <= models[name]["test_accuracy"]["mean"] <= 1.0
        assert models[name]["test_accuracy"]["n"] == 1
    assert models["distilled"]["parameters"] < models["teacher"]["parameters"]
    assert models["distilled"]["speedup"]["median"] > 1.0
    agora, grid = result["agora_grid"]["agora"], result["agora_grid"]["grid"]
    assert grid["steps"] >= agora["steps"] > 0  # equal compute: the grid stops once it reaches Agora's steps
    infill = result["agora_grid"]["agora_mlm"]  # Agora with the distilled student's MLM head as the generator
    assert grid["steps"] >= infill["steps"] > 0
    for run in (agora, infill):
        gen = run["generated"]
        assert gen["points"] == run["added"] and gen["with_source"] == gen["points"]
        for share in ("same_as_source_gold", "same_as_reference_on_source", "reference_right_on_sources"):
            assert gen[share] is None or 0.0 <= gen[share] <= 1.0
    # the distilled student started as a sub-network of the teacher: whole heads of MiniLM's size 32
    extracted = json.loads((tmp_path / "work" / "distill" / "distilled" / "extracted.json").read_text())
    assert len(extracted["hidden"]) == 64 and all(len(layer["heads"]) == 2 for layer in extracted["layers"])
    space = json.loads((tmp_path / "work" / "search_space.json").read_text())
    assert space["head_size"] == 32 and space["distill"]["student_init"] == "extract"
    # each model's learning rate is the one its seed 0 selected on the selection rows
    ft = result["finetune"]
    for name in trilogy.MODELS:
        sweep = [r for r in ft["lr_sweep"] if r["model"] == name]
        assert [r["lr"] for r in sweep] == [1e-4, 1e-3]
        assert ft["chosen_lr"][name] == max(sweep, key=lambda r: r["select_accuracy"])["lr"]
    split = _state(tmp_path / "work")["stages"]["finetune"]["split"]
    assert split == {"train": 600, "select": 48, "test": 48, "unused": 176}
    assert set(result["stage_seconds"]) == set(trilogy.STAGES)
    text = (out / "trilogy.md").read_text(encoding="utf-8")
    assert "Quick run" in text and "Agora vs grid" in text and "held-out MLM loss" in text
    assert (out / "trilogy.png").stat().st_size > 0 and (out / "trilogy_mlm.png").stat().st_size > 0


def test_a_kill_during_distillation_resumes_at_its_stage_and_step(tmp_path):
    """The bench runs in a subprocess, is killed once the distilled student's first checkpoint exists, and the
    same command run again continues that run from the checkpoint's step (the data and search are not redone)."""
    minilm_dir()
    work = tmp_path / "work"
    argv = ["--quick", "--work-dir", str(work), "--out-dir", str(tmp_path / "results"), "--stop-after", "distill",
            "--distill-steps", "60", "--checkpoint-interval", "10"]
    run_dir = work / "distill" / "distilled"
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "trilogy.py"), *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not any((run_dir / "checkpoints").glob("step-*/trainer.pt")):
            assert proc.poll() is None, f"the run ended before a distillation checkpoint: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no distillation checkpoint within 240 s"
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait()
    assert not (run_dir / "summary.json").exists(), "the distillation finished before the kill"
    before = _state(work)
    assert before["stages"]["data"]["done"] and before["stages"]["search"]["done"]
    assert not before["stages"].get("distill", {}).get("done")
    data_seconds = before["stages"]["data"]["seconds"]
    checkpoint_step = trilogy._latest_step(run_dir / "checkpoints")
    assert checkpoint_step >= 10

    assert trilogy.main(argv) == 0
    after = _state(work)
    assert after["stages"]["distill"]["done"]
    assert after["stages"]["data"]["seconds"] == data_seconds  # finished stages are skipped, not rerun
    attempts = after["stages"]["distill"]["runs"]["distilled"]["attempts"]
    assert [a["start_step"] for a in attempts] == [0, checkpoint_step]
    steps = _train_steps(run_dir)
    assert all(steps.count(s) == 1 for s in range(1, checkpoint_step + 1)), "steps before the checkpoint redone"
    # Steps logged after the checkpoint but before the kill are logged again by the resumed run, from the step
    # after the checkpoint's.
    assert all(steps[i] == checkpoint_step + 1 for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert sorted(set(steps)) == list(range(1, 61))
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 60
    # The resumed student still learnt: its held-out MLM loss is below the untrained student's.
    runs = after["stages"]["distill"]["runs"]
    assert runs["distilled"]["eval_mlm_loss"][-1][1] < runs["untrained"]["eval_mlm_loss"][-1][1]


def test_a_missing_input_names_the_stage_and_the_file(tmp_path, capsys):
    minilm_dir()
    missing_text = tmp_path / "no_such_text.txt"
    assert trilogy.main(["--quick", "--work-dir", str(tmp_path / "a"), "--text", str(missing_text)]) == 2
    err = capsys.readouterr().err
    assert "stage data" in err and str(missing_text) in err
    assert not (tmp_path / "a" / "data").exists()  # stopped before any work

    no_glue = tmp_path / "glue"
    assert trilogy.main(["--quick", "--work-dir", str(tmp_path / "b"), "--glue-dir", str(no_glue)]) == 2
    err = capsys.readouterr().err
    assert "stage finetune" in err and str(no_glue / "SST-2" / "dev.tsv") in err

    # An earlier stage's output gone: the stage that needs it says which file.
    work = tmp_path / "c"
    assert trilogy.main(["--quick", "--work-dir", str(work), "--stop-after", "data",
                         "--out-dir", str(tmp_path / "out")]) == 0
    for shard in (work / "data" / "train").glob("part-*"):
        shard.unlink()
    assert trilogy.main(["--quick", "--work-dir", str(work), "--stop-after", "search",
                         "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "stage search" in err and str(work / "data" / "train" / "part-000.rec") in err
