"""`otel-audit verify` after `retention apply`: archived prefixes are reported as archived, every other loss is not.

A retention checkpoint (signed, in ``audit_retention``) says which prefix of each chain went to which archive.
The verifier starts each chain's walk at that boundary (the first live record must link to the signed head),
in the sequential walk and in the parallel range checker alike, and still fails on every deletion no
trusted retention checkpoint covers: a partition dropped by hand, rows deleted with the triggers off, a
forged or unsigned retention checkpoint, one that claims more than the archive holds.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from otel_audit.archive import DirectoryStore, archive_database, verify_archive
from otel_audit.archive.retention import apply_retention, parse_policy, plan_retention
from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key, write_keypair
from otel_audit.core.record import format_timestamp
from otel_audit.core.retention import sign_retention
from otel_audit.sink.partitions import ensure_partitions
from otel_audit.verify import VerifyOptions, verify_database
from otel_audit.verify.report import Kind, Severity
from tests.harness import rows
from tests.trail import TrailChain, ns, store

pytestmark = pytest.mark.storage

NOW = datetime(2026, 12, 2, tzinfo=timezone.utc)
JAN, FEB, MAR = "audit_logs_p202501", "audit_logs_p202502", "audit_logs_p202503"


@pytest.fixture
def key():
    return generate_signing_key()


@pytest.fixture
def retained(db: str, key, tmp_path: Path):
    """Two chains from January to April 2025 and one that lived in January only; January and February archived
    and dropped under a retention checkpoint."""
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=30, now=NOW)
    chains = [TrailChain(key, created="2025-01-01T00:00:00Z") for _ in range(2)]
    for i, chain in enumerate(chains):
        for month in ("01", "02", "03", "04"):
            chain.log_many(f"2025-{month}-02T00:00:00Z", 20 + 5 * i, step_seconds=3600)
            chain.checkpoint(ns(f"2025-{month}-28T00:00:00Z"))
    january = TrailChain(key, created="2025-01-01T00:00:00Z")
    january.log_many("2025-01-03T00:00:00Z", 15, step_seconds=3600)
    january.checkpoint(ns("2025-01-20T00:00:00Z"), closed=True)
    chains.append(january)
    store(db, *chains)
    archive = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, archive, before=datetime(2025, 2, 15, tzinfo=timezone.utc), key=key)
        plan = plan_retention(conn, archive, {key.key_id: key.verify_key()}, parse_policy("500"), now=NOW)
        checkpoint = apply_retention(conn, plan, key)
    assert checkpoint is not None and JAN in checkpoint.doc["partitions"] and FEB in checkpoint.doc["partitions"]
    return db, chains, archive, checkpoint


def _report(dsn: str, key=None, **options):
    trusted = {key.key_id: key.verify_key()} if key is not None else None
    with psycopg.connect(dsn) as conn:
        return verify_database(conn, VerifyOptions(trusted_keys=trusted, **options))


def _errors(report) -> list[tuple[str, str | None, int | None]]:
    return [(f.kind.value, f.chain_id, f.seq) for f in report.errors]


def _forge(
    dsn: str, signer, claim: dict[str, dict], *, like, signature: bytes | None = None, prev: str | None = None
) -> None:
    """Insert retention checkpoint n+1 (as anyone with INSERT on audit_retention could), signed by ``signer``."""
    n = like.n + 1
    forged = sign_retention(
        signer,
        {
            "n": n,
            "prev": prev or like.hash,
            "time": format_timestamp(ns("2026-12-02T01:00:00Z")),
            "policy": "500d",
            "cutoff": like.doc["cutoff"],
            "partitions": [MAR],
            "archive": like.doc["archive"],
            "chains": claim,
        },
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_retention (n, signed_at, key_id, body, signature, hash) VALUES (%s, %s, %s, %s, %s, %s)",
            (n, forged.doc["time"], forged.key_id, forged.body, signature or forged.signature, forged.hash),
        )


def _end_of(dsn: str, chain_id: str, partition: str) -> tuple[int, str]:
    """The last seq of a chain in a partition and its hash."""
    return rows(
        dsn,
        sql.SQL("SELECT seq, hash FROM {} WHERE chain_id = %s ORDER BY seq DESC LIMIT 1").format(
            sql.Identifier(partition)
        ),
        (chain_id,),
    )[0]


def test_verify_reports_the_archived_prefix_instead_of_missing_records(retained, key, verify_mode: str) -> None:
    dsn, chains, _, checkpoint = retained
    report = _report(dsn, key)
    assert report.ok, [str(f) for f in report.errors]
    archived = {f.chain_id: f for f in report.findings if f.kind is Kind.ARCHIVED}
    assert set(archived) == {c.chain_id for c in chains}
    for chain in chains:
        n = checkpoint.chains[chain.chain_id]["seq"]
        finding = archived[chain.chain_id]
        assert finding.severity is Severity.INFO and f"archived up to seq {n}" in finding.detail
        assert f"retention checkpoint {checkpoint.n}" in finding.detail
        summary = report.chains[chain.chain_id]
        assert summary.extra["archived_seq"] == n
    live = rows(dsn, "SELECT count(*) FROM audit_logs")[0][0]
    assert report.records == live
    # The chain that lived in January only: nothing left in PostgreSQL, and that is not a truncation.
    january = report.chains[chains[2].chain_id]
    assert january.records == 0
    assert not any(
        f.kind in (Kind.EMPTY_CHAIN, Kind.TRUNCATED) for f in report.findings if f.chain_id == chains[2].chain_id
    )
    # Only the trail's own age shows (its chains stopped long ago, sealed before checkpoint policies): nothing
    # about the archived records.
    expected = {Kind.UNCLOSED, Kind.NO_CHECKPOINT_POLICY}
    assert not [f for f in report.warnings if f.kind not in expected], [str(f) for f in report.warnings]


def test_the_fast_pass_starts_at_the_archived_boundary(
    retained, key, verify_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chain that merely lost its archived prefix falls back to the slow full walk."""
    from otel_audit.verify import database

    walked: list[str] = []
    walk = database._walk

    def spy(conn, chain_ids, walker_for, tick):
        walked.extend(chain_ids)
        return walk(conn, chain_ids, walker_for, tick)

    monkeypatch.setattr(database, "_walk", spy)
    dsn = retained[0]
    assert _report(dsn, key).ok
    assert walked == []
    # A live record that does not link to the signed archived head is caught by both passes.
    chain = retained[1][0]
    first = retained[3].chains[chain.chain_id]["seq"] + 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_logs WHERE chain_id = %s AND seq = %s", (chain.chain_id, first))
    errors = _errors(_report(dsn, key))
    assert (Kind.MISSING.value, chain.chain_id, first) in errors, errors


