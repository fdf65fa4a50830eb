"""audit_logs partitioned by month: creation ahead of need, outliers, migration, replays, tampering."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key
from otel_audit.sink.partitions import ensure_partitions, list_partitions
from otel_audit.sink.schema import MIGRATIONS, SCHEMA_VERSION, current_version, grant_writer, migrate
from otel_audit.verify import VerifyOptions, verify_database
from otel_audit.verify.report import Kind
from tests.harness import App, rows
from tests.trail import TrailChain, store

pytestmark = pytest.mark.storage

SEED = [q for q in Path(__file__).with_name("seed_queries.sql").read_text().split(";") if q.strip()]


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _verify(dsn: str, **options) -> list[tuple[str, int | None]]:
    with psycopg.connect(dsn) as conn:
        report = verify_database(conn, VerifyOptions(**options))
    return [(f.kind.value, f.seq) for f in report.errors]


def _where(dsn: str) -> dict[str, int]:
    return dict(rows(dsn, "SELECT tableoid::regclass::text, count(*) FROM audit_logs GROUP BY 1"))


def test_a_new_database_has_monthly_partitions_ahead_and_a_default_one(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        parts = list_partitions(conn)
    names = [p.name for p in parts]
    now = _now()
    assert f"audit_logs_p{now:%Y%m}" in names
    ahead = (now.replace(day=1) + timedelta(days=95)).strftime("%Y%m")
    assert f"audit_logs_p{ahead}" in names
    assert parts[-1].default and parts[-1].name == "audit_logs_default"
    assert all(p.upper - p.lower <= timedelta(days=31) for p in parts if not p.default)


def test_records_of_any_time_are_stored_and_verify_across_partitions(db: str, verify_mode: str) -> None:
    """Old months, this month, next month, and timestamps no partition will ever cover (1990, 2045)."""
    now = _now()
    chain = TrailChain()
    for when in [
        "1990-06-01T00:00:00Z",
        _iso(now - timedelta(days=400)),
        _iso(now - timedelta(days=20)),
        _iso(now),
        _iso(now + timedelta(days=35)),
        "2045-01-01T00:00:00Z",
        _iso(now),
    ]:
        chain.log(when)
    store(db, chain)
    where = _where(db)
    assert sum(where.values()) == 7
    assert where["audit_logs_default"] == 3  # 1990, 400 days ago (no partition yet), 2045
    assert _verify(db) == []

    # db maintain gives the plausible month its own partition (moving the row) and keeps the outliers.
    assert cli(["db", "maintain", "--dsn", db]) == 0
    where = _where(db)
    assert sum(where.values()) == 7
    assert where["audit_logs_default"] == 2
    assert f"audit_logs_p{now - timedelta(days=400):%Y%m}" in where
    assert _verify(db) == []
    # Rows of the seed's three queries are found wherever they live.
    with psycopg.connect(db) as conn:
        results = [conn.execute(q).fetchall() for q in SEED]
    assert len(results[1]) == 7


def test_a_replay_lands_in_the_partition_holding_it_and_is_skipped(db: str) -> None:
    chain = TrailChain()
    chain.log("2025-03-03T03:03:03Z")
    chain.log(_iso(_now()))
    frames = list(chain.frames.frames)
    store(db, chain)
    chain.frames.frames = frames  # the same frames again, as a replay after a lost COMMIT acknowledgement
    store(db, chain)
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(2,)]
    assert _verify(db) == []


def test_the_sink_quarantines_a_different_record_at_a_taken_position_of_the_same_partition(
    db: str, spool_dir: Path
) -> None:
    app = App(db, spool_dir)
    for _ in range(3):
        app.log()
    assert app.close()
    ((chain_id, canonical, stamp),) = rows(
        db, "SELECT chain_id::text, canonical, timestamp FROM audit_logs WHERE seq = 2"
    )
    forged = bytes(canonical).replace(b'"user-123"', b'"intruder"')
    import hashlib

    from otel_audit.core.record import RECORD_DOMAIN
    from otel_audit.sink.rows import CONFLICTING_STAGED, CREATE_STAGE, PROJECT_STAGE
    from otel_audit.sink.writer import _COPY_STAGE, stage_copy_data

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(CREATE_STAGE)
        with conn.transaction():
            cur = conn.cursor()
            with cur.copy(_COPY_STAGE) as copy:
                copy.write(stage_copy_data([(forged, hashlib.sha256(RECORD_DOMAIN + forged).digest())]))
            cur.execute(PROJECT_STAGE)
            assert cur.rowcount == 0  # refused by the partition's unique (chain_id, seq) index
            assert len(cur.execute(CONFLICTING_STAGED).fetchall()) == 1  # and seen as a different record
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(3,)]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE {p} SET reason = 'x'", "DELETE FROM {p}", "TRUNCATE {p}"],
)
def test_each_partition_is_append_only_too(db: str, statement: str) -> None:
    chain = TrailChain()
    chain.log(_iso(_now()))
    chain.log("1990-01-01T00:00:00Z")
    store(db, chain)
    for part in (f"audit_logs_p{_now():%Y%m}", "audit_logs_default"):
        with psycopg.connect(db, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement.format(p=part))
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(2,)]


def test_the_seed_queries_prune_partitions(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        assert len(ensure_partitions(conn, behind=12)) == 11  # a year of older months
        for query, prunes in zip(SEED, (True, False, True), strict=True):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query))
            assert ("Subplans Removed" in plan) is prunes, plan
            if prunes:  # the older months are not even opened
                assert f"audit_logs_p{_now() - timedelta(days=100):%Y%m}" not in plan


def test_dropping_a_partition_without_archiving_fails_verification(db: str, verify_mode: str) -> None:
    key = generate_signing_key()
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=3)
    old = (_now() - timedelta(days=62)).replace(day=1)  # two months ago: a partition of its own
    spanning, inside = TrailChain(key), TrailChain(key)
    spanning.log_many(_iso(old), 5, step_seconds=3600)
    inside.log_many(_iso(old), 5, step_seconds=3600)
    inside.checkpoint(int(old.timestamp() * 1e9) + 10**13)
    spanning.log_many(_iso(_now() - timedelta(minutes=5)), 5)
    spanning.checkpoint(int(_now().timestamp() * 1e9))
    store(db, spanning, inside)
    trusted = {key.key_id: key.verify_key()}
    assert _verify(db, trusted_keys=trusted) == []
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(f"audit_logs_p{old:%Y%m}")))
    found = _verify(db, trusted_keys=trusted)
    assert (Kind.MISSING.value, 1) in found, found  # the chain that goes on: its first five records are gone
    assert (Kind.TRUNCATED.value, 1) in found, found  # the chain entirely in it: its checkpoint covers seq 5
    assert _verify(db) != []  # and even without the trusted key, the missing prefix is an error


def test_migrating_an_unpartitioned_table_keeps_every_record_and_the_grants(empty_db: str, spool_dir: Path) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for migration in MIGRATIONS[:2]:  # the schema as it was before partitioning
            conn.execute(migration.sql)
        conn.execute(
            "CREATE TABLE otel_audit_schema (version integer PRIMARY KEY, description text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO otel_audit_schema (version, description) VALUES (1, 'v1'), (2, 'v2')")
        writer = f"audit_writer_{uuid.uuid4().hex[:8]}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(writer)))
        grant_writer(conn, writer)
    old_app = App(empty_db, spool_dir)
    for _ in range(20):
        old_app.log()
    assert old_app.close()
    chain = TrailChain()
    chain.log_many("2023-05-01T00:00:00Z", 10, step_seconds=86400 * 7)
    store(empty_db, chain)
    before = rows(empty_db, "SELECT chain_id, seq, hash FROM audit_logs ORDER BY 1, 2")
    assert len(before) == 30

    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert [m.version for m in migrate(conn)] == list(range(3, SCHEMA_VERSION + 1))
        assert current_version(conn) == SCHEMA_VERSION
        assert conn.execute(
            "SELECT has_table_privilege(%s, 'audit_logs', 'INSERT'), "
            "has_column_privilege(%s, 'audit_logs', 'hash', 'SELECT'), "
            "has_column_privilege(%s, 'audit_logs', 'actor_id', 'SELECT')",
            (writer, writer, writer),
        ).fetchone() == (True, True, False)
    assert rows(empty_db, "SELECT chain_id, seq, hash FROM audit_logs ORDER BY 1, 2") == before
    assert set(_where(empty_db)) == {"audit_logs_legacy"}
    assert _verify(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        assert len(conn.execute(SEED[1]).fetchall()) == 30
    # New records after the legacy partition's end go to monthly partitions.
    chain.log(_iso(_now() + timedelta(days=40)))
    store(empty_db, chain)
    assert f"audit_logs_p{_now() + timedelta(days=40):%Y%m}" in _where(empty_db)
    assert _verify(empty_db) == []
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert ensure_partitions(conn) == []  # idempotent


def test_the_writer_role_creates_partitions_but_no_tables(db: str) -> None:
    writer = f"audit_writer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(writer)))
        grant_writer(conn, writer)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(writer)))
        made = ensure_partitions(conn, ahead=8)
        assert len(made) >= 4
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE audit_logs_p299901 (x int)")


def test_a_record_proof_spans_partitions(db: str) -> None:
    """The proven record is in one month, the checkpoint that anchors it covers records of the next."""
    from otel_audit.core.proof import verify_proof
    from otel_audit.verify.prove import prove_record

    key = generate_signing_key()
    with psycopg.connect(db, autocommit=True) as conn:
        ensure_partitions(conn, behind=3)
    start = (_now() - timedelta(days=62)).replace(day=27, hour=0, minute=0, second=0, microsecond=0)
    chain = TrailChain(key)
    chain.log_many(_iso(start), 12, step_seconds=86400)  # from the 27th, a few days into the next month
    chain.checkpoint(int(_now().timestamp() * 1e9))
    store(db, chain)
    assert len({p for p in _where(db)}) >= 2
    ((record_id,),) = rows(db, "SELECT id::text FROM audit_logs WHERE seq = 2")
    trusted = {key.key_id: key.verify_key()}
    with psycopg.connect(db) as conn:
        proof, result = prove_record(conn, record_id, trusted_keys=trusted)
    assert result.valid and len(proof["records"]) == 11
    assert verify_proof(proof, trusted).valid
