"""Hostile checkpoints and contested output directories: a planted trainer.pt cannot run code, two runs never
share a directory, a new run never reuses an old run's outputs by accident, a resume with other settings is
refused, a full disk is reported with the file and errno and leaves nothing half-written, and the logged
learning rate is the one the step used."""
from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bort.atomic import WriteError
from bort.checkpoint.errors import CheckpointError
from bort.data.instances import InstanceSettings
from bort.data.pretraining import create_pretraining_data
from bort.data.recordio import RecordIOReader, RecordIOWriter
from bort.distill.recipe import DistillSettings, run_distillation
from bort.lra import listops_gen
from bort.lra.runner import LRARecipe, LRASettings, run_lra
from bort.tokenization import load_tokenizer
from bort.train import checkpointing
from bort.train.metrics import read_jsonl
from bort.train.run_dir import OWNER_NAME, OutputDirInUse, RunDirError, claim_output_dir, lock_output_dir
from bort.train.schedule import WarmupDecay
from conftest import REPO, make_minilm_shards, shared_path
from hf_helpers import minilm_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

STUDENT = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 4,
                      "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 64,
                      "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
SAMPLE = REPO / "test_data" / "sample_text.txt"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_minilm_shards(tmp_path_factory.mktemp("data"))


def _distill(data: Path, out: Path, **extra) -> DistillSettings:
    values = dict(train=[str(data / "train" / "part-*.rec")], student=STUDENT, output_dir=str(out), batch_size=4,
                  max_steps=4, lr=1e-3, warmup_ratio=0.5, log_interval=1, eval_interval=0, checkpoint_interval=2,
                  progress=False, plot=False, seed=3)
    values.update(extra)
    return DistillSettings(**values)


@pytest.fixture(scope="module")
def listops_tsv(tmp_path_factory) -> Path:
    """Short generated ListOps rows (LRA's layout): a fast LRA training set."""
    rows = listops_gen.generate_rows({"all": 160}, listops_gen.ListOpsSpec(min_length=5, max_length=40,
                                                                           max_depth=3), seed=0)["all"]
    return listops_gen.write_tsv(tmp_path_factory.mktemp("listops") / "rows.tsv", rows)


def _lra(data: Path, out: Path | None, **extra) -> LRASettings:
    values = dict(data=str(data), output_dir=str(out) if out else None, max_steps=4, batch_size=8, lr=1e-3,
                  warmup_ratio=0.5, eval_interval=2, dev_size=30, test_size=30, progress=False, log_interval=1)
    values.update(extra)
    return LRASettings(**values)


# --- a planted trainer.pt -------------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this calls os.mkdir(marker): what a planted trainer.pt would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant(checkpoint: Path, marker: Path) -> Path:
    """Replace the checkpoint's trainer.pt by a pickle that runs code when loaded the unsafe way, after proving
    on a copy that it really does (otherwise the test could not fail)."""
    probe_marker = marker.with_name(marker.name + "-probe")
    probe = io.BytesIO()
    torch.save({"step": _RunsCode(probe_marker)}, probe)
    probe.seek(0)
    torch.load(probe, weights_only=False)
    assert probe_marker.is_dir(), "the planted pickle must run code under an unsafe load"
    target = checkpoint / checkpointing.TRAINER_STATE
    torch.save({"step": _RunsCode(marker), "optimizer": {}}, target)
    return target


@pytest.mark.parametrize("runner", ["distillation", "lra"])
def test_planted_pickle_in_a_checkpoint_is_refused(runner, request, tmp_path):
    run, settings, inputs = {"distillation": (run_distillation, _distill, "data"),
                             "lra": (run_lra, _lra, "listops_tsv")}[runner]
    inputs = request.getfixturevalue(inputs)
    out = tmp_path / "run"
    run(settings(inputs, out))
    planted = _plant(out / "checkpoints" / "step-0000004", tmp_path / "pwned")
    with pytest.raises(CheckpointError) as err:
        run(settings(inputs, out, resume=True))
    assert str(planted) in str(err.value) and "refused" in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_trainer_state_of_the_wrong_shape_is_a_named_error(tmp_path):
    checkpoint = tmp_path / "step-0000001"
    checkpoint.mkdir()
    torch.save([1, 2], checkpoint / checkpointing.TRAINER_STATE)
    with pytest.raises(CheckpointError, match=r"trainer.pt: expected a dict of training state, got list"):
        checkpointing.load_trainer_state(checkpoint)
    torch.save({"step": "7"}, checkpoint / checkpointing.TRAINER_STATE)
    with pytest.raises(CheckpointError, match=r"trainer.pt: training state 'step' should be int, got str"):
        checkpointing.load_trainer_state(checkpoint, {"step": int})
    with pytest.raises(CheckpointError, match=r"trainer.pt: training state has no 'optimizer'"):
        checkpointing.load_trainer_state(checkpoint, {"optimizer": dict})
    whole = io.BytesIO()
    torch.save({"step": 1, "moments": torch.zeros(64)}, whole)
    (checkpoint / checkpointing.TRAINER_STATE).write_bytes(whole.getvalue()[:-40])  # a truncated copy
    with pytest.raises(CheckpointError, match=r"trainer.pt: cannot read training state \(RuntimeError: .*zip"):
        checkpointing.load_trainer_state(checkpoint)


