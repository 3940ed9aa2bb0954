"""Pretraining data creation: throughput against raw `tokenizers` encoding, and memory against input size.

1. Throughput on tinyshakespeare replicated to ~10 MB: our whole pipeline (`create_pretraining_data` with 2
   worker processes: read, split, tokenise, pair, mask, frame, write shards) against the raw Rust
   `Tokenizer.encode_batch` of the same lines with its own thread pool (reading and splitting the file
   included, nothing written). The two are timed interleaved, in this process, with the same tokenizer.
   Target: ours ≥ 0.8× the raw rate.
2. Peak memory for a small and a 10× larger input (10 MB vs 100 MB; quick: 10 MB vs 40 MB), each run in a
   fresh child process with 2 workers: the peak of the summed PSS of the process tree (sampled every 0.2 s;
   PSS splits pages shared after fork between the processes, so the sum is what the job really holds),
   plus `ru_maxrss` of the parent and of the largest worker. Target: independent of the input size.

    python bench/pretraining_data.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `bort` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

NAME = "pretraining_data"
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BORT_SHARED", REPO.parent / "shared"))
WORKERS = 2


def shared_file(*parts: str) -> Path:
    """A file of the shared data directory; a clear error when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: this benchmark needs the shared data (set BORT_SHARED)")
    return path


def replicate(source: Path, dest: Path, megabytes: float) -> Path:
    """`source` repeated (a blank line between copies) until `dest` holds about `megabytes` MB."""
    text = source.read_bytes().rstrip(b"\n") + b"\n\n"
    copies = max(1, round(megabytes * 1e6 / len(text)))
    with open(dest, "wb") as fh:
        for _ in range(copies):
            fh.write(text)
    return dest


# --- throughput --------------------------------------------------------------------------------------------
def raw_encode(tokenizer: Any, path: Path) -> int:
    """Read `path`, keep its non-blank lines and encode them with the Rust thread pool; returns the tokens."""
    lines = [s for s in (line.strip() for line in open(path, encoding="utf-8")) if s]
    tokens = 0
    for lo in range(0, len(lines), 16384):  # batches keep the Encoding objects bounded, as ours does
        tokens += sum(len(e.ids) for e in tokenizer.backend.encode_batch(lines[lo:lo + 16384],
                                                                         add_special_tokens=False))
    return tokens


def throughput(tokenizer: Any, text: Path, out_dir: Path, repeats: int) -> dict[str, Any]:
    """Our pipeline vs `raw_encode` on `text`, interleaved rounds; rates, their per-round ratio, output sizes."""
    from bort.data.pretraining import create_pretraining_data

    summaries: list[dict[str, Any]] = []

    def ours() -> None:
        summaries.append(create_pretraining_data(str(text), out_dir, tokenizer, num_workers=WORKERS,
                                                 progress=False))

    tokens: list[int] = []
    timings = common.time_interleaved({"ours": ours, "raw": lambda: tokens.append(raw_encode(tokenizer, text))},
                                      repeats=repeats, warmup=0)
    mb = text.stat().st_size / 1e6
    s = summaries[-1]
    return {
        "input_mb": mb, "workers": WORKERS, "timings": timings,
        "ours_mb_s": mb / timings["ours"].median, "raw_mb_s": mb / timings["raw"].median,
        "ours_over_raw_rate": common.paired_ratio(timings["raw"], timings["ours"]),
        "raw_tokens": tokens[-1], "instances": s["counts"]["instances"],
        "instance_tokens": s["counts"]["instance_tokens"], "shard_bytes": sum(
            (out_dir / f["file"]).stat().st_size for f in s["shards"]),
    }