def test_the_cli_says_archived_up_to(retained, key, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dsn, chains, archive, checkpoint = retained
    _, public = write_keypair(key, tmp_path / "k")
    assert cli(["verify", "--dsn", dsn, "--trusted-key", str(public)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    n = checkpoint.chains[chains[0].chain_id]["seq"]
    assert f"chain {chains[0].chain_id}: archived up to seq {n}" in out and "INTACT" in out
    # With the archive at hand, the bundle that holds record N is named.
    assert cli(["verify", "--dsn", dsn, "--trusted-key", str(public), "--archive", str(archive.root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"archived up to seq {n} (bundle records/run=000001/" in out, out


@pytest.mark.parametrize("how", ["drop", "delete"])
def test_a_deletion_no_retention_checkpoint_covers_still_fails(retained, key, verify_mode: str, how: str) -> None:
    dsn, chains, _, checkpoint = retained
    with psycopg.connect(dsn, autocommit=True) as conn:
        if how == "drop":  # March, never archived
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MAR)))
        else:  # superuser, triggers off: the first live records
            conn.execute("SET session_replication_role = replica")
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(MAR)))
    for trusted in (key, None):
        report = _report(dsn, trusted)
        assert not report.ok
        for chain in chains[:2]:
            first = checkpoint.chains[chain.chain_id]["seq"] + 1
            assert (Kind.MISSING.value, chain.chain_id, first) in _errors(report), _errors(report)


def test_the_cli_exits_1_naming_a_partition_dropped_by_hand(
    retained, key, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dsn, chains, _, checkpoint = retained
    _, public = write_keypair(key, tmp_path / "k")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MAR)))
    assert cli(["verify", "--dsn", dsn, "--trusted-key", str(public)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    first = checkpoint.chains[chains[0].chain_id]["seq"] + 1
    assert f"chain {chains[0].chain_id} seq {first}: records {first}.." in out and "missing" in out


@pytest.mark.parametrize("forgery", ["other key", "bad signature", "changed column"])
def test_a_forged_retention_checkpoint_hides_nothing(retained, key, verify_mode: str, forgery: str) -> None:
    """Someone drops March and writes a retention checkpoint that claims it was archived."""
    dsn, chains, _, checkpoint = retained
    claim = {c.chain_id: dict(zip(("seq", "head"), _end_of(dsn, c.chain_id, MAR), strict=True)) for c in chains[:2]}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MAR)))
    if forgery == "other key":
        _forge(dsn, generate_signing_key(), claim, like=checkpoint)
        expected = Kind.UNTRUSTED_KEY
    elif forgery == "bad signature":
        _forge(dsn, key, claim, like=checkpoint, signature=bytes(64))
        expected = Kind.BAD_SIGNATURE
    else:  # the body signed by the trusted key says one thing, the key_id column another
        _forge(dsn, key, claim, like=checkpoint)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE audit_retention SET hash = repeat('0', 64) WHERE n = 2")
        expected = Kind.CHECKPOINT_MALFORMED
    report = _report(dsn, key)
    kinds = {f.kind for f in report.errors}
    assert expected in kinds, [str(f) for f in report.findings]
    if forgery != "changed column":  # an untrusted claim is not used: March is missing
        for chain in chains[:2]:
            assert (Kind.MISSING.value, chain.chain_id, checkpoint.chains[chain.chain_id]["seq"] + 1) in _errors(report)
    # Without trusted keys the claim cannot be judged: a warning says so (and --strict fails on it).
    unchecked = _report(dsn)
    assert any(f.kind is Kind.CHECKPOINTS_UNCHECKED and "retention" in f.detail for f in unchecked.warnings)


