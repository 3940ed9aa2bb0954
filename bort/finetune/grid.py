"""Hyper-parameter grid search over fine-tuning runs: local worker processes or Ray, resumable.

A grid file is JSON:

    {"task": "SST-2", "model": "path/to/checkpoint", "data_dir": "data", "dev_split": 600,
     "settings": {"max_length": 128, "patience": 2},            # any FinetuneSettings field
     "base": {"epochs": 3, "optimizer": "bertadam"},             # HParams shared by every trial
     "grid": {"seed": [0, 1], "lr": [1e-4, 1e-5], "weight_decay": [0, 10], "warmup_ratio": [0.45],
              "batch_size": [8, 16]}}

`"grid": "bort"` stands for the original README's grid (`BORT_README_GRID`: 5 seeds × 3 lr × 4 weight decays ×
4 warmups × 2 batch sizes = 480 trials). Every trial writes `trials/<id>/result.json` atomically when it
finishes, and a trial whose result exists is never run again, so an interrupted grid resumes where it stopped
(the id is a hash of the trial's hyper-parameters). Results: `results.md`, `results.csv`, `results.json`
(sorted by the task's main metric) and `results.png` (the metric against each hyper-parameter).

The output directory is held for the run (`bort.train.run_dir`: a second grid into it is refused, naming the
first one's pid). `grid_settings.json` records the settings every trial shares (task, model, data, lengths…):
a rerun with the same settings resumes, one with other settings is refused with the differences named, since
its trials would be mixed with results of another model or data; `overwrite` discards the earlier trials and
results instead.

Parallelism: `workers` processes on this machine (each with cores / workers BLAS threads), or the same trials
as Ray tasks (`backend="ray"`, optional extra `bort[ray]`; on a cluster the output directory must be on a shared
file system so results and resumption work across nodes).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import atomic_write_text
from ..train.recipe import Recipe
from ..train.resume import changed_settings
from ..train.run_dir import RunDirError
from ..train.settings import Settings, boolean, one_of, optional, positive_int, setting
from .runner import FinetuneSettings
from .trainer import HParams

logger = logging.getLogger(__name__)

BORT_README_GRID: dict[str, list[Any]] = {
    "seed": [0, 1, 2, 3, 4],
    "lr": [1e-4, 1e-5, 9e-6],
    "weight_decay": [0.0, 10.0, 100.0, 350.0],
    "warmup_ratio": [0.35, 0.40, 0.45, 0.50],
    "batch_size": [8, 16],
}
_HPARAM_FIELDS = {f.name for f in dataclasses.fields(HParams)}
_SETTING_FIELDS = {f.name for f in dataclasses.fields(FinetuneSettings)} - {"task", "model", "hparams"}
# What a grid writes into its output directory (removed by `overwrite`).
ARTEFACTS = ("trials", "results.json", "results.csv", "results.md", "results.png", "grid_settings.json")
SETTINGS_FILE = "grid_settings.json"
# Shared settings that change no trial's result (so a rerun may differ in them).
_RESULT_FREE = {"output_dir", "progress", "save_checkpoint", "overwrite", "log_interval", "report_to"}


@dataclasses.dataclass
class GridSpec:
    """A parsed grid file: the shared settings, the shared hyper-parameters and the grid axes."""

    settings: FinetuneSettings
    base: dict[str, Any]
    axes: dict[str, list[Any]]

    def trials(self) -> list[HParams]:
        """Every combination of the axes on top of `base`, in a stable order."""
        names = list(self.axes)
        return [HParams(**{**self.base, **dict(zip(names, values))})
                for values in itertools.product(*(self.axes[n] for n in names))]


def trial_id(hp: HParams) -> str:
    """A short stable name for a trial (hash of its hyper-parameters)."""
    blob = json.dumps(hp.as_dict(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_grid(source: str | os.PathLike | dict[str, Any]) -> GridSpec:
    """Parse a grid file (or dict); errors name the file and the offending key with the valid ones."""
    where = "grid" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        data = source
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"grid file {where} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    known = {"task", "model", "data_dir", "dev_split", "tokenizer", "settings", "base", "grid"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid: {sorted(known)}")
    for key in ("task", "model"):
        if key not in data:
            raise ValueError(f"{where}: missing {key!r}")
    extra = dict(data.get("settings") or {})
    bad = sorted(set(extra) - _SETTING_FIELDS)
    if bad:
        raise ValueError(f"{where}: unknown settings {bad}; valid: {sorted(_SETTING_FIELDS)}")
    for key in ("data_dir", "dev_split", "tokenizer"):
        if key in data:
            extra[key] = data[key]
    settings = FinetuneSettings(task=data["task"], model=data["model"], **extra)
    base = dict(data.get("base") or {})
    axes = data.get("grid", "bort")
    if axes == "bort":
        axes = BORT_README_GRID
    if not isinstance(axes, dict) or not axes:
        raise ValueError(f"{where}: 'grid' must be \"bort\" or an object of hyper-parameter lists")
    for name, values in {**base, **axes}.items():
        if name not in _HPARAM_FIELDS:
            raise ValueError(f"{where}: {name!r} is not a hyper-parameter; valid: {sorted(_HPARAM_FIELDS)}")
    for name, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid axis {name!r} must be a non-empty list, got {values!r}")
    spec = GridSpec(settings=settings, base=base, axes={k: list(v) for k, v in axes.items()})
    spec.trials()  # validates every combination (HParams checks its values) before anything runs
    return spec


def run_trial(settings: FinetuneSettings, hp: HParams, trial_dir: Path, threads: int | None = None) -> dict[str, Any]:
    """Run one trial (in this process) unless its result already exists; returns its result record."""
    done = trial_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    from .runner import run_finetune

    # The grid owns its trial directories: one without result.json is an interrupted trial, run again afresh.
    trial = dataclasses.replace(settings, hparams=hp, output_dir=str(trial_dir), progress=False, overwrite=True)
    summary = run_finetune(trial)
    record = {"id": trial_id(hp), **hp.as_dict(), "metric": summary["dev"][summary["main_metric"]],
              "dev": summary["dev"], "best_step": summary["best_step"], "steps": summary["steps"],
              "seconds": summary["train_seconds"]}
    atomic_write_text(done, json.dumps(record, sort_keys=True) + "\n")
    return record


def shared_settings(settings: FinetuneSettings) -> dict[str, Any]:
    """The settings that every trial shares and that decide its result (recorded in grid_settings.json)."""
    values = dataclasses.asdict(settings)
    values.pop("hparams")
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in _RESULT_FREE}, default=str))


def _check_same_grid(out: Path, settings: FinetuneSettings) -> None:
    """Refuse to resume a grid whose finished trials were run with other shared settings; record them."""
    now = shared_settings(settings)
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            before = exc
        if not isinstance(before, dict):
            raise RunDirError(f"{path}: expected a JSON object of the grid's settings ({before}); pass --overwrite "
                              "to start the grid afresh")
        changed = changed_settings(before, now)
        if changed:
            raise RunDirError(
                f"{out} holds a grid run with other settings: "
                + "; ".join(f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in changed)
                + ". Its trials cannot be mixed with these: use another output directory, or pass --overwrite "
                "to discard them")
    elif (out / "trials").is_dir() and any((out / "trials").iterdir()):
        logger.warning("%s: trials of an earlier grid without %s; assuming the same settings", out, SETTINGS_FILE)
    atomic_write_text(path, json.dumps(now, indent=1, sort_keys=True) + "\n")


BACKENDS = ("local", "ray")


@dataclasses.dataclass
class GridSettings(Settings):
    """How to run a grid (`bort grid`'s flags map one to one); what each trial does comes from the grid."""

    grid: Any = setting(help="grid file, its dict, or a parsed GridSpec (see load_grid)")
    output_dir: str | os.PathLike = "grid_output"
    workers: int = setting(1, check=positive_int(), help="parallel trials (processes, or Ray CPUs)")
    backend: str = setting("local", check=one_of(*BACKENDS))
    progress: bool = setting(True, check=boolean())
    overwrite: bool = setting(False, check=boolean(),
                              help="discard an earlier grid's trials and results in output_dir first")
    keep_checkpoints: bool | None = setting(None, check=optional(boolean()),
                                            help="keep every trial's best/ checkpoint (None: as the grid's "
                                                 "settings say, save_checkpoint)")


class GridRecipe(Recipe):
    """Run every unfinished trial of a grid and write the sorted results table (`Recipe`'s shape). A rerun
    into the same directory resumes; `overwrite` discards an earlier grid's trials and results first; a rerun
    with other shared settings is refused (`grid_settings.json`)."""

    artefacts = ARTEFACTS

    def setup(self) -> None:
        """Parse the grid, claim the output directory (resuming), check it holds this grid's trials only."""
        settings = self.settings
        spec = settings.grid if isinstance(settings.grid, GridSpec) else load_grid(settings.grid)
        if settings.keep_checkpoints is not None:
            spec = dataclasses.replace(spec, settings=dataclasses.replace(
                spec.settings, save_checkpoint=settings.keep_checkpoints))
        self.spec = spec
        self.out = self.claim(settings.output_dir, resume=not settings.overwrite, overwrite=settings.overwrite)
        _check_same_grid(self.out, spec.settings)

    def train(self) -> dict[str, Any]:
        """The pending trials (on the chosen backend), then `save`; the summary's "results" are sorted by the
        task's main metric, best first."""
        spec, out, settings = self.spec, self.out, self.settings
        trials = spec.trials()
        pending = [hp for hp in trials if not (out / "trials" / trial_id(hp) / "result.json").exists()]
        logger.info("grid: %d trials, %d already finished, %d to run", len(trials), len(trials) - len(pending),
                    len(pending))
        run = _run_local if settings.backend == "local" else _run_ray
        run(spec.settings, pending, out, settings.workers, settings.progress)
        results = [json.loads((out / "trials" / trial_id(hp) / "result.json").read_text(encoding="utf-8"))
                   for hp in trials]
        results.sort(key=lambda r: -r["metric"])
        self.results = results
        self.save()
        return {"trials": len(results), "best": results[0] if results else None, "results": results}

    def save(self) -> Path:
        write_results(self.results, self.out, self.spec)
        return self.out / "results.json"


def run_grid(spec: GridSpec, output_dir: str | os.PathLike, workers: int = 1, backend: str = "local",
             progress: bool = True, overwrite: bool = False) -> list[dict[str, Any]]:
    """Run every unfinished trial of `spec` (`GridRecipe`); returns the sorted results table."""
    settings = GridSettings(grid=spec, output_dir=output_dir, workers=workers, backend=backend, progress=progress,
                            overwrite=overwrite)
    return GridRecipe(settings).run()["results"]


def _run_local(settings: FinetuneSettings, pending: list[HParams], out: Path, workers: int, progress: bool) -> None:
    bar = tqdm(total=len(pending), desc="grid", unit="trial", disable=not progress)
    if workers <= 1:
        for hp in pending:
            run_trial(settings, hp, out / "trials" / trial_id(hp))
            bar.update(1)
        bar.close()
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: a forked child inherits the parent's OpenMP thread pool in a broken state.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_trial, settings, hp, out / "trials" / trial_id(hp), threads): hp
                   for hp in pending}
        for future in as_completed(futures):
            future.result()  # a failed trial stops the grid with its error; finished trials stay finished
            bar.update(1)
    bar.close()