# --- memory ------------------------------------------------------------------------------------------------
CHILD = """
import json, resource, sys
from bort.tokenization import load_tokenizer
from bort.data.pretraining import create_pretraining_data
tok = load_tokenizer(sys.argv[1])
s = create_pretraining_data(sys.argv[2], sys.argv[3], tok, num_workers=int(sys.argv[4]), progress=False)
print(json.dumps({"self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "workers_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "instances": s["counts"]["instances"], "seconds": s["seconds"]}))
"""


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(vocab: Path, text: Path, out_dir: Path) -> dict[str, Any]:
    """Run the pipeline on `text` in a child process; peak tree PSS (sampled) and ru_maxrss figures."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(vocab), str(text), str(out_dir), str(WORKERS)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    peak = {"pss_kb": 0, "processes": 0}

    def sample() -> None:
        while proc.poll() is None:
            pids = [proc.pid, *_children(proc.pid)]
            total = sum(_pss_kb(p) for p in pids)
            if total > peak["pss_kb"]:
                peak.update(pss_kb=total, processes=len(pids))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"the child run on {text} failed with exit status {proc.returncode}")
    child = json.loads(stdout.strip().splitlines()[-1])
    return {"input_mb": text.stat().st_size / 1e6, "peak_tree_pss_mb": peak["pss_kb"] / 1024,
            "processes_at_peak": peak["processes"], "parent_maxrss_mb": child["self_maxrss_kb"] / 1024,
            "largest_worker_maxrss_mb": child["workers_maxrss_kb"] / 1024, "instances": child["instances"],
            "seconds": child["seconds"]}


# --- driver ------------------------------------------------------------------------------------------------
def run(quick: bool = False, write: bool = True) -> dict[str, Any]:
    """Throughput (10 MB, interleaved rounds) and peak memory (small vs 10× input); writes the results."""
    from bort.tokenization import load_tokenizer

    vocab = shared_file("data", "vocab", "roberta-base", "vocab.json")
    source = shared_file("data", "pretrain", "tinyshakespeare.txt")
    tokenizer = load_tokenizer(vocab)
    machine = common.machine_info()
    sizes = (10, 40) if quick else (10, 100)
    with tempfile.TemporaryDirectory(prefix="bort-bench-data-") as tmp:
        tmpdir = Path(tmp)
        small = replicate(source, tmpdir / "small.txt", sizes[0])
        print(f"[{NAME}] throughput on {small.stat().st_size / 1e6:.1f} MB, {WORKERS} workers", flush=True)
        speed = throughput(tokenizer, small, tmpdir / "out-speed", repeats=2 if quick else 3)
        memory = []
        for mb in sizes:
            text = small if mb == sizes[0] else replicate(source, tmpdir / "large.txt", mb)
            print(f"[{NAME}] peak memory on {text.stat().st_size / 1e6:.0f} MB", flush=True)
            memory.append(peak_memory(vocab, text, tmpdir / f"out-mem-{mb}"))
            if mb != sizes[0]:
                text.unlink()
    result = {"name": NAME, "quick": quick, "machine": machine, "throughput": speed, "memory": memory}
    result["markdown"] = report(result)
    if write:
        common.write_results(NAME, {k: v for k, v in result.items() if k != "markdown"}, markdown=result["markdown"])
    print(result["markdown"], flush=True)
    return result


def report(result: dict[str, Any]) -> str:
    """Markdown: rates and their ratio, then memory per input size."""
    t = result["throughput"]
    r = t["ours_over_raw_rate"]
    lines = [f"## Pretraining data creation (CPU{', quick' if result['quick'] else ''})", "",
             f"tinyshakespeare replicated to {t['input_mb']:.1f} MB, RoBERTa vocabulary, {t['workers']} workers "
             f"vs `encode_batch` on its own thread pool; medians over {len(t['timings']['ours'].samples)} "
             "interleaved rounds.", "",
             "| pipeline | MB/s | s (IQR) |", "|---|---|---|",
             f"| ours: split, tokenise, pair, mask, write shards | {t['ours_mb_s']:.2f} | "
             f"{t['timings']['ours'].median:.1f} ({t['timings']['ours'].iqr:.1f}) |",
             f"| raw `Tokenizer.encode_batch` (tokens only) | {t['raw_mb_s']:.2f} | "
             f"{t['timings']['raw'].median:.1f} ({t['timings']['raw'].iqr:.1f}) |", "",
             f"Ours / raw rate: **{r['median']:.2f}** [{r['q1']:.2f}–{r['q3']:.2f}] (target ≥ 0.8). "
             f"{t['instances']} instances, {t['shard_bytes'] / 1e6:.1f} MB of shards.", "",
             "| input MB | peak tree PSS MB | parent maxrss MB | largest worker maxrss MB | s |",
             "|---|---|---|---|---|"]
    for m in result["memory"]:
        lines.append(f"| {m['input_mb']:.0f} | {m['peak_tree_pss_mb']:.0f} | {m['parent_maxrss_mb']:.0f} | "
                     f"{m['largest_worker_maxrss_mb']:.0f} | {m['seconds']:.1f} |")
    lines += ["", "PSS shares the pages the workers inherit by fork (the tokenizer, numpy, torch imported by "
              "`bort`) between the processes; maxrss counts them in each.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python bench/pretraining_data.py [--quick]`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 MB vs 40 MB for memory, 2 rounds")
    args = parser.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
