"""The S3 store against a hostile bucket and hostile timing, on a loopback `moto` server (dummy credentials).

- Keys that would map outside the destination (`m/../../X`, `m//abs`, `m/./x`, backslashes, NUL, …) are refused
  with the key named, by `bort fetch` and by `load_pretrained("s3://…")` through the cache, before any file is
  written: the whole temporary tree is listed before and after.
- Processes pulling one object at once download it once (a lock per destination) and all get its bytes.
- A failed `bort push` leaves no unfinished multipart upload on the server.
- The background uploader bounds its staging by the run's keep count and detects a dead endpoint once.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
if importlib.util.find_spec("moto") is None:  # found, not imported: the server runs in its own process
    pytest.skip("moto[server] is not installed (it is in the dev extra)", allow_module_level=True)

from bort.cli import main as bort_main  # noqa: E402
from bort.storage import (CheckpointUploader, StorageError, UnsafeKeyError, cached_path, fetch,  # noqa: E402
                          make_client, push)
from bort.storage.local_server import free_port  # noqa: E402
from s3_helpers import dummy_credentials, server  # noqa: E402,F401 (fixtures)
from bort.storage.paths import unsafe_reason  # noqa: E402
from bort.storage.verify import MiB  # noqa: E402

BUCKET = "bort-hostile"


_buckets = itertools.count()


@pytest.fixture
def s3(server):
    return make_client(server.url)


@pytest.fixture
def bucket(s3) -> str:
    """A new, empty bucket per test (hostile keys such as `m/../../X` are not reliably deletable)."""
    name = f"bort-hostile-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


def tree(root: Path) -> set[str]:
    """Every path under `root` (files, directories, links), relative: what a test compares before and after."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- 1. path confinement --------------------------------------------------------------------------------------
@pytest.mark.parametrize("relative, reason", [
    ("../../X", "'.' or '..'"), ("..", "'.' or '..'"), ("./x", "'.' or '..'"), ("a/../../b", "'.' or '..'"),
    ("/etc/passwd", "absolute path"), ("a//b", "empty path segment"), ("a/", "empty path segment"),
    ("", "empty"), ("a\\..\\b", "backslash"), ("x\x00y", "control character"), ("new\nline", "control character"),
    ("a" * 256, "longer than 255 bytes"), ("model.bin.part", "reserved"), ("model.bin.part.json", "reserved"),
    (".model.bin.lock", "reserved"), (".model.bin.s3.json", "reserved"),
])
def test_unsafe_relative_keys_are_named_with_the_reason(relative, reason) -> None:
    assert reason in unsafe_reason(relative)


@pytest.mark.parametrize("relative", ["config.json", "sub/dir/model.safetensors", "name with spaces.bin",
                                      "ünïcödé.txt", "...", "a..b", ".hidden", "a" * 255])
def test_plain_relative_keys_are_accepted(relative) -> None:
    assert unsafe_reason(relative) is None


HOSTILE_KEYS = ["m/../../X", "m/./x", "m/a\\..\\..\\b", "m/x\x00y", "m/sub/../../../X", "m/.model.bin.lock",
                "m/" + "a" * 300]


