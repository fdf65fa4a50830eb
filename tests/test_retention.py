"""Retention: only archived, verified, unheld partitions leave PostgreSQL, under a signed retention checkpoint."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from otel_audit.archive import DirectoryStore, archive_database
from otel_audit.archive.retention import POLICIES, apply_retention, parse_policy, plan_retention
from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key, write_keypair
from otel_audit.errors import AuditError
from otel_audit.sink.partitions import ensure_partitions
from otel_audit.sink.retention import add_hold, holds, release_hold
from tests.harness import rows
from tests.trail import TrailChain, ns, store

pytestmark = pytest.mark.storage

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)  # plans are computed "as of" this day
JAN, FEB, MAR, APR = "audit_logs_p202501", "audit_logs_p202502", "audit_logs_p202503", "audit_logs_p202504"


@pytest.fixture
def key():
    return generate_signing_key()


@pytest.fixture
def trail(db: str, key) -> tuple[str, list[TrailChain]]:
    """Two chains with records from January to April 2025, checkpointed monthly, in monthly partitions."""
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=30, now=NOW)
    chains = [TrailChain(key, created="2025-01-01T00:00:00Z") for _ in range(2)]
    for i, chain in enumerate(chains):
        for month in ("01", "02", "03", "04"):
            chain.log_many(
                f"2025-{month}-02T00:00:00Z", 50 + 10 * i, step_seconds=3600, **{"audit.actor.id": f"user-{month}"}
            )
            chain.checkpoint(ns(f"2025-{month}-28T00:00:00Z"))
    store(db, *chains)
    return db, chains


def _archive(dsn: str, dest: Path, key, before: str) -> DirectoryStore:
    archive = DirectoryStore(dest, create=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        archive_database(conn, archive, before=datetime.fromisoformat(before), key=key)
    return archive


def _plan(dsn: str, archive: DirectoryStore, key, days: int = 500):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return plan_retention(conn, archive, {key.key_id: key.verify_key()}, parse_policy(str(days)), now=NOW)


def _partitions(dsn: str) -> set[str]:
    return {
        r[0]
        for r in rows(
            dsn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_logs'::regclass",
        )
    }


def test_policies_and_their_sources() -> None:
    assert POLICIES["pci-dss"].hot_days == 92 and POLICIES["pci-dss"].archive_days == 366
    assert "10.5.1" in POLICIES["pci-dss"].source
    assert "164.316(b)(2)(i)" in POLICIES["hipaa"].source and POLICIES["hipaa"].archive_days >= 6 * 365
    assert parse_policy("400").hot_days == 400
    with pytest.raises(ValueError):
        parse_policy("forever")


def test_only_archived_partitions_go_and_a_signed_checkpoint_says_where(trail, tmp_path: Path, key) -> None:
    dsn, chains = trail
    archive = _archive(dsn, tmp_path / "archive", key, "2025-02-15T00:00:00+00:00")  # January + February's end
    before = rows(dsn, "SELECT count(*) FROM audit_logs")[0][0]
    plan = _plan(dsn, archive, key)
    assert plan.archive_ok
    verdict = {p.name: p.removable for p in plan.partitions}
    assert verdict[JAN] and verdict[FEB]  # February's checkpoint came after its last record: archived too
    assert not verdict[MAR] and not verdict[APR]
    assert any("not in the verified archive" in why for p in plan.partitions if p.name == MAR for why in p.blocked)
    removed = sum(p.rows for p in plan.partitions if p.removable)
    checkpoint = apply_retention(psycopg.connect(dsn, autocommit=True), plan, key)
    assert checkpoint is not None and checkpoint.n == 1
    gone = checkpoint.doc["partitions"]
    assert JAN in gone and FEB in gone and MAR not in gone and APR not in gone
    assert all(p.rows == 0 for p in plan.partitions if p.name in gone and p.name not in (JAN, FEB))  # empty months
    assert checkpoint.signature_valid({key.key_id: key.verify_key()})
    assert {c.chain_id for c in chains} == set(checkpoint.chains)
    assert JAN not in _partitions(dsn) and FEB not in _partitions(dsn) and MAR in _partitions(dsn)
    assert rows(dsn, "SELECT count(*) FROM audit_logs")[0][0] == before - removed
    # Every removed record is in the archive: the live chain continues right after the archived prefix.
    for chain in chains:
        first_live = rows(dsn, "SELECT min(seq) FROM audit_logs WHERE chain_id = %s", (chain.chain_id,))[0][0]
        assert first_live == checkpoint.chains[chain.chain_id]["seq"] + 1
    stored = rows(dsn, "SELECT n, key_id, hash FROM audit_retention")
    assert stored == [(1, key.key_id, checkpoint.hash)]
    # A second run finds nothing more to remove.
    again = _plan(dsn, archive, key)
    assert not again.removable


def test_a_dry_run_removes_nothing(trail, tmp_path: Path, key, capsys: pytest.CaptureFixture) -> None:
    dsn, _ = trail
    _archive(dsn, tmp_path / "archive", key, "2025-02-15T00:00:00+00:00")
    _, public = write_keypair(key, tmp_path / "k")
    parts = _partitions(dsn)
    assert (
        cli(
            [
                "retention",
                "apply",
                "--dsn",
                dsn,
                "--policy",
                "9000",
                "--archive",
                str(tmp_path / "archive"),
                "--trusted-key",
                str(public),
                "--dry-run",
            ]
        )
        == 0
    )  # 9000 days: nothing is old enough
    assert "nothing to remove" in capsys.readouterr().out
    assert (
        cli(
            [
                "retention",
                "apply",
                "--dsn",
                dsn,
                "--policy",
                "pci-dss",
                "--archive",
                str(tmp_path / "archive"),
                "--trusted-key",
                str(public),
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"would remove {JAN}" in " ".join(out.split()) and "kept" in out
    assert _partitions(dsn) == parts and rows(dsn, "SELECT count(*) FROM audit_retention") == [(0,)]


@pytest.mark.parametrize("hold", ["chain", "actor", "range"])
def test_a_legal_hold_keeps_its_partition(trail, tmp_path: Path, key, hold: str) -> None:
    dsn, chains = trail
    archive = _archive(dsn, tmp_path / "archive", key, "2025-02-15T00:00:00+00:00")
    with psycopg.connect(dsn, autocommit=True) as conn:
        if hold == "chain":
            hold_id = add_hold(conn, reason="case 17", chain_id=chains[1].chain_id)
        elif hold == "actor":
            hold_id = add_hold(conn, reason="case 17", actor_id="user-01")
        else:
            hold_id = add_hold(
                conn,
                reason="case 17",
                from_ts=datetime(2025, 1, 20, tzinfo=timezone.utc),
                to_ts=datetime(2025, 1, 21, tzinfo=timezone.utc),
            )
    plan = _plan(dsn, archive, key)
    verdict = {p.name: p for p in plan.partitions}
    assert not verdict[JAN].removable and any("case 17" in why for why in verdict[JAN].blocked)
    assert verdict[FEB].removable is (hold != "chain")
    apply_retention(psycopg.connect(dsn, autocommit=True), plan, key)
    assert JAN in _partitions(dsn)
    # Released, the hold no longer keeps anything (and the release is recorded, not deleted).
    with psycopg.connect(dsn, autocommit=True) as conn:
        release_hold(conn, hold_id, reason="case closed")
        assert holds(conn) == [] and len(holds(conn, active_only=False)) == 1
    assert {p.name for p in _plan(dsn, archive, key).removable} >= {JAN}


def test_an_archive_that_does_not_verify_removes_nothing(trail, tmp_path: Path, key) -> None:
    dsn, _ = trail
    archive = _archive(dsn, tmp_path / "archive", key, "2025-02-15T00:00:00+00:00")
    victim = next((archive.root / "records").rglob("*.parquet"))
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    _, public = write_keypair(key, tmp_path / "k")
    parts = _partitions(dsn)
    assert (
        cli(
            [
                "retention",
                "apply",
                "--dsn",
                dsn,
                "--policy",
                "500",
                "--archive",
                str(archive.root),
                "--trusted-key",
                str(public),
                "--signing-key",
                str(tmp_path / "k"),
            ]
        )
        == 1
    )
    assert _partitions(dsn) == parts


def test_a_record_arriving_after_the_plan_stops_the_removal(trail, tmp_path: Path, key) -> None:
    """A late record with an old timestamp lands in a partition planned for removal: it is not lost."""
    dsn, _ = trail
    archive = _archive(dsn, tmp_path / "archive", key, "2025-02-15T00:00:00+00:00")
    plan = _plan(dsn, archive, key)
    assert JAN in {p.name for p in plan.removable}
    late = TrailChain(key, created="2025-01-01T00:00:00Z")
    late.log("2025-01-15T00:00:00Z")
    store(dsn, late)
    with pytest.raises(AuditError, match="can no longer be removed"):
        apply_retention(psycopg.connect(dsn, autocommit=True), plan, key)
    assert JAN in _partitions(dsn) and rows(dsn, "SELECT count(*) FROM audit_retention") == [(0,)]


def test_the_newest_run_deleted_whole_after_retention_is_caught_with_the_database(trail, tmp_path: Path, key) -> None:
    """On storage that allows deletion, removing a whole run leaves an archive that ends earlier; the retention
    checkpoint that relied on that run's manifest tells."""
    import shutil

    from otel_audit.archive import verify_archive
    from otel_audit.verify.report import Kind

    dsn, _ = trail
    archive = _archive(dsn, tmp_path / "archive", key, "2025-01-15T00:00:00+00:00")
    _archive(dsn, tmp_path / "archive", key, "2025-02-15T00:00:00+00:00")
    apply_retention(psycopg.connect(dsn, autocommit=True), _plan(dsn, archive, key), key)
    for path in ("manifests/000002.manifest", "plans/000002.json"):
        (archive.root / path).unlink()
    for kind in ("records", "checkpoints"):
        shutil.rmtree(archive.root / kind / "run=000002", ignore_errors=True)
    trusted = {key.key_id: key.verify_key()}
    assert verify_archive(archive, trusted).ok  # on its own, a consistent archive of one run
    with psycopg.connect(dsn) as conn:
        report = verify_archive(archive, trusted, conn=conn)
    assert any(f.kind is Kind.MANIFEST_MISSING and "000002.manifest" in f.detail for f in report.errors), [
        str(f) for f in report.findings
    ]