def test_a_retention_checkpoint_whose_head_the_live_chain_does_not_link_to_fails(retained, key) -> None:
    dsn, chains, _, checkpoint = retained
    chain = chains[0]
    claim = {c: dict(v) for c, v in checkpoint.chains.items()}
    claim[chain.chain_id]["head"] = "ab" * 32
    _forge(dsn, key, claim, like=checkpoint)  # the trusted key, but a head the chain never had
    report = _report(dsn, key)
    first = checkpoint.chains[chain.chain_id]["seq"] + 1
    assert any(f.chain_id == chain.chain_id and f.seq == first and f.kind is Kind.BROKEN_LINK for f in report.errors), [
        str(f) for f in report.findings
    ]


def test_a_retention_checkpoint_claiming_more_than_the_archive_holds(retained, key) -> None:
    """Signed with the trusted key, it claims March too; only the archive can tell it never held March."""
    dsn, chains, archive, checkpoint = retained
    claim = {c.chain_id: dict(zip(("seq", "head"), _end_of(dsn, c.chain_id, MAR), strict=True)) for c in chains[:2]}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MAR)))
    _forge(dsn, key, claim, like=checkpoint)
    assert _report(dsn, key).ok  # the database alone cannot tell: the claim is signed and the chain links to it
    with_archive = _report(dsn, key, archive=archive)
    assert not with_archive.ok
    for chain in chains[:2]:
        assert any(f.kind is Kind.ARCHIVE_MISMATCH and f.chain_id == chain.chain_id for f in with_archive.errors), [
            str(f) for f in with_archive.findings
        ]
    # verify-archive --dsn applies the same rule to the database's retention checkpoints.
    trusted = {key.key_id: key.verify_key()}
    with psycopg.connect(dsn) as conn:
        joined = verify_archive(archive, trusted, conn=conn)
    assert any(f.kind is Kind.ARCHIVE_MISMATCH and f.chain_id == chains[0].chain_id for f in joined.errors), [
        str(f) for f in joined.findings
    ]


def test_verify_archive_judges_retention_checkpoints_as_verify_does(retained, key) -> None:
    """An untrusted retention checkpoint is reported by verify-archive --dsn too, not silently used or skipped."""
    dsn, _, archive, checkpoint = retained
    _forge(dsn, generate_signing_key(), {c: dict(v) for c, v in checkpoint.chains.items()}, like=checkpoint)
    trusted = {key.key_id: key.verify_key()}
    with psycopg.connect(dsn) as conn:
        joined = verify_archive(archive, trusted, conn=conn)
    assert any(f.kind is Kind.UNTRUSTED_KEY and "retention checkpoint 2" in f.detail for f in joined.errors), [
        str(f) for f in joined.findings
    ]
    with psycopg.connect(dsn) as conn:
        assert verify_archive(archive, trusted, conn=conn).exit_code() == _report(dsn, key).exit_code() == 1


