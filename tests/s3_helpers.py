"""Fixtures of the tests that talk to S3: dummy credentials and one loopback `moto` server per test module.

Import them into a test module (`from s3_helpers import dummy_credentials, server`); `dummy_credentials` is
autouse there, so no credential, profile or endpoint of the machine (nor a user's `BORT_CACHE`) leaks into a
test, nor into the subprocesses a test starts (they inherit the environment)."""
from __future__ import annotations

import pytest

from bort.storage.local_server import MotoServer


@pytest.fixture(autouse=True)
def dummy_credentials(monkeypatch, tmp_path_factory) -> None:
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_CONFIG_FILE", str(empty)),
                        ("AWS_SHARED_CREDENTIALS_FILE", str(empty)), ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "BORT_CACHE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def server():
    srv = MotoServer().start()
    yield srv
    srv.kill()
