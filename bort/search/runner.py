"""The search recipe: space → p, i for every candidate → FPTAS selection → truncated runs → W → reports.

    bort search space.json --teacher TEACHER --train 'train/*.rec' --test 'test/*.rec' --output-dir out

Every measurement is cached per candidate (`out/cache/`), so a killed search resumes where it stopped, and an
exhaustive run (`--exhaustive`) over the same output directory reuses whatever the FPTAS already measured
(entries measured under other settings are measured again, never mixed in). The output directory is held for
the run (`bort.train.run_dir`: a second search into it is refused, naming the first one's pid); `overwrite`
discards an earlier search's cache, runs and reports first.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import BortConfig
from ..train.recipe import Recipe
from ..train.settings import Settings, as_list, boolean, number, one_of, optional, positive_int, setting
from .cache import CandidateCache, fingerprint
from .error import ERROR_METRICS, ErrorSettings, truncated_error
from .fptas import premise_violations, select
from .params import effective_parameters, encoder_parameters
from .report import pareto_front, plot_front, write_preset, write_table
from .space import Candidate, SearchSpace, load_space
from .speed import SPEED_MODES, SpeedSettings, inference_cost
from .wcoef import References, WeightExponents, cheap_factor, w_coefficient, within_guarantee

logger = logging.getLogger(__name__)

PARAM_KINDS = ("encoder", "effective")
# What a search writes into its output directory (removed by `overwrite`).
ARTEFACTS = ("cache", "runs", "search_log.jsonl", "result.json", "ranking.md", "ranking.csv", "ranking.json",
             "pareto.png", "best_config.json")
# Errors of short runs differ by noise; a larger candidate counts against the premise only when its error is
# more than this fraction above the smaller one's (the certified bound becomes (1 + τ)/(1 − ε)).
PREMISE_TOLERANCE = 0.01


def _distill_values(value: Any) -> str | None:
    # the names are checked against DistillSettings once merged with the space's block (ErrorSettings)
    return None if isinstance(value, dict) else f"must be an object of distillation settings, got {value!r}"


def _held_out(value: Any) -> str | None:
    return None if value else "is empty: the search's error needs held-out shards: give --test"


@dataclass
class SearchSettings(Settings):
    """A search run. Fields left None take the space file's value, then the default in brackets; each
    constraint is declared beside its field (`bort.train.settings`), the space file's values are checked
    when it is read (`bort.search.space`)."""

    space: str
    train: list[str] = setting(coerce=as_list)
    test: list[str] = setting(coerce=as_list, check=_held_out)
    teacher: str | None = None
    output_dir: str = "search_output"
    # [0.5] FPTAS ε: the choice is within (1 − ε) of the optimum
    epsilon: float | None = setting(None, check=optional(number(0, 1, low_open=True, high_open=True)))
    interval_steps: int | None = setting(None, check=optional(positive_int()))  # [10]
    intervals: int | None = setting(None, check=optional(positive_int()))       # [2]
    eval_batches: int | None = setting(None, check=optional(positive_int()))    # [4]
    error_metric: str | None = setting(None, check=optional(one_of(*ERROR_METRICS)))  # [eval_mlm_loss]
    speed_mode: str | None = setting(None, check=optional(one_of(*SPEED_MODES)))      # [measured]
    seed: int | None = setting(None, check=optional(positive_int(0)))           # [0]
    params_kind: str = setting("encoder", check=one_of(*PARAM_KINDS))
    exhaustive: bool = setting(False, check=boolean())
    keep_runs: bool = setting(False, check=boolean())
    # discard an earlier search's cache, runs and reports in output_dir
    overwrite: bool = setting(False, check=boolean())
    progress: bool = setting(True, check=boolean())
    distill: dict[str, Any] = setting(default_factory=dict, check=_distill_values)


class _EventLog:
    """Append-only JSON lines (`search_log.jsonl`); a resumed search adds to the same file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def log(self, event: str, **values: Any) -> None:
        self._handle.write(json.dumps({"event": event, "time": time.time(), **values}, sort_keys=True,
                                      default=str) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _teacher_config(teacher: str | None) -> BortConfig | None:
    if teacher is None:
        return None
    from ..checkpoint import read_checkpoint

    cfg, _, _ = read_checkpoint(teacher)
    return cfg


def _pick(cli: Any, space: SearchSpace, name: str, default: Any) -> Any:
    return cli if cli is not None else space.options.get(name, default)


def _speed_settings(space: SearchSpace, mode: str | None) -> SpeedSettings:
    values = dict(space.options.get("speed", {}))
    if mode is not None:
        values["mode"] = mode
    try:
        return SpeedSettings(**values)
    except TypeError as err:
        raise ValueError(f"{space.source}: field 'speed': {err}") from None


def _measure_speeds(candidates: list[Candidate], base: BortConfig, speed: SpeedSettings, speed_fp: str,
                    cache: CandidateCache, log: _EventLog, progress: bool) -> dict[Candidate, float]:
    """i(ξ) of every candidate, from the cache or measured (and cached) now."""
    speeds: dict[Candidate, float] = {}
    for cand in tqdm(candidates, desc="speed", unit="cand", disable=not progress):
        record = cache.get(cand, "speed", speed_fp)
        if record is None:
            record = inference_cost(cand.config(base), speed)
            cache.put(cand, "speed", speed_fp, record)
            log.log("speed", key=cand.key, **record)
        speeds[cand] = record["value"]
    return speeds


def _measure_errors(candidates: list[Candidate], base: BortConfig, settings: ErrorSettings, error_fp: str,
                    cache: CandidateCache, log: _EventLog, out: Path, progress: bool
                    ) -> tuple[dict[Candidate, float], int]:
    """e(ξ) of the candidates to evaluate (truncated distillation runs, each cached as soon as it ends, so an
    interrupted search resumes after the last finished one) and how many came from the cache."""
    errors: dict[Candidate, float] = {}
    reused = 0
    for cand in tqdm(candidates, desc="error", unit="cand", disable=not progress):
        record = cache.get(cand, "error", error_fp)
        if record is None:
            record = truncated_error(cand.config(base), settings, out / "runs" / cand.key)
            cache.put(cand, "error", error_fp, record)
            log.log("error", key=cand.key, value=record["value"], seconds=record["seconds"])
        else:
            reused += 1
        errors[cand] = record["value"]
    return errors, reused


def _ranked_rows(errors: dict[Candidate, float], base: BortConfig, params: dict[Candidate, int],
                 speeds: dict[Candidate, float], refs: References, weights: WeightExponents,
                 bucket: dict[Candidate, int]) -> list[dict[str, Any]]:
    """One row per evaluated candidate, sorted by W (ties by key), with its rank and Pareto membership."""
    rows = []
    for cand, e in errors.items():
        rows.append({"key": cand.key, "layers": cand.layers, "heads": cand.heads, "hidden": cand.hidden,
                     "intermediate": cand.intermediate, "params": params[cand],
                     "effective_params": effective_parameters(cand.config(base)), "speed": speeds[cand], "error": e,
                     "w": w_coefficient(params[cand], speeds[cand], e, refs, weights), "bucket": bucket[cand]})
    rows.sort(key=lambda r: (r["w"], r["key"]))
    front = pareto_front([r for r in rows if math.isfinite(r["error"])])
    for rank, r in enumerate(rows, 1):
        r["rank"], r["pareto"] = rank, r["key"] in front
    return rows


def run_search(settings: SearchSettings) -> dict[str, Any]:
    """Run (or resume) a search and write its reports; returns the summary also saved as `result.json`."""
    return SearchRecipe(settings).run()


class SearchRecipe(Recipe):
    """The search in the recipe shape (`bort.train.recipe.Recipe`): `setup` claims the output directory and reads
    the space and the teacher's config, `train` measures and selects, `save` writes the reports."""

    artefacts = ARTEFACTS

    def __init__(self, settings: SearchSettings) -> None:
        super().__init__(settings)
        self.log: _EventLog | None = None

    def setup(self) -> None:
        s = self.settings
        # Rerunning into the same directory continues the search (the cache), unless it starts afresh.
        self.out = self.claim(s.output_dir, resume=not s.overwrite, overwrite=s.overwrite)
        self.teacher_cfg = _teacher_config(s.teacher)
        space = self.space = load_space(s.space, teacher_config=self.teacher_cfg)
        self.epsilon = float(_pick(s.epsilon, space, "epsilon", 0.5))
        self.speed = _speed_settings(space, s.speed_mode)
        self.weights = WeightExponents.from_dict(space.options.get("weights"), f"{space.source}: field 'weights'")
        self.error_settings = ErrorSettings(
            train=s.train, test=s.test, teacher=s.teacher,
            interval_steps=int(_pick(s.interval_steps, space, "interval_steps", 10)),
            intervals=int(_pick(s.intervals, space, "intervals", 2)),
            eval_batches=int(_pick(s.eval_batches, space, "eval_batches", 4)),
            metric=_pick(s.error_metric, space, "error_metric", "eval_mlm_loss"),
            seed=int(_pick(s.seed, space, "seed", 0)), keep_runs=s.keep_runs,
            distill={**space.options.get("distill", {}), **s.distill})
        self.log = _EventLog(self.out / "search_log.jsonl")
        self.cache = CandidateCache(self.out / "cache")

    def train(self) -> dict[str, Any]:
        s, space, log, cache, speed, out = self.settings, self.space, self.log, self.cache, self.speed, self.out
        assert log is not None, "setup() first"
        base = space.base
        enum = self.enum = space.enumerate()
        log.log("space", source=space.source, axes=space.axes, max_point=space.max_candidate.key,
                feasible=len(enum.candidates), skipped=enum.skipped, skipped_examples=enum.skipped_examples,
                epsilon=self.epsilon, exhaustive=s.exhaustive)
        if enum.num_skipped:
            logger.warning("skipped %d infeasible candidate(s): %s", enum.num_skipped,
                           ", ".join(f"{n} {reason}" for reason, n in enum.skipped.items()))
        if not enum.candidates:
            raise ValueError(f"{space.source}: no feasible candidate ({enum.num_skipped} skipped: {enum.skipped})")

        count = encoder_parameters if s.params_kind == "encoder" else effective_parameters
        params = {c: count(c.config(base)) for c in enum.candidates}
        # The student's vocabulary becomes the data's during distillation; i(·) is timed on the same config.
        speed_fp = fingerprint({"speed": vars(speed), "base": base.to_dict()})
        speeds = _measure_speeds(enum.candidates, base, speed, speed_fp, cache, log, s.progress)

        top = space.max_point
        top_speed = (inference_cost(top, speed) if speed.mode == "flops"
                     else _cached_top_speed(out, top, speed, speed_fp))
        e_ref = math.log(self.teacher_cfg.vocab_size if self.teacher_cfg is not None else top.vocab_size)
        self.refs = References(params=float(count(top)), speed=float(top_speed["value"]), error=e_ref)
        cheap = {c: cheap_factor(params[c], speeds[c], self.refs, self.weights) for c in enum.candidates}

        selection = self.selection = select(cheap, self.epsilon)
        to_evaluate = sorted(enum.candidates, key=lambda c: cheap[c]) if s.exhaustive else selection.evaluate
        log.log("selection", evaluate=[c.key for c in to_evaluate], buckets=selection.num_buckets,
                pruned={a.key: b.key for a, b in selection.stand_in.items()})

        error_fp = fingerprint(self.error_settings.identity() | {"base": base.to_dict()})
        self.errors, self.reused = _measure_errors(to_evaluate, base, self.error_settings, error_fp, cache, log,
                                                   out, s.progress)
        self.rows = _ranked_rows(self.errors, base, params, speeds, self.refs, self.weights, selection.bucket)
        self.save()
        return self.result

    def save(self) -> Path:
        """The reports of the evaluated candidates: ranking table, Pareto plot, best config, `result.json`."""
        s, out, rows, errors, log = self.settings, self.out, self.rows, self.errors, self.log
        assert log is not None, "setup() first"
        best = rows[0]
        chosen = next(c for c in errors if c.key == best["key"])
        violations = premise_violations(errors, PREMISE_TOLERANCE)

        unit = "FLOPs" if self.speed.mode == "flops" else "s"
        files = write_table(rows, out, unit)
        plot_front(rows, best["key"], out / "pareto.png", unit)
        preset = write_preset(chosen.config(self.space.base), out / "best_config.json")
        enum, selection, error_settings = self.enum, self.selection, self.error_settings
        self.result = {
            "chosen": best["key"], "w": best["w"], "config": str(preset), "epsilon": self.epsilon,
            "mode": "exhaustive" if s.exhaustive else "fptas",
            "feasible": len(enum.candidates), "skipped": enum.num_skipped, "skipped_reasons": enum.skipped,
            "evaluated": len(errors), "reused_from_cache": self.reused, "buckets": selection.num_buckets,
            "references": vars(self.refs), "weights": vars(self.weights), "speed": vars(self.speed),
            "error": {"metric": error_settings.metric, "steps": error_settings.total_steps,
                      "interval_steps": error_settings.interval_steps},
            "premise_violations": [[a.key, b.key] for a, b in violations],
            "premise_tolerance": PREMISE_TOLERANCE,
            "guarantee": ("W(chosen) <= (1+tau)/(1-epsilon) * W(optimum), given that a candidate at least as large on "
                          "every axis has an error at most (1+tau) times as high; "
                          f"{len(violations)} evaluated pair(s) contradict that here"),
            "files": {k: str(v) for k, v in files.items()} | {"png": str(out / "pareto.png")},
        }
        atomic_json(out / "result.json", self.result)
        log.log("done", chosen=best["key"], w=best["w"], evaluated=len(errors), reused=self.reused)
        if violations:
            logger.warning("%d evaluated pair(s) contradict the premise 'larger is no worse' (e.g. %s < %s): the "
                           "(1 - epsilon) guarantee is not certified for this space", len(violations),
                           violations[0][0].key, violations[0][1].key)
        return out / "result.json"

    def cleanup(self) -> None:
        """Close the event log, then give the output directory up (safe after a failed setup)."""
        try:
            if self.log is not None:
                self.log.close()
                self.log = None
        finally:
            super().cleanup()


def _cached_top_speed(out: Path, top: BortConfig, speed: SpeedSettings,
                      speed_fp: str) -> dict[str, float]:
    """i(T): timed once and cached beside the candidates (the maximum point may not be in the space)."""
    top_cache = CandidateCache(out / "cache" / "max_point")
    cand = Candidate.from_config(top)
    fp = fingerprint({"speed_fp": speed_fp, "max_point": top.to_dict()})
    record = top_cache.get(cand, "speed", fp)
    if record is None:
        record = inference_cost(top, speed)
        top_cache.put(cand, "speed", fp, record)
    return record


def atomic_json(path: Path, values: dict[str, Any]) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(path, json.dumps(values, indent=2, default=str) + "\n")


__all__ = ["SearchRecipe", "SearchSettings", "run_search", "within_guarantee"]