@pytest.mark.parametrize("hostile", HOSTILE_KEYS + ["ABSOLUTE"])
def test_bort_fetch_refuses_a_prefix_with_a_hostile_key_before_writing(s3, bucket, server, tmp_path, capsys,
                                                                      hostile) -> None:
    """`bort fetch s3://b/m/ DEST`: exit 2, the key named on stderr, and not one file written anywhere (the
    good keys are refused too: a half-fetched checkpoint is worse than none)."""
    if hostile == "ABSOLUTE":  # "m/" + an absolute path inside the test's own directory, so an escape shows
        hostile = "m/" + str(tmp_path / "abs" / "planted")
    for key in ("m/config.json", "m/model.bin", hostile):
        s3.put_object(Bucket=bucket, Key=key, Body=b"pwned " + key.encode("utf-8", "surrogatepass"))
    (tmp_path / "a").mkdir()
    before = tree(tmp_path)
    rc = bort_main(["fetch", f"s3://{bucket}/m/", str(tmp_path / "a" / "dest"), "--endpoint-url", server.url,
                    "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "bort fetch: error:" in err and repr(hostile) in err and "Nothing was written" in err
    assert tree(tmp_path) == before


def test_prefix_with_file_and_directory_of_one_name_is_refused(s3, bucket, tmp_path) -> None:
    for key in ("m/a", "m/a/b"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    with pytest.raises(UnsafeKeyError, match=r"the key 'm/a' is a file where the key 'm/a/b' needs a directory"):
        from bort.storage import fetch_prefix
        fetch_prefix(f"s3://{bucket}/m/", tmp_path / "dest", client=s3, progress=False)
    assert tree(tmp_path) == set()


def test_symlink_inside_dest_cannot_carry_a_key_outside(s3, bucket, tmp_path) -> None:
    """A link already inside DEST (made by the user, never by a fetch) is followed when checking: a key under
    it that would land outside DEST is refused."""
    from bort.storage import fetch_prefix

    s3.put_object(Bucket=bucket, Key="m/sub/x.bin", Body=b"x")
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "dest" / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeKeyError, match=r"'m/sub/x\.bin': it resolves to .*outside"):
        fetch_prefix(f"s3://{bucket}/m/", tmp_path / "dest", client=s3, progress=False)
    assert not any((tmp_path / "outside").iterdir())


def test_single_object_named_dot_dot_is_refused(s3, bucket, server, tmp_path, capsys) -> None:
    """`bort fetch s3://b/m/.. DIR/`: the file name comes from the key and must be a plain name."""
    s3.put_object(Bucket=bucket, Key="m/..", Body=b"pwned")
    (tmp_path / "dir").mkdir()
    before = tree(tmp_path)
    assert bort_main(["fetch", f"s3://{bucket}/m/..", str(tmp_path / "dir") + "/", "--endpoint-url", server.url,
                      "--no-progress"]) == 2
    assert "refusing the key 'm/..'" in capsys.readouterr().err
    assert tree(tmp_path) == before


def _tiny_checkpoint(directory: Path) -> None:
    import torch

    from bort import BortConfig, BortForMaskedLM, save_pretrained

    torch.manual_seed(0)
    save_pretrained(BortForMaskedLM(BortConfig.preset(
        "bort_4_8_768_1024", hidden_size=16, num_attention_heads=2, intermediate_size=16, num_hidden_layers=1,
        vocab_size=50, max_position_embeddings=16)), directory)


@pytest.mark.parametrize("hostile", ["m/../../X", "m//abs", "m/x\x00y"])
def test_load_pretrained_through_the_cache_refuses_hostile_keys(s3, bucket, server, tmp_path, monkeypatch,
                                                               hostile) -> None:
    """A real checkpoint under the prefix plus one hostile key: load_pretrained raises CheckpointError naming
    the key and the cache directory stays empty (`m/../../X` would have landed in $BORT_CACHE/s3/X)."""
    from bort import load_pretrained
    from bort.checkpoint import CheckpointError

    _tiny_checkpoint(tmp_path / "ckpt")
    push(tmp_path / "ckpt", f"s3://{bucket}/m", client=s3, progress=False)
    s3.put_object(Bucket=bucket, Key=hostile, Body=b"pwned")
    monkeypatch.setenv("BORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.url)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError, match="refusing the key " + repr(hostile).replace("\\", "\\\\")):
        load_pretrained(f"s3://{bucket}/m", task="mlm")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("url, named", [("s3://b/../../x", "b/../../x"), ("s3://../x", "../x"),
                                        ("s3://b//etc/passwd", "b//etc/passwd"), ("s3://b/m//x", "b/m//x"),
                                        ("s3://b/x.part", "b/x.part"), ("s3://./x", "./x")])
def test_cache_path_of_a_hostile_url_is_refused_before_any_request(tmp_path, monkeypatch, url, named) -> None:
    """$BORT_CACHE/s3/BUCKET/KEY: a bucket or key that would climb out (or alias another entry) is refused
    before any request (nothing listens on the endpoint) and before the cache directory is created."""
    monkeypatch.setenv("BORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens: no request
    with pytest.raises(UnsafeKeyError, match="refusing the bucket and key " + repr(named)):
        cached_path(url)
    assert tree(tmp_path) == set()


# --- 7. parallel ranged fetch: options, a changed object, a damaged progress record -----------------------
def test_bort_fetch_threads_and_part_size_options(s3, bucket, server, tmp_path, capsys) -> None:
    data = os.urandom(5 * MiB + 7)
    s3.put_object(Bucket=bucket, Key="o.bin", Body=data)
    assert bort_main(["fetch", f"s3://{bucket}/o.bin", str(tmp_path / "o.bin"), "--endpoint-url", server.url,
                      "--no-progress", "--threads", "3", "--part-size-mib", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 6 parts of 1 MiB over 3 threads: 3 GETs of 2 parts each
    assert (report["parts"], report["threads"], report["requests"]) == (6, 3, 3)
    assert report["verified"] == ["ETag (MD5)"] and (tmp_path / "o.bin").read_bytes() == data
    for flag, value, message in (("--threads", "0", "--threads must be between 1 and 256, got 0"),
                                 ("--part-size-mib", "x", "--part-size-mib expects an integer, got 'x'")):
        with pytest.raises(SystemExit):
            bort_main(["fetch", f"s3://{bucket}/o.bin", "--endpoint-url", server.url, flag, value])
        assert message in capsys.readouterr().err


def test_object_replaced_between_head_and_get_is_refused(s3, bucket, server, tmp_path) -> None:
    """Every ranged GET carries If-Match with the ETag the download started from: an object replaced meanwhile
    gives ObjectChangedError, not a file mixing two versions."""
    from bort.storage import ObjectChangedError

    s3.put_object(Bucket=bucket, Key="v.bin", Body=os.urandom(3 * MiB))
    client = make_client(server.url, max_attempts=1)
    replaced: list[int] = []

    def replace_first(**_) -> None:
        if not replaced:
            replaced.append(1)
            s3.put_object(Bucket=bucket, Key="v.bin", Body=os.urandom(3 * MiB))

    client.meta.events.register("before-call.s3.GetObject", replace_first)
    with pytest.raises(ObjectChangedError, match=rf"fetch s3://{bucket}/v\.bin: the object changed"):
        fetch(f"s3://{bucket}/v.bin", tmp_path / "v.bin", client=client, progress=False, verify=False)
    assert not (tmp_path / "v.bin").exists()


@pytest.mark.parametrize("record", [
    '{"received": [[0, 1000000000000]]}', '{"received": "all"}', '{"received": [[5, 2]]}',
    '{"part_size": 0, "received": []}', '{"received": [[0, true]]}', "[[[[[[[[", "\u0000garbage",
])
def test_damaged_progress_record_restarts_the_download(s3, bucket, tmp_path, caplog, record) -> None:
    """DEST.part.json is a local file like any other input: a malformed one (for this very object) is
    discarded with a warning naming it and the download starts over, producing the exact object."""
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket=bucket, Key="d.bin", Body=data)
    etag = s3.head_object(Bucket=bucket, Key="d.bin")["ETag"].strip('"')
    dest = tmp_path / "d.bin"
    (tmp_path / "d.bin.part").write_bytes(b"\0" * len(data))
    base = {"url": f"s3://{bucket}/d.bin", "etag": etag, "size": len(data), "part_size": MiB}
    try:
        text = json.dumps({**base, **json.loads(record)})
    except ValueError:
        text = record  # not JSON at all
    (tmp_path / "d.bin.part.json").write_text(text)
    result = fetch(f"s3://{bucket}/d.bin", dest, client=s3, progress=False)
    assert dest.read_bytes() == data and result.resumed_from == 0 and result.bytes_transferred == len(data)
    if text != record:
        assert "d.bin.part.json" in caplog.text and "downloading the object again" in caplog.text


# --- 4. concurrent pulls --------------------------------------------------------------------------------------
CHILD = r"""
import hashlib, json, logging, os, sys, time
import bort.storage.cache as cache
import bort.storage.download as download

mode, url, key, go, dest = sys.argv[1:6]
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
gets = []
real_make_client = cache.make_client

def counting_client(*args, **kwargs):
    client = real_make_client(*args, **kwargs)
    def hook(request, **_):
        if request.url.split("?")[0].endswith("/" + key):
            gets.append(request.headers.get("Range"))
    client.meta.events.register("before-send.s3.GetObject", hook)
    return client

cache.make_client = counting_client
real_write = download._RangedTransfer._write

def slow_write(self, *args):  # a slow link: the download outlasts the others' start-up
    time.sleep(0.02)
    real_write(self, *args)

download._RangedTransfer._write = slow_write
import boto3  # noqa: F401  (imported before the start line, so the processes start together)
while not os.path.exists(go):
    time.sleep(0.002)
if mode == "cache":
    path = cache.cached_path(url)
else:
    from bort.cli import main
    rc = main(["fetch", url, dest, "--no-progress"])
    path = dest
    assert rc == 0, rc
print("RESULT " + json.dumps({"gets": len(gets), "path": str(path),
                              "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}))
"""


def _race(tmp_path: Path, server, mode: str, url: str, key: str, dest: Path, count: int) -> list[dict]:
    """Start `count` processes pulling `url` at the same instant; their results and whether each waited."""
    go = tmp_path / "go"
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": server.url, "BORT_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, mode, url, key, str(go), str(dest)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    time.sleep(1.0)  # let them import and reach the start line
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        result["waited"] = "another process is downloading" in err
        results.append(result)
    return results


def test_three_processes_pull_one_key_through_the_cache_once(s3, bucket, server, tmp_path) -> None:
    """Every torchrun rank resolving an s3:// teacher at once: one process downloads (3 ranged GETs of 8 MiB
    parts), the others wait on the lock and reuse the verified file; all read identical bytes."""
    data = os.urandom(20 * MiB)
    s3.put_object(Bucket=bucket, Key="teacher/model.bin", Body=data)
    results = _race(tmp_path, server, "cache", f"s3://{bucket}/teacher/model.bin", "teacher/model.bin",
                    tmp_path / "unused", 3)
    assert {r["sha256"] for r in results} == {hashlib.sha256(data).hexdigest()}
    assert sorted(r["gets"] for r in results) == [0, 0, 3]  # downloaded once
    assert sum(r["waited"] for r in results) >= 1  # the lock was contended, not a lucky schedule
    cached = tmp_path / "cache" / "s3" / bucket / "teacher"
    # no .part or progress record left (the lock file may stay, empty: removing it safely is filelock's call)
    assert {p.name for p in cached.iterdir()} - {".model.bin.lock"} == {".model.bin.s3.json", "model.bin"}


def test_two_bort_fetch_into_one_dest_do_not_corrupt(s3, bucket, server, tmp_path) -> None:
    data = os.urandom(20 * MiB)
    s3.put_object(Bucket=bucket, Key="f/model.bin", Body=data)
    dest = tmp_path / "out" / "model.bin"
    dest.parent.mkdir()
    results = _race(tmp_path, server, "cli", f"s3://{bucket}/f/model.bin", "f/model.bin", dest, 2)
    assert {r["sha256"] for r in results} == {hashlib.sha256(data).hexdigest()}
    assert sum(r["waited"] for r in results) == 1  # one ran after the other
    assert {p.name for p in dest.parent.iterdir()} - {".model.bin.lock"} == {"model.bin"}  # no .part(.json)


# --- 6. push cleanup ------------------------------------------------------------------------------------------
def _fail(operation: str, client, when) -> list[int]:
    """Make `operation` fail with a connection error on the client whenever `when(call number)` is true;
    returns the list of calls seen."""
    from botocore.exceptions import EndpointConnectionError

    calls: list[int] = []

    def hook(**_) -> None:
        calls.append(1)
        if when(len(calls)):
            raise EndpointConnectionError(endpoint_url="http://injected")

    client.meta.events.register(f"before-send.s3.{operation}", hook)
    return calls


def _in_transfer_thread(_: int) -> bool:
    """True for calls made by boto3's transfer threads (its own abort), false for the pushing thread."""
    return threading.current_thread() is not threading.main_thread()


def test_failed_push_aborts_its_multipart_upload_even_when_boto3s_abort_fails(s3, bucket, server, tmp_path) -> None:
    """The link drops mid-upload (parts from the third on fail) and is still down when boto3 aborts the upload
    (every abort from its transfer threads fails): the push fails with a StorageError naming the connection
    problem and then aborts the upload itself, so no unfinished upload (and no parts) stays on the server."""
    (tmp_path / "big.bin").write_bytes(os.urandom(30 * MiB))
    client = make_client(server.url, max_attempts=1)
    parts = _fail("UploadPart", client, lambda n: n >= 3)
    aborts = _fail("AbortMultipartUpload", client, _in_transfer_thread)
    with pytest.raises(StorageError, match=rf"push s3://{bucket}/p/big\.bin: cannot connect to the endpoint"):
        push(tmp_path / "big.bin", f"s3://{bucket}/p/big.bin", client=client, part_size=5 * MiB, progress=False,
             retries=0, backoff=0.01)
    assert len(parts) >= 3 and len(aborts) >= 2  # boto3's abort failed, ours went through
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_push_names_an_upload_it_cannot_abort(s3, bucket, server, tmp_path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(12 * MiB))
    client = make_client(server.url, max_attempts=1)
    _fail("UploadPart", client, lambda n: n >= 3)
    _fail("AbortMultipartUpload", client, lambda n: True)
    with pytest.raises(StorageError, match=r"1 unfinished multipart upload\(s\) could not be aborted: "
                                           rf"s3://{bucket}/p/big\.bin upload id \S+ .*aws s3api abort-multipart"):
        push(tmp_path / "big.bin", f"s3://{bucket}/p/big.bin", client=client, part_size=5 * MiB, progress=False,
             retries=0, backoff=0.01)
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["p/big.bin"]
    for upload in uploads:  # clean up for the other tests of the module
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _checkpoints(root: Path, count: int) -> list[Path]:
    out = []
    for step in range(1, count + 1):
        directory = root / f"step-{step:07d}"
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(os.urandom(1024))
        (directory / "config.json").write_text("{}")
        out.append(directory)
    return out


def test_uploader_with_a_dead_endpoint_fails_fast_once_and_keeps_staging_bounded(tmp_path, monkeypatch) -> None:
    """32 checkpoints, `--keep-checkpoints 3`, an endpoint nobody listens on, the uploader's default retry
    settings: the run's close() returns within seconds (it took 610 s), the endpoint is reported unreachable
    once, only the first checkpoint costs connection attempts, and staging never holds more than 3."""
    import bort.storage.uploader as uploader_module

    requests: list[str] = []
    real_make_client = uploader_module.make_client

    def counting_client(*args, **kwargs):
        client = real_make_client(*args, **kwargs)
        client.meta.events.register("before-send.s3", lambda request, **_: requests.append(request.url))
        return client

    monkeypatch.setattr(uploader_module, "make_client", counting_client)
    staging = tmp_path / "staging"
    start = time.monotonic()
    uploader = CheckpointUploader(f"s3://{BUCKET}/run", staging, endpoint_url=f"http://127.0.0.1:{free_port()}",
                                  keep=3)
    most_staged = 0
    for checkpoint in _checkpoints(tmp_path / "checkpoints", 32):
        uploader.enqueue(checkpoint)
        most_staged = max(most_staged, len(list(staging.iterdir())))
    report = uploader.close(timeout=60)
    elapsed = time.monotonic() - start
    assert elapsed < 15, elapsed
    assert most_staged <= 3 and list(staging.iterdir()) == []
    assert report["uploaded"] == [] and report["pending"] == 0
    assert len(report["failed"]) + len(report["skipped"]) == 32
    assert "cannot connect" in report["failed"][0]["error"]
    assert all(f["error"].startswith("not attempted: the endpoint of") for f in report["failed"][1:])
    assert "unreachable" in report["unreachable"] and "cannot connect" in report["unreachable"]
    assert 1 <= len(requests) <= 3  # botocore's attempts for the first checkpoint; none after


def test_uploader_staging_is_bounded_by_keep_while_an_upload_is_slow(tmp_path, monkeypatch) -> None:
    """A slow (live) endpoint: while the first upload runs, newer checkpoints replace the older waiting ones;
    staging holds at most `keep`, the superseded ones are reported as skipped, and the newest are uploaded."""
    import bort.storage.uploader as uploader_module

    release, started, pushed = threading.Event(), threading.Event(), []

    def slow_push(path, target, **_):
        started.set()
        release.wait(30)
        pushed.append(str(target))

    monkeypatch.setattr(uploader_module, "push", slow_push)
    staging = tmp_path / "staging"
    uploader = CheckpointUploader(f"s3://{BUCKET}/run", staging, client=object(), keep=3)
    checkpoints = _checkpoints(tmp_path / "checkpoints", 10)
    uploader.enqueue(checkpoints[0])
    assert started.wait(10)
    for checkpoint in checkpoints[1:]:
        uploader.enqueue(checkpoint)
        assert len(list(staging.iterdir())) <= 3
    release.set()
    report = uploader.close(timeout=30)
    names = [f"s3://{BUCKET}/run/step-{step:07d}" for step in (1, 9, 10)]
    assert report["uploaded"] == pushed == names
    assert [s["checkpoint"] for s in report["skipped"]] == [f"step-{step:07d}" for step in range(2, 9)]
    assert "superseded by step-0000004" in report["skipped"][0]["reason"]
    assert report["failed"] == [] and list(staging.iterdir()) == []
