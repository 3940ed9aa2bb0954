"""Metrics as JSON lines (one object per event, appended and flushed), optionally mirrored to TensorBoard,
and PNG plots of the curves."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

REPORT_TO = ("none", "tensorboard")
TENSORBOARD_DIR = "tensorboard"  # beside metrics.jsonl
# Fewer points than this and each is drawn as a marker: a one-point line is otherwise invisible.
MARKER_BELOW = 20


def check_report_to(value: Any) -> str | None:
    """The problem with a `report_to` setting, or None: one of REPORT_TO (None means "none"), and for
    "tensorboard" the package must be importable, so that a run fails at its start rather than at its first log."""
    if value is None or value == "none":
        return None
    if value not in REPORT_TO:
        return f"must be one of {', '.join(REPORT_TO)}, got {value!r}"
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError:
        return "tensorboard needs the tensorboard package, which is not installed (pip install tensorboard)"
    return None


class JsonlLogger:
    """Append-only JSON-lines log; on resume, lines past the resumed step are dropped first so the file
    reads as one uninterrupted run.

    `report_to="tensorboard"` also writes every numeric field of a record as a TensorBoard scalar named
    `event/field` (e.g. `train/loss`, `eval/eval_mlm_loss`) at the record's step, into `tensorboard/` beside
    the log; on resume, events past the resumed step are purged the same way."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, report_to: str | None = None) -> None:
        problem = check_report_to(report_to)
        if problem is not None:
            raise ValueError(f"report_to {problem}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._handle = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            if resume_step is None:  # a fresh run: an earlier run's events would be drawn as part of this one
                for old in (self.path.parent / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
                    old.unlink()
            self._writer = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR),
                                         purge_step=resume_step + 1 if resume_step is not None else None)

    def log(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()
        if self._writer is not None and isinstance(record.get("step"), int):
            event = record.get("event", "log")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._writer.add_scalar(f"{event}/{key}", value, record["step"])

    def close(self) -> None:
        self._handle.close()
        if self._writer is not None:
            self._writer.close()


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except ValueError:
        return math.inf


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _line_style(points: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 4} if points < MARKER_BELOW else {}


def _plot(ax: Any, points: list[tuple[float, float]], **kwargs: Any) -> None:
    if points:
        ax.plot(*zip(*points), **_line_style(len(points)), **kwargs)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return Path(path)


def curves_figure(records: list[dict[str, Any]], title: str = "distillation") -> Any:
    """The distillation curves against step as a matplotlib figure of four panels, so that no curve is
    flattened by another's scale: the training losses (log scale: an MLM loss near 10 beside a hidden-state
    loss near 0.1), the evaluation MLM loss, the evaluation distillation terms (KD, hidden states) and the
    evaluation MLM accuracy (the last three linear, each on its own axis)."""
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    fig, axes = _pyplot().subplots(2, 2, figsize=(12, 7.5))
    (losses, mlm), (terms, accuracy) = axes

    def curve(ax: Any, rows: list[dict[str, Any]], key: str, positive: bool = False) -> None:
        # A log axis can only draw positive values.
        _plot(ax, [(r["step"], r[key]) for r in rows
                   if key in r and math.isfinite(r[key]) and (r[key] > 0 or not positive)], label=key)

    for key in ("loss", "mlm", "kd", "hidden", "attention"):
        curve(losses, train, key, positive=True)
    losses.set(ylabel="loss (log scale)", title=f"{title}: training losses", yscale="log")
    curve(mlm, evals, "eval_mlm_loss")
    mlm.set(ylabel="MLM loss", title=f"{title}: evaluation MLM loss")
    for key in ("eval_kd", "eval_hidden"):
        curve(terms, evals, key)
    terms.set(ylabel="loss", title=f"{title}: evaluation distillation terms")
    curve(accuracy, evals, "eval_mlm_accuracy")
    accuracy.set(ylabel="masked-token accuracy", title=f"{title}: evaluation MLM accuracy")
    for ax in axes.flat:
        ax.set(xlabel="step")
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "distillation") -> Path:
    """`curves_figure` written as PNG."""
    return _save(curves_figure(records, title), path)


def loss_and_dev_figure(records: list[dict[str, Any]], title: str, dev_key: str, dev_label: str) -> Any:
    """Two panels against step: the training loss (`event` "train") and one dev metric (`event` "eval",
    field `dev_key`), as a matplotlib figure."""
    train = [(r["step"], r["loss"]) for r in records if r.get("event") == "train"]
    dev = [(r["step"], r[dev_key]) for r in records if r.get("event") == "eval" and dev_key in r]
    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 3.8))
    _plot(axes[0], train)
    axes[0].set(xlabel="step", ylabel="training loss", title=f"{title}: training")
    _plot(axes[1], dev)
    axes[1].set(xlabel="step", ylabel=dev_label, title=f"{title}: dev")
    return fig


def plot_loss_and_dev(records: list[dict[str, Any]], path: str | os.PathLike, title: str, dev_key: str,
                      dev_label: str) -> Path:
    """`loss_and_dev_figure` written as PNG. Used by the fine-tuning and LRA recipes."""
    return _save(loss_and_dev_figure(records, title, dev_key, dev_label), path)
