"""S3 for the tests: moto's server on a loopback port, reached by boto3 exactly as AWS would be."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

__all__ = ["bucket", "s3", "s3_server"]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 API server (``moto[server]``), started on a free loopback port for this module."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch):
    """A boto3 S3 client; the environment points every other boto3 client of the test at the same server."""
    import boto3

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", s3_server),
    ):
        monkeypatch.setenv(name, value)
    return boto3.client("s3")


def bucket(s3, *, locked: bool) -> str:
    """A new bucket, with Object Lock (and so versioning) when ``locked``."""
    name = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    return name