def _run_ray(settings: FinetuneSettings, pending: list[HParams], out: Path, workers: int, progress: bool) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("backend 'ray' needs Ray: pip install 'bort[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(run_trial)
        refs = [remote.remote(settings, hp, out / "trials" / trial_id(hp), 1) for hp in pending]
        bar = tqdm(total=len(refs), desc="grid (ray)", unit="trial", disable=not progress)
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            ray.get(ready)
            bar.update(len(ready))
        bar.close()
    finally:
        if started:
            ray.shutdown()


def write_results(results: list[dict[str, Any]], out: Path, spec: GridSpec) -> None:
    """results.{json,csv,md} sorted by the main metric, and results.png (metric against each axis)."""
    columns = ["id", *spec.axes, "metric", "best_step", "steps", "seconds"]
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(out / "results.csv", buf.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in results]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    _plot(results, spec.axes, out / "results.png")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(results: list[dict[str, Any]], axes: dict[str, list[Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(axes)
    fig, panels = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(panels[0], names):
        values = axes[name]
        for x, value in enumerate(values):
            ys = [r["metric"] for r in results if r[name] == value]
            ax.scatter([x] * len(ys), ys, s=12, alpha=0.6)
        ax.set_xticks(range(len(values)), [_fmt(v) for v in values])
        ax.set(xlabel=name, ylabel="dev metric")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

