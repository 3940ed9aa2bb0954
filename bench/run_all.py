"""Run every benchmark in bench/ and write bench/results/*.json, *.md, *.png and a combined README.md.

A benchmark is a module in this directory defining `run(quick: bool) -> dict` that writes
`results/<name>.md` (and .json, .png); the Markdown goes into the combined README. Each benchmark runs in a
fresh Python process, one after another, never concurrently: the timing assumes the machine's cores are
ours, and a fresh process keeps one benchmark's memory and allocator state from affecting the next.

    python bench/run_all.py [--quick] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `bort` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

HELPERS = {"common", "run_all"}


def discover() -> list[str]:
    """Names of the modules in bench/ that define `run` (sorted; helpers excluded)."""
    here = Path(__file__).resolve().parent
    names = []
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
        if info.name in HELPERS or info.name.startswith("_") or info.ispkg:
            continue
        if callable(getattr(importlib.import_module(f"bench.{info.name}"), "run", None)):
            names.append(info.name)
    return names


def run_in_subprocess(name: str, quick: bool) -> int:
    """Run `bench.<name>.run(quick)` in a fresh interpreter from the repository root; its exit status."""
    code = f"from bench import {name} as m; m.run(quick={quick!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode


def machine_section(machine: dict[str, Any]) -> str:
    keys = ("cpu_model", "usable_cpus", "isa", "torch", "torch_threads", "transformers", "python",
            "load_average_1_5_15")
    return "\n".join(f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in machine.items() if k in keys) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats (about 2 minutes)")
    parser.add_argument("--only", nargs="*", help="run only these benchmark modules")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    machine = common.machine_info()
    summary = []
    for name in names:
        start = time.perf_counter()
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        status = run_in_subprocess(name, args.quick)
        seconds = time.perf_counter() - start
        summary.append({"benchmark": name, "seconds": round(seconds, 1),
                        "status": "ok" if status == 0 else f"failed (exit {status})",
                        "files": ", ".join(f"{name}{ext}" for ext in (".json", ".md", ".png")
                                           if (common.RESULTS_DIR / f"{name}{ext}").exists())})
    # The combined README keeps the latest result of every benchmark, so `--only` refreshes one section.
    sections = []
    for name in discover():
        md, png = common.RESULTS_DIR / f"{name}.md", common.RESULTS_DIR / f"{name}.png"
        if md.exists():
            sections.append(md.read_text(encoding="utf-8"))
            if png.exists():
                sections.append(f"![{name}]({name}.png)\n")
    text = ["# Benchmark results", "",
            f"`python bench/run_all.py{' --quick' if args.quick else ''}`, "
            f"{time.strftime('%Y-%m-%d %H:%M')} (ran: {', '.join(names)}; other sections are their latest "
            "results). Machine at the start:", "", machine_section(machine),
            common.markdown_table(summary), *sections]
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "README.md").write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {len(names)} benchmark(s) and README.md to bench/results/", flush=True)
    return 0 if all(row["status"] == "ok" for row in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