def test_resume_refuses_optimiser_state_that_does_not_fit_the_model(data, tmp_path):
    out = tmp_path / "run"
    run_distillation(_distill(data, out))
    path = out / "checkpoints" / "step-0000004" / checkpointing.TRAINER_STATE
    original = path.read_bytes()
    state = torch.load(path, weights_only=True)
    first = next(iter(state["optimizer"]["state"].values()))
    key = next(k for k, v in first.items() if isinstance(v, torch.Tensor) and v.dim() > 0)
    first[key] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"trainer.pt: optimiser state '{key}' has shape \(3, 3\)"):
        run_distillation(_distill(data, out, resume=True))
    state = torch.load(io.BytesIO(original), weights_only=True)
    state["scheduler"]["last_epoch"] = 2
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"trainer.pt: the schedule is at step 2, the training state at step 4"):
        run_distillation(_distill(data, out, resume=True))
    path.write_bytes(original)
    assert run_distillation(_distill(data, out, resume=True, max_steps=5,
                                     allow_setting_change=["max_steps"]))["steps"] == 5


# --- one run per output directory --------------------------------------------------------------------------------
def test_a_second_run_into_a_held_directory_is_refused_with_the_owners_pid(data, tmp_path):
    out = tmp_path / "run"
    with lock_output_dir(out):  # "run A", holding the directory and logging
        (out / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
        start = time.perf_counter()
        with pytest.raises(OutputDirInUse) as err:
            run_distillation(_distill(data, out))
        assert time.perf_counter() - start < 5  # refused before any data or model is loaded
        assert f"pid {os.getpid()}" in str(err.value) and "in use by another run" in str(err.value)
        assert (out / "metrics.jsonl").read_text() == '{"event": "train", "step": 1}\n'
        assert json.loads((out / OWNER_NAME).read_text())["pid"] == os.getpid()
    assert not (out / OWNER_NAME).exists()  # released: the record goes with the lock


def _cli(data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, str(REPO / "run_pretraining_distillation.py"),
            "--train", str(data / "train" / "part-*.rec"),
            "--student", STUDENT, "--output-dir", str(out), "--batch-size", "4", "--max-steps", str(steps),
            "--log-interval", "1", "--eval-interval", "0", "--checkpoint-interval", "0", "--no-progress", "--no-plot"]


def _train_lines(path: Path) -> int:
    """Complete train records in a log another process is writing (a line may be caught half-written)."""
    try:
        return len([r for r in read_jsonl(path) if r.get("event") == "train"])
    except (FileNotFoundError, ValueError):
        return 0


def test_two_trainers_started_half_a_second_apart(data, tmp_path):
    """The reported race: B started 0.5 s after A into the same directory. Exactly one run proceeds; the other
    is refused at once naming the first's pid, and the survivor's metrics.jsonl stays whole."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    a = subprocess.Popen(_cli(data, out, 100000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env)
    time.sleep(0.5)
    b = subprocess.Popen(_cli(data, out, 100000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env)
    try:
        deadline = time.time() + 240
        while a.poll() is None and b.poll() is None:
            assert time.time() < deadline, "neither run was refused"
            time.sleep(0.05)
        loser, winner = (a, b) if a.poll() is not None else (b, a)
        assert winner.poll() is None, "the refused run must end while the owner still runs"
        assert loser.returncode == 2
        message = loser.stderr.read()
        assert f"pid {winner.pid}" in message and "in use by another run" in message, message
        while _train_lines(out / "metrics.jsonl") < 3:
            assert winner.poll() is None and time.time() < deadline
            time.sleep(0.05)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "train"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3


def test_a_new_run_into_a_finished_runs_directory_is_refused_and_prunes_nothing(data, tmp_path):
    out = tmp_path / "run"
    run_distillation(_distill(data, out, max_steps=6, keep_checkpoints=0))
    (out / "notes.txt").write_text("mine")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError) as err:
        run_distillation(_distill(data, out, max_steps=6, keep_checkpoints=1))
    message = str(err.value)
    assert "already holds the outputs of an earlier run" in message and "checkpoints" in message
    assert "--resume" in message and "--overwrite" in message
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in checkpointing.checkpoint_dirs(out / "checkpoints")] == [
        "step-0000002", "step-0000004", "step-0000006"]
    # --overwrite replaces the earlier run's outputs, and only those: the user's file stays.
    run_distillation(_distill(data, out, max_steps=2, overwrite=True))
    assert [p.name for p in checkpointing.checkpoint_dirs(out / "checkpoints")] == ["step-0000002"]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(RunDirError, match="exclude each other"):
        run_distillation(_distill(data, out, resume=True, overwrite=True))


def test_resume_with_another_seed_or_lr_is_refused_naming_them(data, tmp_path):
    out = tmp_path / "run"
    run_distillation(_distill(data, out))
    with pytest.raises(CheckpointError) as err:
        run_distillation(_distill(data, out, resume=True, seed=4, lr=2e-3))
    message = str(err.value)
    assert "settings differ" in message and "seed 3 → 4" in message and "lr 0.001 → 0.002" in message
    assert "step-0000004" in message and "--allow-setting-change" in message
    with pytest.raises(CheckpointError, match="max_steps 4 → 6"):
        run_distillation(_distill(data, out, resume=True, max_steps=6))
    with pytest.raises(CheckpointError, match="not_a_setting is not a setting"):
        run_distillation(_distill(data, out, resume=True, allow_setting_change=["not_a_setting"]))
    # Explicitly allowed: a longer run continues from step 4, on a schedule stretched to the new length.
    summary = run_distillation(_distill(data, out, resume=True, max_steps=6, allow_setting_change=["max_steps"]))
    assert summary["steps"] == 6
    train = [r for r in read_jsonl(out / "metrics.jsonl") if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert train[4]["lr"] == pytest.approx(1e-3 * WarmupDecay(6, 3)(4)) and train[4]["lr"] > 0


def test_lra_refuses_a_fresh_run_over_an_earlier_one_instead_of_deleting_it(listops_tsv, tmp_path):
    out = tmp_path / "run"
    run_lra(_lra(listops_tsv, out))
    best = (out / "best" / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds the outputs of an earlier run"):
        run_lra(_lra(listops_tsv, out, seed=1))
    assert (out / "best" / "model.safetensors").read_bytes() == best
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000004"]
    with pytest.raises(CheckpointError, match=r"settings differ.*seed 0 → 1"):
        run_lra(_lra(listops_tsv, out, seed=1, resume=True))


def test_claim_overwrite_removes_only_the_named_artefacts(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-0000001").mkdir(parents=True)
    (out / "checkpoints" / "step-0000001" / "trainer.pt").write_bytes(b"x")
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "data.txt").write_text("keep")
    (out / "final").mkdir()  # empty: not an earlier run's output
    with claim_output_dir(out, ("checkpoints", "metrics.jsonl", "final"), overwrite=True) as held:
        assert held.held
        assert sorted(p.name for p in out.iterdir()) == [".bort-run.lock", OWNER_NAME, "data.txt", "final"]
    assert not held.held


def _runners(tmp_path: Path) -> dict:
    """Each command that writes an output directory, started into `out` with inputs that are never reached
    (nothing is read before the directory is claimed)."""
    from bort.finetune.agora_recipe import AgoraSettings, run_agora
    from bort.finetune.grid import load_grid, run_grid
    from bort.finetune.runner import FinetuneSettings, run_finetune
    from bort.search.runner import SearchSettings, run_search

    grid = {"task": "SST-2", "model": str(tmp_path / "model"), "data_dir": str(tmp_path), "grid": {"lr": [1e-4]}}
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps(grid))
    return {
        "finetune": lambda out: run_finetune(FinetuneSettings(task="SST-2", model=str(tmp_path / "model"),
                                                              data_dir=str(tmp_path), output_dir=str(out))),
        "grid": lambda out: run_grid(load_grid(grid), out, progress=False),
        "agora": lambda out: run_agora(AgoraSettings(grid=str(grid_file), reference="unused", output_dir=str(out))),
        "search": lambda out: run_search(SearchSettings(space=str(tmp_path / "space.json"), train=["x.rec"],
                                                        test=["y.rec"], output_dir=str(out))),
        "lra": lambda out: run_lra(_lra(tmp_path / "rows.tsv", out)),
    }


def test_an_output_directory_that_is_a_file_is_a_named_error(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(RunDirError, match=r"out: cannot be used as an output directory: .*File exists"):
        claim_output_dir(tmp_path / "out", ("checkpoints",))
    assert (tmp_path / "out").read_text() == "not a directory"


@pytest.mark.parametrize("name", ["finetune", "grid", "agora", "search", "lra"])
def test_every_runner_refuses_a_directory_another_run_holds(tmp_path, name):
    out = tmp_path / "out"
    with lock_output_dir(out):
        with pytest.raises(OutputDirInUse, match=f"in use by another run: pid {os.getpid()} on host"):
            _runners(tmp_path)[name](out)


@pytest.mark.parametrize("name, artefact", [("finetune", "metrics.json"), ("agora", "agora.json"),
                                            ("lra", "results.json")])
def test_runners_refuse_an_earlier_runs_outputs(tmp_path, name, artefact):
    out = tmp_path / "out"
    out.mkdir()
    (out / artefact).write_text("{}")
    with pytest.raises(RunDirError, match=f"already holds the outputs of an earlier run \\({artefact}\\)"):
        _runners(tmp_path)[name](out)
    assert (out / artefact).read_text() == "{}"


def test_a_grid_resumes_only_with_the_settings_its_trials_were_run_with(tmp_path):
    from bort.finetune.grid import SETTINGS_FILE, load_grid, run_grid, shared_settings

    out = tmp_path / "out"
    out.mkdir()
    spec = load_grid({"task": "SST-2", "model": "other-model", "grid": {"lr": [1e-4]}})
    (out / SETTINGS_FILE).write_text(json.dumps(shared_settings(spec.settings)))
    (out / "trials" / "0123456789ab").mkdir(parents=True)
    (out / "trials" / "0123456789ab" / "result.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"other settings: model 'other-model' → '[^']*new-model'.*--overwrite"):
        run_grid(load_grid({"task": "SST-2", "model": str(tmp_path / "new-model"), "grid": {"lr": [1e-4]}}), out,
                 progress=False)
    assert (out / "trials" / "0123456789ab" / "result.json").read_text() == "{}"


# --- data creation ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_tokenizer():
    return load_tokenizer(minilm_dir() / "vocab.txt")


def test_two_writers_of_one_shard_never_mix_their_records(tmp_path):
    """The 417 / 15,949 report: two runs wrote through one fixed temporary name. Now each writer has its own
    temporary file, and the shard that lands is one writer's, whole."""
    path = tmp_path / "part-000.rec"
    small, big = RecordIOWriter(path), RecordIOWriter(path)
    for i in range(5):
        small.write(b"small %d" % i)
    for i in range(50):
        big.write(b"big %d" % i)
    assert len(list(tmp_path.glob(".part-000.*.tmp"))) == 4  # .rec and .idx of each writer
    big.close()
    small.close()
    with RecordIOReader(path) as reader:
        records = list(reader)
    assert records == [b"small %d" % i for i in range(5)]
    assert (tmp_path / "part-000.idx").read_text().count("\n") == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-000.idx", "part-000.rec"]


def test_data_creation_refuses_a_directory_another_run_holds(tmp_path, bert_tokenizer):
    out = tmp_path / "data"
    with lock_output_dir(out):
        with pytest.raises(OutputDirInUse, match=f"pid {os.getpid()}"):
            create_pretraining_data(str(SAMPLE), out, bert_tokenizer, InstanceSettings(max_seq_length=48),
                                    progress=False)
        assert sorted(p.name for p in out.iterdir()) == [".bort-run.lock", OWNER_NAME]  # nothing written
    assert not out.exists()  # the holder made it and wrote nothing: it leaves no empty directory


@contextmanager
def _file_size_limit(nbytes: int):
    """Writes past `nbytes` fail with EFBIG, as the kernel reports a full quota (no root, no mount needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_data_creation_on_a_full_disk_names_the_shard_and_leaves_no_temporary(tmp_path, bert_tokenizer):
    out = tmp_path / "data"
    with _file_size_limit(4_000), pytest.raises(WriteError) as err:  # the shard is ~14 KB
        create_pretraining_data(str(SAMPLE), out, bert_tokenizer, InstanceSettings(max_seq_length=48, dupe_factor=5),
                                progress=False)
    assert err.value.errno == errno.EFBIG and str(out / "part-000.rec") in str(err.value)
    assert "EFBIG" in str(err.value)
    assert not out.exists()  # no .tmp, no shard, no lock: the failed run made the directory and removed it
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    with _file_size_limit(4_000), pytest.raises(WriteError):
        create_pretraining_data(str(SAMPLE), out, bert_tokenizer, InstanceSettings(max_seq_length=48, dupe_factor=5),
                                progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".bort-run.lock", "notes.txt"]


def test_data_creation_stopped_by_sigterm_leaves_no_temporary(tmp_path):
    """A job scheduler's SIGTERM in the middle of writing: the run ends through its cleanup (exit 143) and the
    directory holds no temporary file and no half shard."""
    text = shared_path("data", "pretrain", "tinyshakespeare.txt")
    out = tmp_path / "data"
    cmd = [sys.executable, str(REPO / "create_pretraining_data.py"), "--input_file", f"{text},{text},{text}",
           "--output_dir", str(out), "--vocab", str(minilm_dir() / "vocab.txt"), "--quiet", "--dupe_factor", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while not list(out.glob(".part-000.rec.*.tmp")):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not out.exists()  # the run made it; interrupted, it leaves neither temporaries nor the directory


# --- a full disk while checkpointing ---------------------------------------------------------------------------------
class _FullDisk(io.RawIOBase):
    """A file object over `handle` that fails like a full disk after `room` bytes."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)


def _tiny_model():
    from bort import BortConfig, BortForMaskedLM

    return BortForMaskedLM(BortConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=8, max_position_embeddings=16))


