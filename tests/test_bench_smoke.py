"""Smoke test of the benchmark helpers: interleaved timing and result files (no model is benchmarked)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` is a top-level directory, not installed

from bench import common, run_all  # noqa: E402


def test_time_interleaved_runs_candidates_in_turn() -> None:
    calls: list[str] = []
    timings = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      repeats=4, warmup=1)
    assert set(timings) == {"a", "b"}
    # one warm-up round, then rounds whose starting candidate rotates: never two samples of one in a row
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    for t in timings.values():
        assert len(t.samples) == 4 and t.q1 <= t.median <= t.q3 and t.iqr >= 0
    ratio = common.paired_ratio(timings["a"], timings["b"])
    assert ratio["q1"] <= ratio["median"] <= ratio["q3"] and ratio["of_medians"] > 0


def test_min_sample_time_calls_fast_candidates_repeatedly() -> None:
    timings = common.time_interleaved({"noop": lambda: None}, repeats=2, min_sample_time=0.002)
    assert timings["noop"].number > 1


def test_write_results(tmp_path: Path) -> None:
    rows = [{"shape": "8x128", "ratio": 1.2345, "note": None}]
    timing = common.Timing([0.1, 0.2, 0.3])

    def draw(fig) -> None:
        fig.subplots().bar([0], [1.0])

    paths = common.write_results("smoke", {"rows": rows, "timing": timing}, rows=rows, plot=draw, out_dir=tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["timing"]["median_s"] == 0.2 and data["rows"][0]["ratio"] == 1.2345
    assert "| 8x128 | 1.23 | — |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_machine_info_and_discovery() -> None:
    info = common.machine_info()
    assert info["torch"] and info["torch_threads"] >= 1
    assert "encoder_inference" in run_all.discover()
