"""Smoke test of the benchmark helpers: interleaved timing and result files (no model is benchmarked)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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


def test_block_sparse_bench_tiny(tmp_path: Path) -> None:
    # n = 768 is the shortest length HF's BigBird runs block-sparse (12 blocks of 64); one head, one round.
    # Besides the files, the run checks our kernel on HF's exact random layout against HF's output and
    # q, k, v gradients.
    pytest.importorskip("transformers")
    from bench import block_sparse

    result = block_sparse.run(sizes=(768,), heads=1, repeats=1, allocator=False, out_dir=tmp_path)
    row = result["rows"][0]
    assert row["hf_random_repeats"] == 0 and row["max_abs_diff_vs_hf"] <= 1e-5
    assert 0 < row["tile_fraction_hf"] <= 1 and row["vs_hf"]["median"] > 0
    assert {"block_sparse.json", "block_sparse.md", "block_sparse.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "block_sparse" in run_all.discover()


def test_yoso_bench_tiny(tmp_path: Path) -> None:
    # Every measurement of bench/yoso.py at toy sizes: interleaved timing, peak memory in fresh processes,
    # the sampling-error fit; the numbers mean nothing at these sizes, the files and fields must exist.
    from bench import yoso

    result = yoso.run(tiny=True, out_dir=tmp_path)
    assert result["ratios"]["sdpa/yoso n"]["median"] > 0 and result["ratios"]["yoso big/n"]["median"] > 0
    assert set(result["peak_memory_mb"]) == {"yoso n=256", "yoso n=512"}
    assert all(v >= 0 for v in result["peak_memory_mb"].values())
    assert result["error"][0]["slope"] < 0 and len(result["error"][0]["relative_error"]) == 2
    assert {"yoso.json", "yoso.md", "yoso.png"} <= {p.name for p in tmp_path.iterdir()}
    assert "yoso" in run_all.discover()


def test_lra_listops_long_bench_tiny(tmp_path: Path) -> None:
    # Generated rows in a short window, four mechanisms, two interleaved one-step rounds and a one-round probe:
    # the files and fields must exist; the numbers mean nothing at this size.
    import torch

    from bench import lra_listops_long

    threads = torch.get_num_threads()
    try:
        assert lra_listops_long.main(["--steps", "2", "--chunk", "1", "--eval-interval", "1", "--train-rows", "8",
                                      "--eval-rows", "4", "--batch-size", "4", "--min-length", "20", "--max-length",
                                      "120", "--probe-length", "64", "--probe-batch", "1", "--probe-repeats", "1",
                                      "--threads", "1", "--mechanisms", "dense", "yoso", "yoso_bwd8", "dam_s",
                                      "--out-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "lra_listops_long.json").read_text())
    assert [r["mechanism"] for r in data["rows"]] == ["dense", "yoso", "yoso_bwd8", "dam_s"]
    assert data["sizes"]["train"] == 8
    # DAM's row states its learned mask's density at the bench's widths, and only DAM's row does. Two steps
    # leave the logits near their initial keep − drop of 0 ± 1e-3, so about half of the offsets are kept.
    kept = data["rows"][3]["mask_kept_pct"]
    assert list(kept) == ["500", "1000", "2000"] and all(25.0 < pct < 75.0 for pct in kept.values())
    assert not any("mask_kept_pct" in row for row in data["rows"][:3])
    assert data["settings"]["dam_s"]["dam_lambda"] == lra_listops_long.DAM_LAMBDA
    assert data["settings"]["yoso_bwd8"]["attention"] == "yoso"
    assert data["settings"]["yoso_bwd8"]["attention_params"] == {"hash_code_len": 11, "num_hash": 32,
                                                                 "backward_hashes": 8}
    assert 20 < data["train_length"]["min"] and data["train_length"]["max"] < 120
    assert len(data["round_seconds"]["yoso"]) == 2 and data["rows"][1]["time_vs_dense"]["median"] > 0
    assert data["probe"]["length"] == 64 and data["rows"][1]["probe_vs_dense"]["median"] > 0
    table = (tmp_path / "lra_listops_long.md").read_text()
    assert "| yoso |" in table and f"dam_s {kept['500']:.1f}% at n=500" in table
    assert (tmp_path / "lra_listops_long.png").read_bytes()[:4] == b"\x89PNG"


def test_lra_listops_long_bench_resumes_from_its_work_dir(tmp_path: Path, monkeypatch) -> None:
    # Interrupted after step 2 of 4 (checkpoints every 2 steps), then run again with the same --work-dir: it must
    # resume every mechanism at step 2, keep the timings of the rounds already done, and end exactly where an
    # uninterrupted run ends (same dev curve, same test accuracy); a changed plan is refused, naming the change.
    import torch

    from bench import lra_listops_long

    common_args = ["--steps", "4", "--chunk", "1", "--eval-interval", "2", "--train-rows", "12", "--eval-rows", "6",
                   "--batch-size", "4", "--min-length", "20", "--max-length", "120", "--probe-repeats", "0",
                   "--threads", "1", "--mechanisms", "dense", "yoso"]
    threads = torch.get_num_threads()
    real = lra_listops_long.train_interleaved

    def interrupted(trainers, chunk, start, rounds, on_round):
        def stop(record):
            on_round(record)
            if min(t.step for t in trainers.values()) >= 3:
                raise KeyboardInterrupt
        return real(trainers, chunk, start, rounds, stop)

    try:
        lra_listops_long.main(common_args + ["--out-dir", str(tmp_path / "straight")])
        monkeypatch.setattr(lra_listops_long, "train_interleaved", interrupted)
        with pytest.raises(KeyboardInterrupt):
            lra_listops_long.main(common_args + ["--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path)])
        saved = json.loads((tmp_path / "work" / "rounds.json").read_text())
        assert sorted(saved["dense"]) == ["0", "1", "2"]
        monkeypatch.setattr(lra_listops_long, "train_interleaved", real)
        lra_listops_long.main(common_args + ["--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "resumed")])
        with pytest.raises(SystemExit, match="lr 0.001 → 0.002"):
            lra_listops_long.main(common_args + ["--lr", "2e-3", "--work-dir", str(tmp_path / "work"),
                                                 "--out-dir", str(tmp_path / "changed")])
    finally:
        torch.set_num_threads(threads)
    straight = json.loads((tmp_path / "straight" / "lra_listops_long.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "lra_listops_long.json").read_text())
    assert resumed["resumed_at"] == {"dense": 2, "yoso": 2}
    assert sorted(resumed["round_seconds"]["yoso"], key=int) == ["0", "1", "2", "3"]  # round 2 redone, 0-1 kept
    assert resumed["curves"] == straight["curves"]
    for a, b in zip(resumed["rows"], straight["rows"]):
        assert a["steps"] == b["steps"] == 4 and a["test_accuracy"] == b["test_accuracy"]


def test_lra_listops_long_merges_runs_of_some_mechanisms(tmp_path: Path) -> None:
    # The long table is built from runs of a few mechanisms each. A mechanism trained alone must follow the same
    # steps as beside the others (same dev curve, same test loss), a run without dense must still time against
    # (an untrained) dense in its probe, and merging must refuse runs under different plans, a mechanism run
    # twice and unreadable files, naming them.
    import torch

    from bench import lra_listops_long

    base = ["--steps", "2", "--chunk", "1", "--eval-interval", "1", "--train-rows", "8", "--eval-rows", "4",
            "--batch-size", "4", "--min-length", "20", "--max-length", "120", "--probe-length", "64",
            "--probe-batch", "1", "--probe-repeats", "1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        for name, mechanisms in (("together", ["dense", "yoso", "yoso_bwd8"]), ("a", ["dense", "yoso"]),
                                 ("b", ["yoso_bwd8"])):
            assert lra_listops_long.main(base + ["--mechanisms", *mechanisms, "--out-dir", str(tmp_path / name)]) == 0
        result = {name: tmp_path / name / "lra_listops_long.json" for name in ("together", "a", "b")}
        assert lra_listops_long.main(["--merge", str(result["b"]), str(result["a"]),
                                      "--out-dir", str(tmp_path / "merged")]) == 0
    finally:
        torch.set_num_threads(threads)
    alone = json.loads(result["b"].read_text())
    assert alone["probe"]["reference"].startswith("dense, untrained")
    assert alone["rows"][0]["probe_vs_dense"]["median"] > 0 and alone["rows"][0]["time_vs_dense"] is None
    merged = json.loads((tmp_path / "merged" / "lra_listops_long.json").read_text())
    together = json.loads(result["together"].read_text())
    assert [(r["mechanism"], r["run"]) for r in merged["rows"]] == [("dense", 2), ("yoso", 2), ("yoso_bwd8", 1)]
    assert merged["pending"] == ["yoso_e", "bigbird", "longformer", "dam_s"]
    for row, same in zip(merged["rows"], together["rows"]):
        assert row["mechanism"] == same["mechanism"]
        assert row["test_loss"] == pytest.approx(same["test_loss"], rel=1e-5)
        assert merged["curves"][row["mechanism"]] == together["curves"][row["mechanism"]]
    text = (tmp_path / "merged" / "lra_listops_long.md").read_text()
    assert "| yoso_bwd8 |" in text and "Not yet run: yoso_e, bigbird, longformer, dam_s." in text
    assert "Run 1: yoso_bwd8; probe against dense, untrained" in text

    changed = json.loads(result["b"].read_text())
    changed["settings"]["yoso_bwd8"]["lr"] = 2e-3
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match=r"changed\.json was run under a different plan .*setting lr 0.001 → 0.002"):
        lra_listops_long.merge([result["a"], tmp_path / "changed.json"])
    changed = json.loads(result["b"].read_text())
    changed["probe"]["length"] = 32  # one column header describes every run's probe
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match=r"different plan .*probe length 64 → 32"):
        lra_listops_long.merge([result["a"], tmp_path / "changed.json"])
    with pytest.raises(SystemExit, match=r"dense is in both .*a.lra_listops_long\.json and .*together"):
        lra_listops_long.merge([result["a"], result["together"]])
    (tmp_path / "broken.json").write_text('{"rows": [')
    with pytest.raises(SystemExit, match=r"broken\.json: not a readable lra_listops_long result"):
        lra_listops_long.merge([result["a"], tmp_path / "broken.json"])
    with pytest.raises(SystemExit, match=r"already a merged table"):
        lra_listops_long.merge([tmp_path / "merged" / "lra_listops_long.json"])
