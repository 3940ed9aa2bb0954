"""The distillation recipe end to end on real text: learning, torchrun equivalence, kill -9 + resume,
non-finite losses, and clear errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bort import BortConfig, BortForMaskedLM, save_pretrained
from bort.distill import recipe as recipe_module
from bort.distill.recipe import DistillSettings, NonFiniteLossError, run_distillation
from bort.train.metrics import read_jsonl

from conftest import make_minilm_shards, save_tiny_mlm_teacher
from hf_helpers import REPO, minilm_dir

# No dropout: a curve can only be identical across world sizes if the noise is too.
STUDENT = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 4,
                      "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 64,
                      "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Pretraining shards from the repository's real sample text with the real MiniLM WordPiece vocabulary."""
    return make_minilm_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_tiny_mlm_teacher(tmp_path_factory.mktemp("teacher"))


def _settings(data: Path, out: Path, **extra) -> DistillSettings:
    values = dict(train=[str(data / "train" / "part-*.rec")], test=[str(data / "train" / "part-000.rec")],
                  student=STUDENT, output_dir=str(out), batch_size=8, max_steps=5, lr=1e-3, warmup_ratio=0.2,
                  log_interval=1, eval_interval=0, checkpoint_interval=0, progress=False, seed=3)
    values.update(extra)
    return DistillSettings(**values)