def test_live_records_inside_the_archived_prefix_are_checked_and_the_rest_is_archived(
    db: str, key, tmp_path: Path, verify_mode: str
) -> None:
    """A record no month holds (dated 2045, in the default partition, which retention never drops) stays live
    in the middle of an archived prefix: the walk checks it, skips the archived records around it, and goes
    on from the signed head."""
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=30, now=NOW)
    chain = TrailChain(key, created="2025-01-01T00:00:00Z")
    chain.log_many("2025-01-02T00:00:00Z", 10, step_seconds=3600)
    chain.log("2045-01-01T00:00:00Z")  # seq 11
    chain.log_many("2025-02-02T00:00:00Z", 9, step_seconds=3600)
    chain.checkpoint(ns("2025-02-28T00:00:00Z"))
    chain.log_many("2025-03-02T00:00:00Z", 10, step_seconds=3600)
    chain.checkpoint(ns("2025-03-28T00:00:00Z"))
    store(db, chain)
    archive = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, archive, before=datetime(2025, 2, 15, tzinfo=timezone.utc), key=key)
        plan = plan_retention(conn, archive, {key.key_id: key.verify_key()}, parse_policy("500"), now=NOW)
        checkpoint = apply_retention(conn, plan, key)
    assert checkpoint is not None and checkpoint.chains[chain.chain_id]["seq"] == 20
    assert [r[0] for r in rows(db, "SELECT seq FROM audit_logs ORDER BY seq")] == [11, *range(21, 31)]
    report = _report(db, key)
    assert report.ok, [str(f) for f in report.errors]
    assert report.records == 11 and report.chains[chain.chain_id].extra["archived_seq"] == 20
    # The live record in the middle is still held to its seal.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_logs SET actor_id = 'someone-else' WHERE seq = 11")
    assert (Kind.MODIFIED.value, chain.chain_id, 11) in _errors(_report(db, key))


def test_a_live_last_archived_record_must_hash_to_the_signed_head(
    db: str, key, tmp_path: Path, verify_mode: str
) -> None:
    """Record N stayed live (the default partition) and was then rewritten with a recomputed hash."""
    import hashlib

    import orjson

    from otel_audit.core.record import RECORD_DOMAIN

    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=30, now=NOW)
    chain = TrailChain(key, created="2025-01-01T00:00:00Z")
    chain.log_many("2025-01-02T00:00:00Z", 10, step_seconds=3600)
    chain.log("2045-01-01T00:00:00Z")  # seq 11: no month holds it
    chain.checkpoint(ns("2025-01-28T00:00:00Z"))
    chain.log_many("2025-03-02T00:00:00Z", 5, step_seconds=3600)
    chain.checkpoint(ns("2025-03-28T00:00:00Z"))
    store(db, chain)
    with psycopg.connect(db, autocommit=True) as conn:
        archive = DirectoryStore(tmp_path / "archive", create=True)
        archive_database(conn, archive, before=datetime(2025, 2, 15, tzinfo=timezone.utc), key=key)
        checkpoint = apply_retention(
            conn, plan_retention(conn, archive, {key.key_id: key.verify_key()}, parse_policy("500"), now=NOW), key
        )
    assert checkpoint is not None and checkpoint.chains[chain.chain_id]["seq"] == 11
    assert _report(db, key).ok
    doc = orjson.loads(rows(db, "SELECT canonical FROM audit_logs WHERE seq = 11")[0][0])
    doc["actor_id"] = "someone-else"
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE audit_logs SET canonical = %s, hash = %s, actor_id = 'someone-else' WHERE seq = 11",
            (canonical, hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest()),
        )
    report = _report(db, key)
    assert any(f.kind is Kind.ARCHIVE_MISMATCH and f.seq == 11 for f in report.errors), [
        str(f) for f in report.findings
    ]


def test_a_deleted_retention_checkpoint_is_a_gap(retained, key) -> None:
    dsn, _, _, checkpoint = retained
    _forge(dsn, key, {c: dict(v) for c, v in checkpoint.chains.items()}, like=checkpoint)  # a second, genuine one
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_retention WHERE n = 1")
    report = _report(dsn, key)
    assert any(f.kind is Kind.CHECKPOINT_MISSING and "retention checkpoint(s) 1 " in f.detail for f in report.errors), [
        str(f) for f in report.findings
    ]