def test_a_full_disk_while_writing_trainer_state_names_the_file_and_errno(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    model = _tiny_model()
    state = {"step": 2, "optimizer": {"state": {0: {"exp_avg": torch.zeros(4000)}}}}
    checkpointing.save_checkpoint(root, 2, model, state)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, _FullDisk(f, 1000), *a, **k))
    with pytest.raises(WriteError) as err:
        checkpointing.save_checkpoint(root, 4, model, {**state, "step": 4})
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC and "ENOSPC" in message and "No space left on device" in message
    assert str(root / "step-0000004" / "trainer.pt") in message and "unexpected pos" not in message
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002"]  # nothing partial, the earlier one kept
    assert checkpointing.load_trainer_state(root / "step-0000002")["step"] == 2


def test_a_real_write_failure_of_model_or_state_is_reported_the_same_way(tmp_path):
    root = tmp_path / "checkpoints"
    with _file_size_limit(50_000), pytest.raises(WriteError) as err:  # torch.save of 400 KB through the kernel
        checkpointing.write_checkpoint(root, 1, lambda d: (d / "model.bin").write_bytes(b"m"),
                                       {"big": torch.zeros(100_000)})
    assert err.value.errno == errno.EFBIG and str(root / "step-0000001" / "trainer.pt") in str(err.value)
    with _file_size_limit(1_000), pytest.raises(WriteError) as err:  # safetensors (Rust) reports "os error 27"
        checkpointing.save_checkpoint(root, 1, _tiny_model(), {"step": 1})
    assert err.value.errno == errno.EFBIG and str(root / "step-0000001" / "model.safetensors") in str(err.value)
    assert list(root.iterdir()) == []


# --- the logged learning rate --------------------------------------------------------------------------------------
def test_logged_lr_is_the_rate_each_distillation_step_used(data, tmp_path):
    run_distillation(_distill(data, tmp_path / "run", max_steps=6, checkpoint_interval=0))
    logged = [r["lr"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    schedule = WarmupDecay(6, 3)  # warmup_ratio 0.5
    assert logged[0] == pytest.approx(1e-3 / 3)  # the warmup's first value
    assert logged == pytest.approx([1e-3 * schedule(n - 1) for n in range(1, 7)])


def test_logged_lr_is_the_rate_each_lra_step_used(listops_tsv):
    records: list[dict] = []
    trainer = LRARecipe(_lra(listops_tsv, None, max_steps=6), on_event=records.append).build()
    trainer.train_steps(6)
    logged = [r["lr"] for r in records if r["event"] == "train"]
    assert logged == pytest.approx([1e-3 * WarmupDecay(6, 3)(n - 1) for n in range(1, 7)])
    assert logged[0] == pytest.approx(1e-3 / 3)
