"""Archives: bundles, signed manifests, resumable runs, offline verification, tampering, S3 Object Lock."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import orjson
import psycopg
import pytest

from otel_audit.archive import DirectoryStore, archive_database, load_manifests, verify_archive
from otel_audit.archive import verify as archive_verify
from otel_audit.archive.format import parse_manifest, sign_manifest
from otel_audit.archive.store import S3Store, StoreError
from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key, write_keypair
from otel_audit.verify.report import Kind
from tests.s3_fixtures import bucket as _bucket
from tests.s3_fixtures import s3, s3_server  # noqa: F401 (fixtures)
from tests.trail import TrailChain, ns, store

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def key():
    return generate_signing_key()


@pytest.fixture
def key_files(tmp_path: Path, key) -> tuple[Path, Path]:
    return write_keypair(key, tmp_path / "keys" / "archive")


def populate(dsn: str, key, *, sizes=(1200, 300, 40)) -> list[TrailChain]:
    """Chains with records in 2024 (to archive), checkpoints, and newer records (to keep)."""
    chains = []
    for size in sizes:
        chain = TrailChain(key, created="2024-01-01T00:00:00Z")
        half = size // 2
        chain.log_many("2024-01-01T00:00:00Z", half, step_seconds=3600, **{"audit.actor.id": "user-123"})
        chain.checkpoint(ns("2024-03-01T00:00:00Z"))
        chain.log_many(
            "2024-06-01T00:00:00Z",
            size - half,
            step_seconds=600,
            **{"audit.actor.id": "user-7", "audit.result": "denied"},
        )
        chain.checkpoint(ns("2025-02-01T00:00:00Z"))
        chain.log_many("2025-03-01T00:00:00Z", 20)
        chain.checkpoint(ns("2025-04-01T00:00:00Z"))
        chains.append(chain)
    store(dsn, *chains)
    return chains


def trusted(key) -> dict:
    return {key.key_id: key.verify_key()}


def errors(report) -> list[tuple[str, str]]:
    return [(f.kind.value, f.detail) for f in report.errors]


def test_archive_then_verify_offline_and_against_the_database(db: str, tmp_path: Path, key, key_files) -> None:
    chains = populate(db, key)
    dest = tmp_path / "archive"
    assert (
        cli(
            [
                "archive",
                "--dsn",
                db,
                "--before",
                "2025-01-01",
                "--to",
                str(dest),
                "--signing-key",
                str(key_files[0]),
                "--records-per-file",
                "500",
            ]
        )
        == 0
    )
    report = verify_archive(DirectoryStore(dest), trusted(key))
    assert report.ok, errors(report)
    assert report.records == 1200 + 300 + 40
    assert {c.chain_id: c.last_seq for c in report.chains.values()} == {
        c.chain_id: c.chain.head()[0] - 20 for c in chains
    }
    # Nothing new is due: the same command does nothing (idempotent).
    with psycopg.connect(db, autocommit=True) as conn:
        assert archive_database(conn, DirectoryStore(dest), before=CUTOFF, key=key).run is None
    assert cli(["verify-archive", str(dest), "--trusted-key", str(key_files[1]), "--dsn", db]) == 0
    # A second run continues every chain where the first ended.
    with psycopg.connect(db, autocommit=True) as conn:
        second = archive_database(conn, DirectoryStore(dest), before=datetime.now(timezone.utc), key=key)
    assert (second.run, second.records) == (2, 60)
    report = verify_archive(DirectoryStore(dest), trusted(key))
    assert report.ok and report.records == 1600, errors(report)
    assert not report.warnings  # the newest checkpoints were archived with the records they cover
    assert cli(["verify-archive", str(dest), "--trusted-key", str(key_files[1]), "--dsn", db]) == 0


def test_a_key_that_is_not_trusted_fails(db: str, tmp_path: Path, key) -> None:
    populate(db, key, sizes=(30,))
    dest = DirectoryStore(tmp_path / "a", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, dest, before=CUTOFF, key=key)
    other = generate_signing_key()
    report = verify_archive(dest, trusted(other))
    assert {k for k, _ in errors(report)} >= {Kind.UNTRUSTED_KEY.value}


@pytest.fixture
def archived(db: str, tmp_path: Path, key) -> DirectoryStore:
    """Two runs, several bundles each."""
    populate(db, key)
    dest = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, dest, before=datetime(2024, 6, 1, tzinfo=timezone.utc), key=key, records_per_file=400)
        archive_database(conn, dest, before=CUTOFF, key=key, records_per_file=400)
    assert verify_archive(dest, trusted(key)).ok
    return dest


def _writable(path: Path) -> None:
    path.chmod(0o644)


def _edit_parquet(path: Path, column: str, row: int, value: object) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    table = table.set_column(
        table.schema.get_field_index(column),
        table.schema.field(column),
        pa.array(values, type=table.schema.field(column).type),
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _resign(dest: DirectoryStore, key, path: str, data: bytes) -> None:
    """What only the holder of the archive key could do: replace a bundle and re-sign its manifest."""
    import hashlib

    target = dest.root / path
    _writable(target)
    target.write_bytes(data)
    for manifest_path in dest.list("manifests/"):
        manifest = parse_manifest(dest.get(manifest_path))
        files = manifest.doc["files"]
        if any(f["path"] == path for f in files):
            for f in files:
                if f["path"] == path:
                    f["sha256"], f["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            doc = {k: v for k, v in manifest.doc.items() if k != "key_id"}
            resigned = sign_manifest(key, doc)
            _writable(dest.root / manifest_path)
            (dest.root / manifest_path).write_bytes(resigned.envelope)
            assert manifest.doc["prev"] is not None or manifest.run == 1


def _bundle(dest: DirectoryStore, run: int, kind: str = "records") -> str:
    return [p for p in dest.list(f"{kind}/run={run:06d}/")][0]


def test_a_deleted_bundle_is_named(archived: DirectoryStore, key) -> None:
    victim = _bundle(archived, 1)
    (archived.root / victim).unlink()
    found = errors(verify_archive(archived, trusted(key)))
    assert any(k == Kind.BUNDLE_MISSING.value and victim in d for k, d in found), found


def test_an_edited_bundle_is_named(archived: DirectoryStore, key) -> None:
    victim = archived.root / _bundle(archived, 2)
    _writable(victim)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    found = errors(verify_archive(archived, trusted(key)))
    assert any(k == Kind.BUNDLE_MODIFIED.value and str(victim.name) in d for k, d in found), found


def test_an_added_bundle_is_named(archived: DirectoryStore, key) -> None:
    source = archived.root / _bundle(archived, 1)
    copy = archived.root / "records" / "run=000002" / "part-00099.parquet"
    copy.write_bytes(source.read_bytes())
    found = errors(verify_archive(archived, trusted(key)))
    assert any(k == Kind.BUNDLE_UNLISTED.value and "part-00099" in d for k, d in found), found


def test_a_deleted_manifest_is_detected(archived: DirectoryStore, key) -> None:
    (archived.root / "manifests" / "000001.manifest").unlink()
    kinds = {k for k, _ in errors(verify_archive(archived, trusted(key)))}
    assert Kind.MANIFEST_MISSING.value in kinds and Kind.BUNDLE_UNLISTED.value in kinds, kinds


def test_the_newest_manifest_deleted_leaves_its_bundles_unlisted(archived: DirectoryStore, key) -> None:
    """Without the newest manifest, its run looks interrupted: a warning (--strict fails), not silence. Only WORM
    storage (S3 Object Lock) makes the newest manifest undeletable; rerunning `archive` writes it again."""
    (archived.root / "manifests" / "000002.manifest").unlink()
    report = verify_archive(archived, trusted(key))
    assert any(f.kind is Kind.BUNDLE_UNLISTED and "run=000002" in f.detail for f in report.warnings), report.findings
    assert report.exit_code(strict=True) == 1
    (archived.root / "plans" / "000002.json").unlink()  # and with its plan gone too: an error
    found = errors(verify_archive(archived, trusted(key)))
    assert any(k == Kind.BUNDLE_UNLISTED.value and "run=000002" in d for k, d in found), found


def test_reordered_manifests_are_detected(archived: DirectoryStore, key) -> None:
    one, two = archived.root / "manifests" / "000001.manifest", archived.root / "manifests" / "000002.manifest"
    a, b = one.read_bytes(), two.read_bytes()
    _writable(one)
    _writable(two)
    one.write_bytes(b)
    two.write_bytes(a)
    found = errors(verify_archive(archived, trusted(key)))
    assert any(k == Kind.MANIFEST_INVALID.value and "000001.manifest" in d for k, d in found), found


def test_an_edited_manifest_fails_its_signature(archived: DirectoryStore, key) -> None:
    path = archived.root / "manifests" / "000002.manifest"
    _writable(path)
    path.write_bytes(
        path.read_bytes()
        .replace(b'"records":', b'"records": ', 1)
        .replace(b'"records": ', b'"records":', 1)
        .replace(b"run=000002/part-00001", b"run=000002/part-00009", 1)
    )
    found = errors(verify_archive(archived, trusted(key)))
    assert any(k == Kind.BAD_SIGNATURE.value and "000002.manifest" in d for k, d in found), found


@pytest.mark.parametrize("slice_rows", [None, 2], ids=["one-slice", "slices-of-2"])
def test_a_changed_column_under_a_resigned_manifest_is_found(
    archived: DirectoryStore, key, slice_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the bundle is read in slices (row 3 then lies in the second one, and is still named row 3)."""
    if slice_rows is not None:
        monkeypatch.setattr(archive_verify, "SLICE_ROWS", slice_rows)
    path = _bundle(archived, 1)
    _resign(archived, key, path, _edit_parquet(archived.root / path, "actor_id", 3, "somebody-else"))
    found = errors(verify_archive(archived, trusted(key)))
    modified = [d for k, d in found if k == Kind.MODIFIED.value]
    assert len(modified) == 1 and path in modified[0] and "row 3: column actor_id" in modified[0], found
    # (re-signing run 1's manifest also broke run 2's link to it)
    assert {k for k, _ in found} == {Kind.MODIFIED.value, Kind.MANIFEST_INVALID.value}, found


