"""Benchmarks of the `bort` package: speed against peers measured in one process, written to `bench/results`.

Every benchmark module here exposes `run(quick: bool) -> dict`; `python bench/run_all.py [--quick]` runs them
all. Shared helpers (GEMM rate, interleaved timing, result files, machine info) live in `bench.common`.
"""