def test_verify_with_the_archive_catches_a_run_deleted_after_retention(db: str, key, tmp_path: Path) -> None:
    """The archive's newest run deleted whole (storage that allows it): verify --archive names the manifest."""
    import shutil

    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=30, now=NOW)
    chain = TrailChain(key, created="2025-01-01T00:00:00Z")
    for month in ("01", "02", "03"):
        chain.log_many(f"2025-{month}-02T00:00:00Z", 10, step_seconds=3600)
        chain.checkpoint(ns(f"2025-{month}-28T00:00:00Z"))
    store(db, chain)
    archive = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, archive, before=datetime(2025, 1, 15, tzinfo=timezone.utc), key=key)
        archive_database(conn, archive, before=datetime(2025, 2, 15, tzinfo=timezone.utc), key=key)
        apply_retention(
            conn, plan_retention(conn, archive, {key.key_id: key.verify_key()}, parse_policy("500"), now=NOW), key
        )
    assert _report(db, key, archive=archive).ok
    for path in ("manifests/000002.manifest", "plans/000002.json"):
        (archive.root / path).unlink()
    for kind in ("records", "checkpoints"):
        shutil.rmtree(archive.root / kind / "run=000002", ignore_errors=True)
    report = _report(db, key, archive=archive)
    assert any(f.kind is Kind.MANIFEST_MISSING and "000002.manifest" in f.detail for f in report.errors), [
        str(f) for f in report.findings
    ]


def test_a_refused_record_inside_the_archived_prefix_is_archived_too(db: str, key, tmp_path: Path) -> None:
    """A record PostgreSQL refused (kept in audit_quarantine, which retention leaves alone) was archived with its
    chain: after retention it is part of the archived prefix, not a second claim on its position."""
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=30, now=NOW)
    chain = TrailChain(key, created="2025-01-01T00:00:00Z")
    chain.log_many("2025-01-02T00:00:00Z", 10, step_seconds=3600)
    chain.checkpoint(ns("2025-01-28T00:00:00Z"))
    chain.log_many("2025-03-02T00:00:00Z", 5, step_seconds=3600)
    chain.checkpoint(ns("2025-03-28T00:00:00Z"), closed=True)
    store(db, chain)
    with psycopg.connect(db, autocommit=True) as conn:  # as the sink does with a row PostgreSQL refuses
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO audit_quarantine (chain_id, seq, hash, canonical, reason) "
            "SELECT chain_id, seq, hash, canonical, 'refused' FROM audit_logs WHERE seq = 4"
        )
        conn.execute("DELETE FROM audit_logs WHERE seq = 4")
    # In PostgreSQL it is a record hidden from queries on audit_logs (see verification.md); in the archive it is not.
    assert Kind.RECORD_HIDDEN in [f.kind for f in _report(db, key).findings if f.severity is not Severity.INFO]
    archive = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, archive, before=datetime(2025, 2, 15, tzinfo=timezone.utc), key=key)
        assert (
            apply_retention(
                conn, plan_retention(conn, archive, {key.key_id: key.verify_key()}, parse_policy("500"), now=NOW), key
            )
            is not None
        )
    report = _report(db, key)
    assert report.ok and report.chains[chain.chain_id].extra["archived_seq"] == 10
    assert [f.kind for f in report.findings if f.severity is not Severity.INFO] == [], [str(f) for f in report.findings]


def test_a_retention_checkpoint_that_does_not_link_to_the_one_before_is_reported(retained, key) -> None:
    dsn, _, _, checkpoint = retained
    _forge(dsn, key, {c: dict(v) for c, v in checkpoint.chains.items()}, like=checkpoint, prev="cd" * 32)
    report = _report(dsn, key)
    assert any(
        f.kind is Kind.CHECKPOINT_INCONSISTENT and "retention checkpoint 2" in f.detail for f in report.errors
    ), [str(f) for f in report.findings]


@pytest.mark.parametrize("column", ["signed_at", "key_id", "hash"])
def test_an_edited_retention_column_is_reported(retained, key, column: str) -> None:
    """Every column of audit_retention is a projection of the signed body (the body's n, key_id, time and
    hash): editing one, even one shown only in listings like ``signed_at``, is reported by name."""
    dsn, _, _, _ = retained
    value = {
        "signed_at": "signed_at - interval '1 microsecond'",
        "key_id": "repeat('0', 32)",
        "hash": "repeat('0', 64)",
    }[column]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"UPDATE audit_retention SET {column} = {value} WHERE n = 1")
    for trusted in (key, None):  # a projection is checked with or without the key
        report = _report(dsn, trusted)
        malformed = [f for f in report.errors if f.kind is Kind.CHECKPOINT_MALFORMED]
        assert len(malformed) == 1 and "audit_retention row 1" in malformed[0].detail, [str(f) for f in report.findings]
