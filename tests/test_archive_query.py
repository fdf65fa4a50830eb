"""Queries over archives: the seed's SQL unchanged in DuckDB, and otel-audit query --archive."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from otel_audit.archive import DirectoryStore, archive_database
from otel_audit.archive.query import actor_activity, archive_files, failed_attempts
from otel_audit.cli.main import main as cli
from otel_audit.core.keys import generate_signing_key
from tests.harness import App
from tests.trail import TrailChain, ns, store

pytestmark = pytest.mark.storage

SEED = [q.strip() for q in Path(__file__).with_name("seed_queries.sql").read_text().split(";") if q.strip()]


def _normal(rows: list[tuple]) -> list[tuple]:
    out = []
    for row in rows:
        values = []
        for v in row:
            if isinstance(v, datetime):
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
            elif v is not None and not isinstance(v, (int, str, list)):
                v = str(v)  # inet
            values.append(v)
        out.append(tuple(values))
    return out


def test_the_seed_queries_run_unchanged_in_duckdb_over_the_archive(db: str, spool_dir: Path, tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    app = App(db, spool_dir)
    for i in range(40):
        actor = "user-0" if i < 16 else "user-1" if i < 30 else "user-2"  # 8, 7 and 5 denials
        app.log(
            **{"audit.actor.id": actor, "audit.result": "denied" if i % 2 else "success", "audit.reason": "after hours"}
        )
    app.log()  # user-123 reading patient-456, as the seed's queries ask
    assert app.close()
    dest = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        archive_database(conn, dest, before=datetime(2100, 1, 1, tzinfo=timezone.utc), key=generate_signing_key())
    files = [str(dest.root / p) for p in archive_files(dest)]
    con = duckdb.connect()
    # The documented view: only the files the signed manifests list.
    con.execute(f"CREATE VIEW audit_logs AS SELECT * FROM read_parquet({files!r})")
    with psycopg.connect(db) as conn:
        for query in SEED:
            expected = _normal(conn.execute(query).fetchall())
            got = _normal(con.execute(query).fetchall())
            assert sorted(got, key=repr) == sorted(expected, key=repr), query
            assert expected  # every question has an answer here
    # The glob form of the docs reads the same rows when no run was interrupted.
    count = con.execute(f"SELECT count(*) FROM read_parquet('{dest.root}/records/*/*.parquet')").fetchone()[0]
    assert count == 41


def test_query_archive_alone_and_with_the_live_database(db: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = generate_signing_key()
    chain = TrailChain(key)
    chain.log_many("2024-02-01T00:00:00Z", 40, step_seconds=86400, **{"audit.actor.id": "user-x"})
    chain.checkpoint(ns("2024-04-01T00:00:00Z"))
    chain.log_many(
        "2025-02-01T00:00:00Z", 10, step_seconds=86400, **{"audit.actor.id": "user-x", "audit.result": "failure"}
    )
    store(db, chain)
    dest = DirectoryStore(tmp_path / "archive", create=True)
    with psycopg.connect(db, autocommit=True) as conn:
        result = archive_database(conn, dest, before=datetime(2025, 1, 1, tzinfo=timezone.utc), key=key)
    assert result.records == 40
    only = actor_activity(dest, "user-x", since=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert len(only.rows) == 40
    with psycopg.connect(db) as conn:
        both = actor_activity(dest, "user-x", since=datetime(2024, 1, 1, tzinfo=timezone.utc), conn=conn)
        failures = failed_attempts(dest, since=datetime(2024, 1, 1, tzinfo=timezone.utc), conn=conn)
    assert len(both.rows) == 50  # the 40 archived ones (also still live) counted once
    assert failures.rows[0][:3] == ("user-x", 10, 0)
    assert (
        cli(
            [
                "query",
                "actor",
                "user-x",
                "--since",
                "2024-01-01",
                "--until",
                "2024-12-31",
                "--archive",
                str(dest.root),
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 40 and all(r["timestamp"].startswith("2024") for r in rows)
    assert (
        cli(
            [
                "query",
                "actor",
                "user-x",
                "--since",
                "2024-01-01",
                "--archive",
                str(dest.root),
                "--dsn",
                db,
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 50