def test_kd_distillation_learns_and_writes_everything(data, teacher, tmp_path):
    summary = run_distillation(_settings(data, tmp_path, teacher=str(teacher), max_steps=30, eval_interval=15,
                                         eval_batches=2, checkpoint_interval=10))
    assert summary["steps"] == 30 and summary["skipped_steps"] == 0
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 31))
    first, last = sum(r["loss"] for r in train[:5]) / 5, sum(r["loss"] for r in train[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert all({"mlm", "kd", "teacher_mse"} <= set(r) for r in train)
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [15, 30] and "eval_kd" in evals[0]
    assert evals[1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000010", "step-0000020",
                                                                             "step-0000030"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_minilm_teacher_without_mlm_head_uses_hidden_and_attention_matching(data, tmp_path):
    summary = run_distillation(_settings(data, tmp_path, teacher=str(minilm_dir()), max_steps=3))
    last = summary["last"]
    assert "kd" not in last and last["hidden"] > 0 and last["attention"] > 0


def _torchrun(args: list[str], nproc: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(REPO / "run_pretraining_distillation.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _cli_args(data: Path, teacher: Path, out: Path, batch: int, steps: int = 5) -> list[str]:
    return ["--train", str(data / "train" / "part-*.rec"), "--teacher", str(teacher), "--student", STUDENT,
            "--output-dir", str(out), "--batch-size", str(batch), "--max-steps", str(steps), "--lr", "1e-3",
            "--warmup-ratio", "0.2", "--log-interval", "1", "--eval-interval", "0", "--checkpoint-interval", "0",
            "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def one_process_curve(data, teacher, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("one")
    one = _torchrun(_cli_args(data, teacher, out, batch=8), nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "train"]


def _assert_same_curve(reference: list[dict], out: Path) -> None:
    got = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "train"]
    assert len(reference) == len(got) == 5
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    for x, y in zip(reference, got):
        assert x["masked_tokens"] == y["masked_tokens"]
        assert abs(x["loss"] - y["loss"]) <= 1e-5, (x["step"], x["loss"], y["loss"])


def test_two_process_torchrun_follows_the_one_process_curve(data, teacher, one_process_curve, tmp_path):
    two = _torchrun(_cli_args(data, teacher, tmp_path / "two", batch=4), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_curve(one_process_curve, tmp_path / "two")


def _mpirun() -> str:
    required = os.environ.get("BORT_MPI_REQUIRED")
    mpirun = shutil.which("mpirun")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpirun = None
    if mpirun is None:
        reason = "MPI launch needs mpirun (Debian openmpi-bin) and mpi4py"
        pytest.fail(reason) if required else pytest.skip(reason)
    return mpirun


def test_mpi_launch_trains_like_one_process(data, teacher, one_process_curve, tmp_path):
    mpirun = _mpirun()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "OMP_NUM_THREADS", "-x", "PYTHONPATH",
           sys.executable, str(REPO / "run_pretraining_distillation_hvd.py"),
           *_cli_args(data, teacher, tmp_path / "mpi", batch=4)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "(mpi, cpu)" in run.stderr
    _assert_same_curve(one_process_curve, tmp_path / "mpi")


def test_a_dying_rank_makes_the_others_exit_instead_of_hanging(data, teacher, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).parent / "helpers" / "dying_rank.py"),
           *_cli_args(data, teacher, tmp_path / "dies", batch=4, steps=20)]
    start = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert time.time() - start < 120
    assert "exitcode  : 17" in run.stderr  # torchrun names the rank that died and how


def test_bf16_autocast_trains(data, teacher, tmp_path):
    summary = run_distillation(_settings(data, tmp_path, teacher=str(teacher), precision="bf16", max_steps=3))
    assert summary["skipped_steps"] == 0 and math.isfinite(summary["last"]["loss"])


def test_kill_minus_nine_then_resume_gives_bitwise_identical_weights(data, teacher, tmp_path):
    base = _cli_args(data, teacher, tmp_path / "x", batch=4, steps=12)
    base += ["--checkpoint-interval", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    script = str(REPO / "run_pretraining_distillation.py")
    ref_args = [a if a != str(tmp_path / "x") else str(tmp_path / "ref") for a in base]
    # dropout on: resume must reproduce the noise too
    noisy = STUDENT.replace('"hidden_dropout_prob": 0.0', '"hidden_dropout_prob": 0.1')
    ref_args = [noisy if a == STUDENT else a for a in ref_args]
    run_args = [noisy if a == STUDENT else a for a in base]
    ref = subprocess.run([sys.executable, script, *ref_args], capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    victim = subprocess.Popen([sys.executable, script, *run_args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (tmp_path / "x" / "checkpoints" / "step-0000004").exists():
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "x" / "final").exists()
    resumed = subprocess.run([sys.executable, script, *run_args, "--resume"], capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = load_file(tmp_path / "ref" / "final" / "model.safetensors"), load_file(tmp_path / "x" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in read_jsonl(tmp_path / "x" / "metrics.jsonl") if r["event"] == "train"]
    assert steps == list(range(1, 13)), "the resumed log reads as one run"


def test_non_finite_losses_are_skipped_counted_and_limited(data, tmp_path, monkeypatch):
    original = recipe_module._StudentWithLoss.forward
    calls = {"n": 0}

    def sometimes_nan(self, batch, teacher_out):
        total, parts = original(self, batch, teacher_out)
        calls["n"] += 1
        if calls["n"] in (2, 4):
            total = total * float("nan")
        return total, parts

    monkeypatch.setattr(recipe_module._StudentWithLoss, "forward", sometimes_nan)
    summary = run_distillation(_settings(data, tmp_path / "ok", max_steps=5))
    assert summary["skipped_steps"] == 2 and summary["steps"] == 5
    weights = load_file(tmp_path / "ok" / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match="2 steps had non-finite losses"):
        run_distillation(_settings(data, tmp_path / "stop", max_steps=5, max_bad_steps=1))


def test_clear_errors_for_mismatched_inputs(data, tmp_path):
    roberta_teacher = tmp_path / "roberta"
    save_pretrained(BortForMaskedLM(BortConfig.preset("roberta-base", hidden_size=16, num_attention_heads=2,
                                                      intermediate_size=16, num_hidden_layers=1)), roberta_teacher)
    with pytest.raises(ValueError, match="teacher .* has 50265 ids but the data .* 30522-id vocabulary"):
        run_distillation(_settings(data, tmp_path / "a", teacher=str(roberta_teacher)))
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        run_distillation(_settings(data, tmp_path / "b", batch_size=100000))
    with pytest.raises(FileNotFoundError, match="no pretraining shard matches .*missing"):
        run_distillation(_settings(data, tmp_path / "c", train=[str(tmp_path / "missing-*.rec")]))


def test_student_initialised_from_teacher_layers(data, teacher, tmp_path):
    same_width = json.dumps({"preset": "bert-base", "hidden_size": 32, "num_attention_heads": 4,
                             "intermediate_size": 64, "num_hidden_layers": 2, "max_position_embeddings": 64})
    run_distillation(_settings(data, tmp_path, teacher=str(teacher), student=same_width, student_init="teacher",
                               max_steps=1, lr=0.0))
    student = load_file(tmp_path / "final" / "model.safetensors")
    source = load_file(teacher / "model.safetensors")
    assert torch.equal(student["bort.embeddings.word_embeddings.weight"], source["bort.embeddings.word_embeddings.weight"])
    # 2 student layers over 3 teacher layers: student layer 1 ← teacher layer 2, layer 2 ← layer 3
    for s_idx, t_idx in ((0, 1), (1, 2)):
        key = "bort.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(student[key.format(s_idx)], source[key.format(t_idx)])
    with pytest.raises(Exception, match="shapes differ"):
        run_distillation(_settings(data, tmp_path / "bad", teacher=str(teacher), student_init="teacher"))


def test_settings_are_checked_when_built_every_problem_at_once(tmp_path):
    from bort.distill.recipe import DistillationRecipe
    from bort.train.recipe import Recipe
    from bort.train.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        DistillSettings(train=["x.rec"], batch_size=0, accumulate=True, lr=-1e-4, warmup_ratio=1.0,
                        optimizer="sgd", schedule="cosine", precision="fp8", student_init="copy", log_interval=0,
                        eval_interval=-1, max_steps=0, temperature=0.0, launcher="slurm", progress="no")
    message = str(err.value)
    assert message.startswith("DistillSettings: ")
    for part in ("batch_size must be a positive integer, got 0", "accumulate must be a positive integer, got True",
                 "lr must be >= 0, got -0.0001", "warmup_ratio must be in [0, 1), got 1.0",
                 "optimizer 'sgd' is not one of adamw, bertadam", "schedule 'cosine' is not one of linear, poly",
                 "precision 'fp8' is not one of fp32, bf16, fp16", "student_init 'copy' is not one of random, teacher",
                 "log_interval must be a positive integer, got 0", "eval_interval must be an integer >= 0, got -1",
                 "max_steps must be a positive integer, got 0", "temperature must be > 0, got 0.0",
                 "launcher 'slurm' is not one of auto", "progress must be true or false, got 'no'"):
        assert part in message, part
    # Copying the teacher's layers needs a teacher: refused before the output directory is claimed.
    with pytest.raises(SettingsError, match="student_init 'teacher' needs a teacher.*--student-init teacher needs "
                                            "--teacher"):
        DistillSettings(train=["x.rec"], student_init="teacher", output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    settings = DistillSettings(train="x.rec", eval_interval=0, checkpoint_interval=0, keep_checkpoints=0, lr=0.0)
    assert settings.train == ["x.rec"] and issubclass(DistillationRecipe, Recipe)
