"""`bort demo` learns on held-out text, the plots are readable however short the run, the logged learning rate
is the one each step used, and `--report-to tensorboard` writes event files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bort.cli import main
from bort.demo import DEFAULT_TEXT, split_text
from bort.distill.recipe import DistillSettings, run_distillation
from bort.train import metrics
from bort.train.metrics import JsonlLogger, curves_figure, loss_and_dev_figure, read_jsonl
from bort.train.schedule import WarmupDecay

from conftest import make_minilm_shards, save_tiny_mlm_teacher
from hf_helpers import minilm_dir

STUDENT = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 32, "num_attention_heads": 4,
                      "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 64})


# --- the demo ------------------------------------------------------------------------------------------------------
def test_split_text_holds_out_the_last_lines_of_each_file(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("".join(f"a{i}\n" + ("\n" if i % 3 == 2 else "") for i in range(40)), encoding="utf-8")
    second.write_text("".join(f"b{i}\n" for i in range(20)), encoding="utf-8")
    train, held_out = split_text([str(first), str(second)], tmp_path / "out", held_out=0.1, document_lines=8)
    train_lines = train.read_text(encoding="utf-8").split("\n")
    held_lines = held_out.read_text(encoding="utf-8").split("\n")
    assert [x for x in held_lines if x] == [f"a{i}" for i in range(36, 40)] + ["b18", "b19"]
    assert [x for x in train_lines if x] == [f"a{i}" for i in range(36)] + [f"b{i}" for i in range(18)]
    # Documents of 8 lines: a blank line after a0..a7, none inside them.
    assert train_lines[:9] == [f"a{i}" for i in range(8)] + [""]


def test_split_text_refuses_a_file_too_short_to_hold_lines_out(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a single line\n", encoding="utf-8")
    with pytest.raises(ValueError, match="one.txt: 1 non-blank lines are too few"):
        split_text([str(one)], tmp_path / "out")


def test_the_demo_ships_its_text_and_reads_nothing_beside_the_repository():
    assert DEFAULT_TEXT.is_file() and DEFAULT_TEXT.stat().st_size > 1_000_000  # Tiny Shakespeare, 40k lines
    source = (Path(__file__).resolve().parents[1] / "bort" / "demo.py").read_text(encoding="utf-8")
    assert "shared" not in source


def test_tiny_demo_eval_mlm_loss_falls_on_held_out_text(tmp_path, capsys):
    """The demo end to end at a small size: its evaluation MLM loss, on lines training never saw, falls."""
    out = tmp_path / "demo"
    assert main(["demo", "--teacher", str(minilm_dir()), "--output-dir", str(out), "--steps", "60",
                 "--batch-size", "8", "--max-seq-length", "64", "--student", STUDENT, "--lr", "2e-3",
                 "--eval-batches", "4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evals = [r for r in read_jsonl(out / "distill" / "metrics.jsonl") if r["event"] == "eval"]
    assert len(evals) == 5 and evals[0]["step"] == 12 and evals[-1]["step"] == 60
    first, last = evals[0]["eval_mlm_loss"], evals[-1]["eval_mlm_loss"]
    assert last < first, [r["eval_mlm_loss"] for r in evals]
    assert (summary["first_eval_mlm_loss"], summary["final_eval_mlm_loss"]) == (first, last)
    # Evaluated on the held-out part: the last tenth of the text's lines, after every line trained on.
    lines = [x for x in DEFAULT_TEXT.read_text(encoding="utf-8").splitlines() if x.strip()]
    train = [x for x in (out / "data" / "text" / "train.txt").read_text(encoding="utf-8").splitlines() if x]
    held_out = [x for x in (out / "data" / "text" / "held_out.txt").read_text(encoding="utf-8").splitlines() if x]
    assert train + held_out == lines and len(held_out) == round(len(lines) * 0.1)
    assert (out / "distill" / "loss.png").stat().st_size > 0


# --- plots ---------------------------------------------------------------------------------------------------------
def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_one_point_finetune_curve_is_drawn_with_a_marker():
    records = [{"event": "train", "step": 1, "loss": 0.7}, {"event": "eval", "step": 1, "acc": 0.5}]
    fig = loss_and_dev_figure(records, "SST-2", "acc", "dev acc")
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 2 and all(line.get_marker() == "o" for line in lines)
    _close(fig)


def test_long_curves_are_plain_lines_and_the_png_is_written(tmp_path):
    records = [{"event": "train", "step": s, "loss": 1 / s} for s in range(1, 101)]
    fig = loss_and_dev_figure(records, "SST-2", "acc", "dev acc")
    assert [line.get_marker() for line in fig.axes[0].get_lines()] == ["None"]
    _close(fig)
    path = metrics.plot_loss_and_dev(records, tmp_path / "curves.png", "SST-2", "acc", "dev acc")
    assert path.stat().st_size > 0


def test_distillation_plot_puts_losses_and_accuracy_on_separate_axes():
    records = [{"event": "train", "step": 1, "loss": 3.0, "mlm": 9.0, "hidden": 0.05},
               {"event": "eval", "step": 1, "eval_mlm_loss": 5.0, "eval_hidden": 0.04, "eval_mlm_accuracy": 0.1}]
    fig = curves_figure(records)
    by_title = {ax.get_title().removeprefix("distillation: "): ax for ax in fig.axes}
    assert by_title["training losses"].get_yscale() == "log"
    labels = {title: [line.get_label() for line in ax.get_lines()] for title, ax in by_title.items()}
    assert labels == {"training losses": ["loss", "mlm", "hidden"], "evaluation MLM loss": ["eval_mlm_loss"],
                      "evaluation distillation terms": ["eval_hidden"],
                      "evaluation MLM accuracy": ["eval_mlm_accuracy"]}
    assert all(line.get_marker() == "o" for ax in fig.axes for line in ax.get_lines())
    _close(fig)


# --- the logged learning rate ----------------------------------------------------------------------------------------
def test_finetune_logs_the_rate_each_step_used(tmp_path, monkeypatch):
    from bort.data.tasks import get_task
    from bort.data.tasks.base import Example
    from bort.finetune import heads, trainer
    from bort.finetune.batching import encode_task_examples
    from bort.tokenization import load_tokenizer

    used: list[float] = []
    build = trainer.build_optimizer

    def recording(*args, **kwargs):
        optimizer = build(*args, **kwargs)
        optimizer.register_step_pre_hook(lambda opt, a, k: used.append(opt.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(trainer, "build_optimizer", recording)
    task = get_task("SST-2")
    lines = [x for x in DEFAULT_TEXT.read_text(encoding="utf-8").splitlines() if x.strip()][:24]
    examples = [Example(guid=str(i), text_a=line, label=i % 2) for i, line in enumerate(lines)]
    tokenizer = load_tokenizer(minilm_dir())
    items = encode_task_examples(tokenizer, examples, 32)
    model = heads.load_model_for(task, str(save_tiny_mlm_teacher(tmp_path / "model")))
    events: list[dict] = []
    hp = trainer.HParams(lr=1e-3, batch_size=4, epochs=1, warmup_ratio=0.5)
    trainer.fit(model, task, items[:16], items[16:], examples[16:], hp, tokenizer.pad_token_id, on_event=events.append,
                progress=False, log_interval=1)
    logged = [r["lr"] for r in events if r["event"] == "train"]
    assert len(logged) == 4 and logged == pytest.approx(used)
    # The warmup's first rate, then the schedule's (whose last step reaches 0, as the original script's does).
    assert logged == pytest.approx([1e-3 * WarmupDecay(4, 2)(n) for n in range(4)]) and logged[0] == 1e-3 / 2


# --- TensorBoard -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_minilm_shards(tmp_path_factory.mktemp("data"))


def _distill(data: Path, out: Path, **extra) -> DistillSettings:
    values = dict(train=[str(data / "train" / "part-*.rec")], student=STUDENT, output_dir=str(out), batch_size=4,
                  max_steps=3, lr=1e-3, log_interval=1, eval_interval=0, checkpoint_interval=0, progress=False,
                  plot=False, seed=3)
    values.update(extra)
    return DistillSettings(**values)


def test_report_to_tensorboard_writes_event_files_beside_the_metrics(data, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (dev extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_distillation(_distill(data, tmp_path / "run", report_to="tensorboard"))
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    logged = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["event"] == "train"]
    scalars = accumulator.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [s.value for s in scalars] == pytest.approx(logged, rel=1e-6)
    # Without the option no events are written.
    run_distillation(_distill(data, tmp_path / "plain"))
    assert not (tmp_path / "plain" / "tensorboard").exists()


def test_report_to_tensorboard_without_the_package_fails_at_once_naming_the_install(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(ValueError, match=r"report_to tensorboard needs the tensorboard package.*pip install "
                                         r"tensorboard"):
        _distill(data, tmp_path / "run", report_to="tensorboard")
    with pytest.raises(ValueError, match=r"pip install tensorboard"):
        JsonlLogger(tmp_path / "metrics.jsonl", report_to="tensorboard")
    assert not (tmp_path / "run").exists()


def test_report_to_refuses_an_unknown_viewer(tmp_path):
    with pytest.raises(ValueError, match=r"report_to must be one of none, tensorboard, got 'wandb'"):
        JsonlLogger(tmp_path / "metrics.jsonl", report_to="wandb")


def test_report_to_is_a_flag_of_distill_finetune_and_lra(capsys):
    for command in (["distill"], ["finetune"], ["lra", "listops"]):
        with pytest.raises(SystemExit):
            main(command + ["--help"])
        assert "--report-to {none,tensorboard}" in capsys.readouterr().out, command


def test_tensorboard_events_past_the_resumed_step_are_purged(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (dev extra)")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    log = JsonlLogger(tmp_path / "metrics.jsonl", report_to="tensorboard")
    for step in (1, 2, 3):
        log.log({"event": "train", "step": step, "loss": float(step)})
    log.close()
    log = JsonlLogger(tmp_path / "metrics.jsonl", resume_step=1, report_to="tensorboard")
    log.log({"event": "train", "step": 2, "loss": 20.0})
    log.close()
    assert [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0, 20.0]
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "tensorboard"))
    runs.Reload()
    (run,) = runs.Runs()
    assert [(s.step, s.value) for s in runs.Scalars(run, "train/loss")] == [(1, 1.0), (2, 20.0)]


def test_a_fresh_log_replaces_an_earlier_runs_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (dev extra)")
    for loss in (1.0, 2.0):
        log = JsonlLogger(tmp_path / "metrics.jsonl", report_to="tensorboard")
        log.log({"event": "train", "step": 1, "loss": loss})
        log.close()
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
