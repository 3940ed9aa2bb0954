"""Shared benchmark helpers: interleaved timing, the machine's GEMM rate, machine info and result files.

Timing on a shared 2-core machine is noisy, so candidates are never timed one after another in blocks: each
round times every candidate once (A, B, C, A, B, C, …, the starting candidate rotating per round) and we
report medians with inter-quartile ranges. Ratios between two candidates are taken per round (both timed
within seconds of each other) and summarised by their median, which cancels slow drifts in machine load.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --- timing -----------------------------------------------------------------------------------------------
def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); a single value is all three."""
    if not values:
        raise ValueError("quartiles of an empty sequence")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@dataclass
class Timing:
    """Seconds per call of one candidate: one sample per round, each the mean over `number` calls."""

    samples: list[float]
    number: int = 1
    median: float = field(init=False)
    q1: float = field(init=False)
    q3: float = field(init=False)

    def __post_init__(self) -> None:
        self.q1, self.median, self.q3 = quartiles(self.samples)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "iqr_s": self.iqr,
                "min_s": min(self.samples), "samples_s": list(self.samples), "calls_per_sample": self.number}


def _time_calls(fn: Callable[[], object], number: int) -> float:
    """Seconds per call over `number` back-to-back calls, garbage collection off (as `timeit` does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number
    finally:
        if enabled:
            gc.enable()


def time_interleaved(candidates: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     min_sample_time: float = 0.0) -> dict[str, Timing]:
    """Time every candidate `repeats` times, interleaved, after `warmup` interleaved untimed rounds.

    A sample lasts at least `min_sample_time` seconds: fast candidates are called several times per sample
    (the count is calibrated from the last warm-up call). Returns `Timing`s keyed like `candidates`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(candidates)
    last = {name: 0.0 for name in names}
    for _ in range(max(warmup, 1 if min_sample_time > 0 else 0)):
        for name in names:
            last[name] = _time_calls(candidates[name], 1)
    number = {name: max(1, math.ceil(min_sample_time / last[name])) if last[name] > 0 else 1 for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_calls(candidates[name], number[name]))
    return {name: Timing(samples[name], number[name]) for name in names}


def paired_ratio(numerator: Timing, denominator: Timing) -> dict[str, float]:
    """numerator / denominator per round (the two were timed in the same round): median and quartiles.

    With peer time as numerator and ours as denominator, a value above 1 means ours is faster.
    """
    ratios = [a / b for a, b in zip(numerator.samples, denominator.samples)]
    q1, med, q3 = quartiles(ratios)
    return {"median": med, "q1": q1, "q3": q3, "of_medians": numerator.median / denominator.median}


# --- GEMM rate --------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_callable(n: int, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """A closure multiplying two random n×n matrices into a preallocated output (2·n³ FLOPs a call)."""
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def gemm_size(dtype: torch.dtype, target_s: float = 0.2, max_n: int = 4096) -> int:
    """Smallest n (a multiple of 256, up to `max_n`) whose n×n GEMM takes about `target_s` seconds."""
    n = 1024
    while n < max_n:
        fn = gemm_callable(n, dtype)
        fn()
        seconds = min(_time_calls(fn, 1) for _ in range(2))
        if seconds >= target_s:
            break
        # FLOPs grow as n³: jump near the target, at least one step of 256
        guess = int(n * (target_s / max(seconds, 1e-6)) ** (1 / 3) / 256) * 256
        n = min(max_n, max(n + 256, guess))
    return n


def gemm_rates(dtypes: Iterable[str] = ("fp32", "bf16"), repeats: int = 7, target_s: float = 0.2,
               sizes: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
    """Measured torch.mm rate per dtype name, in GFLOP/s (medians and quartiles, dtypes interleaved).

    The matrix size is chosen per dtype so that one multiplication takes about `target_s` seconds, unless
    `sizes` gives it.
    """
    dtypes = list(dtypes)
    n = {d: (sizes or {}).get(d) or gemm_size(DTYPES[d], target_s) for d in dtypes}
    timings = time_interleaved({d: gemm_callable(n[d], DTYPES[d]) for d in dtypes}, repeats=repeats, warmup=1)
    out = {}
    for d in dtypes:
        flops, t = 2.0 * n[d] ** 3, timings[d]
        out[d] = {"n": n[d], "median_s": t.median, "gflops": flops / t.median / 1e9,
                  "gflops_q1": flops / t.q3 / 1e9, "gflops_q3": flops / t.q1 / 1e9}
    return out


# --- machine ----------------------------------------------------------------------------------------------
def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break  # the first processor's block is enough
    except OSError:
        pass
    return model, flags


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the ISA extensions that decide bf16/int8 speed, library versions, thread counts."""
    model, flags = _cpu_model_and_flags()
    info: dict[str, Any] = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                               "amx_int8", "avx_vnni"}),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    for module in ("transformers", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return info


# --- result files -----------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows` (dicts); columns default to the first row's keys."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Timing):
        return value.to_dict()
    if isinstance(value, (torch.dtype, torch.Size, Path)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_results(name: str, data: Mapping[str, Any], markdown: str | None = None,
                  rows: Sequence[Mapping[str, Any]] | None = None,
                  plot: Callable[[Any], None] | None = None, out_dir: str | os.PathLike | None = None
                  ) -> dict[str, Path]:
    """Write `<name>.json` (data), `<name>.md` (`markdown`, or a table of `rows`) and, when `plot` is given,
    `<name>.png` (`plot(figure)` draws on a matplotlib Figure; Agg canvas, no display needed).
    Returns the paths written, keyed by "json", "md", "png"."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json"}
    paths["json"].write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    if markdown is not None or rows is not None:
        text = markdown if markdown is not None else f"# {name}\n\n" + markdown_table(rows or [])
        paths["md"] = out / f"{name}.md"
        paths["md"].write_text(text, encoding="utf-8")
    if plot is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 5), layout="constrained")
        FigureCanvasAgg(fig)
        plot(fig)
        paths["png"] = out / f"{name}.png"
        fig.savefig(paths["png"], dpi=110)
    return paths
