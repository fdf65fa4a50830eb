"""The S3 witness (OTEL_AUDIT_WITNESS=s3://bucket/prefix) with Object Lock, through moto's S3 server."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import botocore.exceptions
import psycopg
import pytest

from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key, write_keypair
from otel_audit.verify import VerifyOptions, verify_database
from otel_audit.witness import WitnessError
from otel_audit.witness_s3 import S3Witness, open_witness
from tests.harness import App
from tests.s3_fixtures import bucket, s3, s3_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.storage


def _verify(dsn: str, key, witness: str):
    with psycopg.connect(dsn) as conn:
        return verify_database(
            conn,
            VerifyOptions(
                trusted_keys={key.key_id: key.verify_key()}, witnesses=[open_witness(witness, for_reading=True)]
            ),
        )


def test_checkpoints_go_to_an_object_locked_bucket_and_catch_a_rollback(
    db: str, spool_dir: Path, tmp_path: Path, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = bucket(s3, locked=True)
    url = f"s3://{name}/witness"
    key = generate_signing_key()
    private, public = write_keypair(key, tmp_path / "signing")
    monkeypatch.setenv("OTEL_AUDIT_WITNESS", url)
    monkeypatch.setenv("OTEL_AUDIT_WITNESS_RETAIN_DAYS", "10")
    app = App(db, spool_dir, signing_key=str(private), checkpoint_interval=3600)
    checkpointer = app.audit.pipeline.checkpointer
    deadline = time.monotonic() + 30
    while checkpointer.last is None and time.monotonic() < deadline:  # the first checkpoint, at seq 0
        time.sleep(0.01)
    for i in range(30):
        app.log()
        if i in (9, 19):
            checkpointer.checkpoint_now()
    assert app.close()
    objects = s3.list_object_versions(Bucket=name, Prefix="witness/")["Versions"]
    assert len(objects) == 4  # seq 0, 10, 20 and the closing one
    for version in objects:
        assert version["Key"].endswith(".checkpoint")
        head = s3.head_object(Bucket=name, Key=version["Key"], VersionId=version["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(timezone.utc) + timedelta(days=9)
    assert _verify(db, key, url).ok
    assert cli(["verify", "--dsn", db, "--trusted-key", str(public), "--witness", url]) == 0

    # The database's owner rolls back the newest checkpoints; the witness still has them, and cannot lose them.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_checkpoints WHERE n >= 3")
    assert [f.kind.value for f in _verify(db, key, url).errors] == ["rolled_back"]
    newest = max(objects, key=lambda v: v["Key"])
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=name, Key=newest["Key"], VersionId=newest["VersionId"])
    assert cli(["verify", "--dsn", db, "--trusted-key", str(public), "--witness", url]) == 1


def test_a_witness_bucket_without_object_lock_is_refused_unless_allowed(s3) -> None:
    name = bucket(s3, locked=False)
    with pytest.raises(WitnessError, match="Object Lock"):
        S3Witness(f"s3://{name}/w")
    witness = S3Witness(f"s3://{name}/w", allow_unlocked=True)
    key = generate_signing_key()
    from otel_audit.core.checkpoint import sign_checkpoint

    cp = sign_checkpoint(
        key,
        chain_id="6f1c0000-0000-4000-8000-000000000000",
        n=1,
        seq=0,
        head="0" * 64,
        genesis="0" * 64,
        prev=None,
        time_ns=1_700_000_000_000_000_000,
        interval_ms=10_000,
    )
    witness.write(cp)
    witness.write(cp)  # idempotent
    entries = list(witness.read())
    assert [e.data for e in entries] == [cp.envelope + b"previous none\n"]  # the first entry of its chain
    assert entries[0].location.endswith(f"{cp.chain_id}/000000000001-{cp.hash[:16]}.checkpoint")
    # Entries are chained as in a directory, also by a new writer that finds the newest one in the bucket.
    cp2 = sign_checkpoint(
        key,
        chain_id=cp.chain_id,
        n=2,
        seq=0,
        head="0" * 64,
        genesis="0" * 64,
        prev=cp.hash,
        time_ns=1_700_000_000_000_000_001,
        interval_ms=10_000,
    )
    S3Witness(f"s3://{name}/w", allow_unlocked=True).write(cp2)
    first, second = list(witness.read())
    link = f"previous {first.location.rsplit('/', 1)[1]} {hashlib.sha256(first.data).hexdigest()}\n"
    assert second.data == cp2.envelope + link.encode()
