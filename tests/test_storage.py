"""The S3 checkpoint store against a real S3 API: a `moto` server started by these tests on 127.0.0.1
(free port, dummy credentials, no AWS). Pulls and pushes, ETag/sidecar verification, resume after the
server is killed mid-transfer and restarted, a corrupted object, clear errors, the cache behind
`load_pretrained("s3://…")`, the CLI and the background checkpoint uploader."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

boto3 = pytest.importorskip("boto3")
if importlib.util.find_spec("moto") is None:  # found, not imported: the server runs in its own process
    pytest.skip("moto[server] is not installed (it is in the dev extra)", allow_module_level=True)

from bort import BortConfig, BortForMaskedLM, load_pretrained, save_pretrained  # noqa: E402
from bort.cli import main as bort_main  # noqa: E402
from bort.storage import (ChecksumMismatchError, CheckpointUploader, NoCredentialsError, NotFoundError,  # noqa: E402
                          TransferError, fetch, make_client, push)
from bort.storage.local_server import MotoServer, free_port  # noqa: E402
from s3_helpers import dummy_credentials, server  # noqa: E402,F401 (fixtures)
from bort.storage.verify import MiB, PartMd5, candidate_part_sizes  # noqa: E402

BUCKET = "bort-test"


@pytest.fixture
def s3(server):
    """A client of the shared server with an empty test bucket."""
    client = make_client(server.url)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    return client


def payload(size: int, seed: int = 0) -> bytes:
    return torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy().tobytes()


def test_single_part_roundtrip_and_etag(s3, tmp_path) -> None:
    data = payload(3 * MiB + 17)
    s3.put_object(Bucket=BUCKET, Key="models/a.bin", Body=data)
    result = fetch(f"s3://{BUCKET}/models/a.bin", tmp_path / "a.bin", client=s3, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert result.verified == "ETag (MD5)" and result.bytes_transferred == len(data) and result.resumed_from == 0
    assert not (tmp_path / "a.bin.part").exists() and not (tmp_path / "a.bin.part.json").exists()
    # a directory destination gets the key's name
    (tmp_path / "dir").mkdir()
    assert fetch(f"s3://{BUCKET}/models/a.bin", tmp_path / "dir", client=s3, progress=False).dest == tmp_path / "dir" / "a.bin"


def _ranges_seen(client, key: str) -> list[str | None]:
    """Record the Range header of every GetObject of `key` the client sends (what the server is asked for)."""
    seen: list[str | None] = []

    def hook(request, **_) -> None:
        if request.url.split("?")[0].endswith("/" + key):
            value = request.headers.get("Range")
            seen.append(value.decode() if isinstance(value, bytes) else value)

    client.meta.events.register("before-send.s3.GetObject", hook)
    return seen


def _intervals(ranges: list[str | None]) -> list[tuple[int, int]]:
    """Merged [start, end) intervals of "bytes=A-B" headers."""
    pairs = sorted((int(a), int(b) + 1) for a, b in (r.removeprefix("bytes=").split("-") for r in ranges))
    merged: list[tuple[int, int]] = []
    for start, end in pairs:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _complement(received: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out, cursor = [], 0
    for start, end in sorted(received):
        if start > cursor:
            out.append((cursor, start))
        cursor = max(cursor, end)
    return out + ([(cursor, size)] if cursor < size else [])


def _kill_and_resume(tmp_path: Path, size: int, kill_at: int, **fetch_args) -> None:
    """Kill the server once `kill_at` bytes have arrived through the parallel streams, restart it, put the same
    object back: the next fetch asks only for the missing ranges (recorded in DEST.part.json), receives only
    those bytes and yields the exact object."""
    data = payload(size, seed=1)
    srv = MotoServer().start()
    try:
        client = make_client(srv.url, max_attempts=1)

        def upload() -> None:
            client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key="ckpt/model.bin", Body=data)

        upload()
        url, dest = f"s3://{BUCKET}/ckpt/model.bin", tmp_path / "model.bin"
        first: list[int] = []

        def kill_midway(n: int) -> None:
            first.append(n)
            if sum(first) >= kill_at and srv.proc.poll() is None:
                srv.kill()

        first_ranges = _ranges_seen(client, "ckpt/model.bin")
        with pytest.raises(TransferError, match="run again to resume"):
            fetch(url, dest, client=client, retries=1, backoff=0.01, chunk_size=64 * 1024, progress=False,
                  callback=kill_midway, **fetch_args)
        assert len({r for r in first_ranges}) > 1  # several ranged streams ran at once
        saved = json.loads((tmp_path / "model.bin.part.json").read_text())
        received = [tuple(i) for i in saved["received"]]
        partial = sum(b - a for a, b in received)
        assert kill_at <= partial < size and partial == sum(first) and not dest.exists()
        on_disk = (tmp_path / "model.bin.part").read_bytes()
        assert all(on_disk[a:b] == data[a:b] for a, b in received)  # what the record claims is the object's

        srv.start()  # same port, but empty: moto keeps objects in memory
        upload()
        ranges, second = _ranges_seen(client, "ckpt/model.bin"), []
        result = fetch(url, dest, client=client, progress=False, callback=second.append, **fetch_args)
        assert _intervals(ranges) == _complement(received, size)  # asked for exactly the missing bytes
        assert sum(second) == result.bytes_transferred == size - partial and result.resumed_from == partial
        assert result.verified == "ETag (MD5)" and not (tmp_path / "model.bin.part").exists()
        assert not (tmp_path / "model.bin.part.json").exists()
        assert hashlib.md5(dest.read_bytes()).digest() == hashlib.md5(data).digest()
    finally:
        srv.kill()


def test_resume_after_server_killed_mid_transfer(tmp_path) -> None:
    # 12 MiB in 1 MiB parts over 4 streams: well above what the socket buffers can still deliver after the
    # server dies, so every stream stops midway and the holes are scattered.
    _kill_and_resume(tmp_path, 12 * MiB, kill_at=1, part_size=MiB, threads=4)


@pytest.mark.slow
def test_resume_200mb_transfers_only_the_missing_bytes(tmp_path) -> None:
    """The issue's figure: a 200 MB object interrupted at 40% (default parts and threads) resumes with exactly
    the missing bytes."""
    _kill_and_resume(tmp_path, 200_000_000, kill_at=80_000_000)


def test_multipart_etag_verified_with_part_size_from_the_object(s3, tmp_path) -> None:
    """Uploaded by plain boto3 in 5 MiB parts (no sidecar, no metadata of ours): the part size comes from
    HeadObject(PartNumber=1) or is inferred, and the multipart ETag is recomputed."""
    from boto3.s3.transfer import TransferConfig

    data = payload(11 * MiB + 5, seed=2)
    (tmp_path / "src").write_bytes(data)
    s3.upload_file(str(tmp_path / "src"), BUCKET, "mp.bin",
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    etag = s3.head_object(Bucket=BUCKET, Key="mp.bin")["ETag"].strip('"')
    assert etag.endswith("-3")
    hasher = PartMd5(5 * MiB)
    hasher.update(data)
    assert hasher.hexdigest() == etag  # our formula is S3's
    assert 5 * MiB in candidate_part_sizes(len(data), 3)
    result = fetch(f"s3://{BUCKET}/mp.bin", tmp_path / "out.bin", client=s3, progress=False)
    assert result.verified.startswith("multipart ETag, 5242880-byte parts")
    assert (tmp_path / "out.bin").read_bytes() == data


def test_push_writes_sidecars_and_fetch_prefers_them(s3, tmp_path) -> None:
    data = payload(6 * MiB, seed=3)
    (tmp_path / "w.bin").write_bytes(data)
    result = push(tmp_path / "w.bin", f"s3://{BUCKET}/run/", client=s3, part_size=5 * MiB, progress=False)
    assert result.urls == [f"s3://{BUCKET}/run/w.bin"]
    sidecar = s3.get_object(Bucket=BUCKET, Key="run/w.bin.sha256")["Body"].read().decode()
    assert sidecar.split()[0] == hashlib.sha256(data).hexdigest()
    got = fetch(f"s3://{BUCKET}/run/w.bin", tmp_path / "got.bin", client=s3, progress=False)
    assert got.verified == "sha256 sidecar" and (tmp_path / "got.bin").read_bytes() == data
    # without the sidecar the multipart ETag is checked, with the part size our push recorded
    s3.delete_object(Bucket=BUCKET, Key="run/w.bin.sha256")
    got = fetch(f"s3://{BUCKET}/run/w.bin", tmp_path / "got2.bin", client=s3, progress=False)
    assert got.verified == "multipart ETag, 5242880-byte parts"


def test_corrupted_object_is_never_renamed_to_dest(s3, tmp_path) -> None:
    """The object's bytes disagree with its sidecar (corrupted at rest): a clear error, DEST absent, the
    bytes kept in DEST.part; a fixed object then downloads with --restart semantics."""
    data = payload(2 * MiB, seed=4)
    bad = bytearray(data)
    bad[12345] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key="c.bin", Body=bytes(bad))
    s3.put_object(Bucket=BUCKET, Key="c.bin.sha256", Body=f"{hashlib.sha256(data).hexdigest()}  c.bin\n".encode())
    dest = tmp_path / "c.bin"
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch.*sha256 sidecar.*kept in"):
        fetch(f"s3://{BUCKET}/c.bin", dest, client=s3, progress=False)
    assert not dest.exists() and (tmp_path / "c.bin.part").read_bytes() == bytes(bad)
    # again: nothing is missing so nothing is downloaded, and it still refuses
    with pytest.raises(ChecksumMismatchError):
        fetch(f"s3://{BUCKET}/c.bin", dest, client=s3, progress=False)
    assert not dest.exists()
    s3.put_object(Bucket=BUCKET, Key="c.bin", Body=data)  # repaired (a new ETag: the partial is discarded)
    result = fetch(f"s3://{BUCKET}/c.bin", dest, client=s3, progress=False)
    assert dest.read_bytes() == data and result.resumed_from == 0


def test_corrupted_partial_fails_the_etag_check(s3, tmp_path) -> None:
    """A partial download damaged on disk: the resumed download fails the ETag check instead of producing
    a wrong file; --restart (restart=True) then recovers."""
    data = payload(3 * MiB, seed=5)
    s3.put_object(Bucket=BUCKET, Key="p.bin", Body=data)
    dest, count = tmp_path / "p.bin", []

    def interrupt(n: int) -> None:
        count.append(n)
        if sum(count) >= MiB:
            raise KeyboardInterrupt  # the user's Ctrl-C: not retried, the partial is kept

    with pytest.raises(KeyboardInterrupt):
        fetch(f"s3://{BUCKET}/p.bin", dest, client=s3, progress=False, chunk_size=256 * 1024, callback=interrupt)
    part = tmp_path / "p.bin.part"
    assert json.loads((tmp_path / "p.bin.part.json").read_text())["received"] == [[0, MiB]]
    assert part.read_bytes()[:MiB] == data[:MiB]
    damaged = bytearray(part.read_bytes())
    damaged[100] ^= 1
    part.write_bytes(bytes(damaged))
    with pytest.raises(ChecksumMismatchError, match="ETag"):
        fetch(f"s3://{BUCKET}/p.bin", dest, client=s3, progress=False)
    assert not dest.exists()
    fetch(f"s3://{BUCKET}/p.bin", dest, client=s3, progress=False, restart=True)
    assert dest.read_bytes() == data


def test_clear_errors(s3, server, tmp_path, monkeypatch) -> None:
    with pytest.raises(NotFoundError, match="no such bucket 'no-such-bucket'"):
        fetch("s3://no-such-bucket/x.bin", tmp_path / "x", client=s3, progress=False)
    with pytest.raises(NotFoundError, match="no such key 'missing.bin' in bucket"):
        fetch(f"s3://{BUCKET}/missing.bin", tmp_path / "x", client=s3, progress=False)
    with pytest.raises(NotFoundError, match="no such bucket"):
        push(__file__, "s3://no-such-bucket/x", client=s3, progress=False, retries=0)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(NoCredentialsError, match="no AWS credentials found.*--no-sign-request"):
        fetch(f"s3://{BUCKET}/missing.bin", tmp_path / "x", endpoint_url=server.url, progress=False)
    with pytest.raises(ValueError, match="not an s3:// URL"):
        fetch("http://example.invalid/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_access_denied(s3, tmp_path) -> None:
    """A bucket policy denying reads: the server answers 403 and the error says access denied."""
    from bort.storage import AccessDeniedError

    s3.create_bucket(Bucket="bort-denied")
    s3.put_object(Bucket="bort-denied", Key="k.bin", Body=b"secret")
    s3.put_bucket_policy(Bucket="bort-denied", Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                                               "Resource": "arn:aws:s3:::bort-denied/*"}]}))
    with pytest.raises(AccessDeniedError, match="access denied"):
        fetch("s3://bort-denied/k.bin", tmp_path / "k.bin", client=s3, progress=False)
    assert not (tmp_path / "k.bin").exists()


def _tiny_model() -> BortForMaskedLM:
    torch.manual_seed(0)
    return BortForMaskedLM(BortConfig.preset("bort_4_8_768_1024", hidden_size=32, num_attention_heads=4,
                                             intermediate_size=48, num_hidden_layers=2, vocab_size=100,
                                             max_position_embeddings=32))


def test_load_pretrained_from_s3_through_the_cache(s3, server, tmp_path, monkeypatch) -> None:
    model = _tiny_model()
    save_pretrained(model, tmp_path / "ckpt")
    push(tmp_path / "ckpt", f"s3://{BUCKET}/runs/r1/step-0000010", client=s3, progress=False)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/r1/")["Contents"]]
    assert "runs/r1/step-0000010/config.json" in keys and "runs/r1/step-0000010/model.safetensors.sha256" in keys
    monkeypatch.setenv("BORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.url)  # boto3's own variable: no flag needed
    loaded = load_pretrained(f"s3://{BUCKET}/runs/r1/step-0000010", task="mlm")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    cached = tmp_path / "cache" / "s3" / BUCKET / "runs" / "r1" / "step-0000010" / "model.safetensors"
    stamp = cached.stat().st_mtime_ns
    load_pretrained(f"s3://{BUCKET}/runs/r1/step-0000010", task="mlm")  # served from the cache
    assert cached.stat().st_mtime_ns == stamp
    from bort.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no such key"):
        load_pretrained(f"s3://{BUCKET}/runs/nothing-here")


def test_cli_fetch_and_push(s3, server, tmp_path, capsys) -> None:
    data = payload(MiB + 3, seed=6)
    (tmp_path / "f.bin").write_bytes(data)
    assert bort_main(["push", str(tmp_path / "f.bin"), f"s3://{BUCKET}/cli/f.bin", "--endpoint-url", server.url,
                      "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["objects"] == [f"s3://{BUCKET}/cli/f.bin"]
    assert bort_main(["fetch", f"s3://{BUCKET}/cli/f.bin", str(tmp_path / "g.bin"), "--endpoint-url", server.url,
                      "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] == ["sha256 sidecar"] and report["bytes"] == len(data)
    assert (tmp_path / "g.bin").read_bytes() == data
    assert bort_main(["fetch", f"s3://{BUCKET}/cli/nope", str(tmp_path / "n"), "--endpoint-url", server.url]) == 2
    assert "bort fetch: error:" in capsys.readouterr().err


def test_background_uploader_pushes_and_reports_failures(s3, server, tmp_path) -> None:
    model = _tiny_model()
    for step in (1, 2):
        save_pretrained(model, tmp_path / "checkpoints" / f"step-{step:07d}")
    uploader = CheckpointUploader(f"s3://{BUCKET}/bg", tmp_path / "staging", endpoint_url=server.url)
    uploader.enqueue(tmp_path / "checkpoints" / "step-0000001")
    uploader.enqueue(tmp_path / "checkpoints" / "step-0000002")
    report = uploader.close(timeout=60)
    assert report["uploaded"] == [f"s3://{BUCKET}/bg/step-0000001", f"s3://{BUCKET}/bg/step-0000002"]
    assert report["failed"] == [] and report["pending"] == 0 and not any((tmp_path / "staging").iterdir())
    # An endpoint nobody listens on: retried with backoff, then reported; enqueue itself never raises.
    dead = CheckpointUploader(f"s3://{BUCKET}/bg", tmp_path / "staging2", attempts=2, backoff=0.01,
                              client=make_client(f"http://127.0.0.1:{free_port()}", max_attempts=1))
    dead.enqueue(tmp_path / "checkpoints" / "step-0000001")
    dead.enqueue(tmp_path / "does-not-exist")
    report = dead.close(timeout=60)
    assert report["uploaded"] == [] and len(report["failed"]) == 2 and report["pending"] == 0
    errors = sorted(f["error"] for f in report["failed"])  # the two threads may report in either order
    assert "cannot connect" in errors[0] and errors[1].startswith("staging:")
    assert "unreachable" in report["unreachable"] and "cannot connect" in report["unreachable"]


def test_distillation_pushes_checkpoints_in_the_background(s3, server, tmp_path, monkeypatch) -> None:
    """`--push-to`: every checkpoint and final/ land under the prefix, listed in summary.json and metrics;
    with a dead endpoint the run still finishes and reports the failures."""
    from bort.data.instances import InstanceSettings
    from bort.data.pretraining import create_pretraining_data
    from bort.distill.recipe import DistillSettings, run_distillation
    from bort.tokenization import load_tokenizer
    from bort.train.metrics import read_jsonl
    from hf_helpers import REPO, minilm_dir

    create_pretraining_data(str(REPO / "test_data" / "sample_text.txt"), tmp_path / "data",
                            load_tokenizer(minilm_dir() / "vocab.txt"),
                            InstanceSettings(max_seq_length=32, max_predictions_per_seq=4), progress=False)
    student = json.dumps({"preset": "bort_4_8_768_1024", "hidden_size": 16, "num_attention_heads": 2,
                          "intermediate_size": 16, "num_hidden_layers": 1, "max_position_embeddings": 32})

    def run(out: Path, push_to: str) -> dict:
        return run_distillation(DistillSettings(
            train=[str(tmp_path / "data" / "part-*.rec")], student=student, output_dir=str(out), batch_size=4,
            max_steps=4, checkpoint_interval=2, eval_interval=0, progress=False, launcher="none", push_to=push_to))

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.url)
    summary = run(tmp_path / "ok", f"s3://{BUCKET}/distill")
    assert summary["push"]["uploaded"] == [f"s3://{BUCKET}/distill/{name}"
                                           for name in ("step-0000002", "step-0000004", "final")]
    assert summary["push"]["failed"] == []
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="distill/")["Contents"]}
    assert "distill/step-0000004/trainer.pt" in keys and "distill/final/model.safetensors" in keys
    assert [r for r in read_jsonl(tmp_path / "ok" / "metrics.jsonl") if r["event"] == "push"]

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr("bort.storage.uploader.backoff_delay", lambda attempt, base: 0.01)
    summary = run(tmp_path / "dead", f"s3://{BUCKET}/distill2")
    assert summary["steps"] == 4 and summary["push"]["uploaded"] == [] and len(summary["push"]["failed"]) == 3
    assert json.loads((tmp_path / "dead" / "summary.json").read_text())["push"]["failed"]
