"""S3 pulls against a local S3 API server: our resumable, verified `fetch` vs boto3's `download_file`.

A `moto` server runs in its own process on 127.0.0.1 (dummy credentials, no AWS). The object (200 MB;
`--quick`: 32 MB) is uploaded with boto3's transfer manager in 8 MiB parts, as the AWS CLI does, so our
fetch verifies a multipart ETag (MD5 of every byte) while `download_file` verifies nothing.
- throughput: fetch vs `download_file` (the transfer manager the AWS CLI uses), interleaved rounds, ratio
  per round (target ≥ 0.8);
- resume: the server is killed after 40% of the body arrived, restarted with the same object, and the next
  fetch must ask for and receive exactly the missing bytes.

    python bench/s3_transfer.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bort.storage.local_server import MotoServer  # noqa: E402

NAME = "s3_transfer"
BUCKET, KEY = "bort-bench", "ckpt/model.bin"


def run(quick: bool) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    from bort.storage import TransferError, fetch, make_client

    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ[name] = value
    size = 32_000_000 if quick else 200_000_000
    repeats = 2 if quick else 3
    work = Path(tempfile.mkdtemp(prefix="bort-s3-bench-"))
    server = MotoServer()
    server.start()
    try:
        client = make_client(server.url, max_attempts=1)
        source = work / "source.bin"
        with open(source, "wb") as handle:
            for _ in range(size // (1 << 20)):
                handle.write(os.urandom(1 << 20))
            handle.write(os.urandom(size % (1 << 20)))

        def upload() -> None:
            client.create_bucket(Bucket=BUCKET)
            client.upload_file(str(source), BUCKET, KEY, Config=TransferConfig())  # 8 MiB parts, like the CLI

        upload()
        url = f"s3://{BUCKET}/{KEY}"
        verified: list[str] = []

        def ours() -> None:
            verified.append(fetch(url, work / "ours.bin", client=client, progress=False, restart=True).verified)

        def boto3_download_file() -> None:
            client.download_file(BUCKET, KEY, str(work / "peer.bin"))

        timings = common.time_interleaved({"fetch": ours, "download_file": boto3_download_file},
                                          repeats=repeats, warmup=1)
        ratio = common.paired_ratio(timings["download_file"], timings["fetch"])  # > 1: ours faster

        # resume: kill the server at 40%, restart it with the same object, resume
        got: list[int] = []
        kill_at = int(size * 0.4)

        def kill_midway(n: int) -> None:
            got.append(n)
            if sum(got) >= kill_at and server.proc.poll() is None:
                server.kill()

        dest = work / "resumed.bin"
        try:
            fetch(url, dest, client=client, progress=False, retries=1, backoff=0.01, chunk_size=64 * 1024,
                  callback=kill_midway)
            raise RuntimeError("the transfer was not interrupted")
        except TransferError:
            pass
        partial = (work / "resumed.bin.part").stat().st_size
        server.start()
        upload()
        second: list[int] = []
        result = fetch(url, dest, client=client, progress=False, callback=second.append)
        only_missing = sum(second) == size - partial == result.bytes_transferred
        identical = dest.stat().st_size == size and _same(dest, source)
    finally:
        server.kill()
    mb = size / 1e6
    rows = [{"candidate": name, "MB": mb, "median_s": t.median, "MB_per_s": mb / t.median,
             "q1_s": t.q1, "q3_s": t.q3} for name, t in timings.items()]
    data = {"size_bytes": size, "rows": rows, "timings": timings, "throughput_ratio_fetch_over_download_file": ratio,
            "verified": sorted(set(verified)),
            "resume": {"killed_after_bytes": partial, "missing_bytes": size - partial,
                       "bytes_received_on_resume": sum(second), "only_missing_bytes": only_missing,
                       "identical": identical, "seconds": result.seconds},
            "machine": common.machine_info()}
    markdown = (f"# {NAME}\n\nOne {mb:.0f} MB object on a local moto S3 server (separate process), uploaded in "
                f"8 MiB parts; our `fetch` (ranged stream + multipart-ETag verification: {', '.join(sorted(set(verified)))}) "
                "vs boto3 `download_file` (no verification), interleaved rounds.\n\n"
                + common.markdown_table(rows)
                + f"\nThroughput ratio fetch / download_file (per round, median): **{ratio['median']:.2f}** "
                  f"(q1 {ratio['q1']:.2f}, q3 {ratio['q3']:.2f}; target ≥ 0.8).\n\n"
                  f"Resume: server killed after {partial:,} of {size:,} bytes, restarted with the same object; the "
                  f"resumed fetch received {sum(second):,} bytes (missing: {size - partial:,}) → "
                  f"only missing bytes: **{only_missing}**, identical file: **{identical}**.\n")
    common.write_results(NAME, data, markdown=markdown)
    print(markdown)
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    return data


def _same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 22), fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