@pytest.mark.parametrize("slice_rows", [None, 4], ids=["one-slice", "slices-of-4"])
def test_rewritten_records_under_a_resigned_manifest_break_the_links(
    archived: DirectoryStore, key, slice_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also across slices: record 5 is the second of its slice of 4, record 6 (whose link breaks) the third."""
    if slice_rows is not None:
        monkeypatch.setattr(archive_verify, "SLICE_ROWS", slice_rows)

    from otel_audit.core.canonical import canonical_json

    path = _bundle(archived, 1)
    import pyarrow.parquet as pq

    canonical = pq.read_table(archived.root / path).column("canonical").to_pylist()[5]
    doc = orjson.loads(canonical)
    doc["result"] = "success"
    doc["reason"] = "rewritten"
    _resign(archived, key, path, _edit_parquet(archived.root / path, "canonical", 5, canonical_json(doc).decode()))
    kinds = {k for k, _ in errors(verify_archive(archived, trusted(key)))}
    assert Kind.BROKEN_LINK.value in kinds or Kind.REWRITTEN.value in kinds, kinds


def test_a_chain_that_does_not_verify_is_not_archived(db: str, tmp_path: Path, key) -> None:
    populate(db, key, sizes=(50,))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_logs WHERE seq = 7")
    dest = tmp_path / "a"
    keyfile, _ = write_keypair(key, tmp_path / "k")
    assert (
        cli(["archive", "--dsn", db, "--before", "2025-01-01", "--to", str(dest), "--signing-key", str(keyfile)]) == 1
    )
    assert not list((dest / "manifests").glob("*")) if (dest / "manifests").exists() else True


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it ended on its own first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return True
        time.sleep(0.002)
    proc.wait(timeout=60)
    return False


def test_an_archive_run_killed_anywhere_resumes_without_gap_or_duplicate(db: str, tmp_path: Path, key) -> None:
    populate(db, key, sizes=(2000, 1500, 700, 30))
    keyfile, pub = write_keypair(key, tmp_path / "k")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The archive state lives in the destination only, so each try starts a fresh destination; a try counts when
    # a run was killed right after its plan and again after one and after two more bundles (checked, never slept).
    for attempt in range(3):
        dest = tmp_path / f"archive{attempt}"
        command = [
            sys.executable,
            "-m",
            "otel_audit",
            "archive",
            "--dsn",
            db,
            "--before",
            "2025-01-01",
            "--to",
            str(dest),
            "--signing-key",
            str(keyfile),
            "--records-per-file",
            "150",
        ]
        plan = dest / "plans" / "000001.json"

        def bundles() -> int:
            return len(list((dest / "records").rglob("*.parquet"))) if (dest / "records").exists() else 0

        kills = []
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills.append(_kill_when(proc, plan.exists))
        for more in (1, 2):
            start = bundles()
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            kills.append(_kill_when(proc, lambda start=start, more=more: bundles() >= start + more))
        if all(kills):
            break
    assert all(kills), f"three tries in a row finished before they could be killed: {kills}"
    leftovers = bundles()
    assert leftovers >= 2  # the rerun has bundles of the killed runs to take over
    assert not (dest / "manifests").exists() or not list((dest / "manifests").iterdir())
    assert subprocess.run(command, env=env, capture_output=True, timeout=300).returncode == 0
    store_ = DirectoryStore(dest)
    manifests = load_manifests(store_)
    assert [m.run for m in manifests] == [1]  # however often it was killed, one run
    report = verify_archive(store_, trusted(key))
    assert report.ok and not report.warnings, errors(report) + [str(f) for f in report.warnings]
    assert report.records == 2000 + 1500 + 700 + 30


# ---------------------------------------------------------------------------------------------------- S3
def test_s3_archive_with_object_lock(db: str, tmp_path: Path, key, key_files, s3) -> None:
    populate(db, key)
    bucket = _bucket(s3, locked=True)
    url = f"s3://{bucket}/trail"
    assert (
        cli(
            [
                "archive",
                "--dsn",
                db,
                "--before",
                "2025-01-01",
                "--to",
                url,
                "--signing-key",
                str(key_files[0]),
                "--retain-days",
                "30",
                "--records-per-file",
                "700",
            ]
        )
        == 0
    )
    assert cli(["verify-archive", url, "--trusted-key", str(key_files[1]), "--dsn", db]) == 0
    listing = s3.list_object_versions(Bucket=bucket, Prefix="trail/")["Versions"]
    assert {v["Key"].split("/")[1] for v in listing} == {"records", "checkpoints", "manifests", "plans"}
    for version in listing:
        head = s3.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(timezone.utc) + timedelta(days=29)
    # COMPLIANCE: the object version cannot be deleted before its date, by anyone.
    victim = next(v for v in listing if v["Key"].endswith(".parquet"))
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key=victim["Key"], VersionId=victim["VersionId"])
    # Overwriting only stacks a new version on top; the archive tells, and the locked original is still there.
    s3.put_object(Bucket=bucket, Key=victim["Key"], Body=b"not a bundle")
    report = verify_archive(S3Store(url), trusted(key))
    assert any(f.kind is Kind.BUNDLE_MODIFIED and victim["Key"].split("/", 1)[1] in f.detail for f in report.errors)
    original = s3.get_object(Bucket=bucket, Key=victim["Key"], VersionId=victim["VersionId"])["Body"].read()
    assert original.startswith(b"PAR1")
    # The archive never overwrites an object itself.
    store_ = S3Store(url, require_lock=False)
    with pytest.raises(StoreError):
        store_.put(victim["Key"].split("/", 1)[1], b"other bytes")


def test_s3_bucket_without_object_lock_is_refused_unless_allowed(db: str, key, key_files, s3) -> None:
    populate(db, key, sizes=(20,))
    bucket = _bucket(s3, locked=False)
    url = f"s3://{bucket}/x"
    args = ["archive", "--dsn", db, "--before", "2025-01-01", "--to", url, "--signing-key", str(key_files[0])]
    assert cli(args) == 2
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert cli([*args, "--allow-unlocked"]) == 0
    assert verify_archive(S3Store(url, require_lock=False), trusted(key)).ok


def _sealed(**changes: object) -> bytes:
    from otel_audit.core.canonical import canonical_json

    chain = TrailChain()
    doc = orjson.loads(chain.log("2024-03-01T00:00:00Z"))
    doc.update(changes)
    return canonical_json(doc)


@pytest.mark.parametrize(
    "odd",
    [
        None,  # every record fits the column types: the fast path
        _sealed(actor_id=42),  # a number where a string belongs (a record flagged with problems): the exact path
        b'{"seq":1,\n"actor_id":"x"}',  # a raw newline: more JSON lines than records, so the exact path
    ],
    ids=["plain", "number-in-a-string-field", "raw-newline"],
)
def test_columns_derive_alike_from_python_bytes_and_from_an_arrow_column(odd: bytes | None) -> None:
    """verify-archive derives a bundle's columns straight from its Arrow column; the writer from Python bytes.
    Both must give the same columns, on the fast path and on the exact one."""
    import pyarrow as pa

    from otel_audit.archive.format import derive_columns

    records = [_sealed(resource_id=f"p-{i}", seq=i + 1) for i in range(5)]
    if odd is not None:
        records.insert(2, odd)
    expected = derive_columns(records)
    assert expected.num_rows == len(records)
    for column in (pa.array(records, pa.binary()), pa.array([r.decode() for r in records], pa.string())):
        assert derive_columns(column).equals(expected)
        assert derive_columns(pa.chunked_array([column.slice(0, 3), column.slice(3)])).equals(expected)
    if odd is not None and b"\n" not in odd:
        assert expected.column("actor_id")[2].as_py() == "42"  # the exact path renders it as its JSON text
