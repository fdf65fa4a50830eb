"""``otel-audit status`` as a new user meets it: no tables, no records yet, a dropped table."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.harness import App
from tests.test_output_escaping import assert_terminal_safe, cli

pytestmark = pytest.mark.storage


def test_status_without_tables_says_so_and_exits_2(empty_db: str, tmp_path: Path) -> None:
    result = cli("status", "--dsn", empty_db, "--spool-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "otel-audit tables not found" in result.stdout and "otel-audit db init" in result.stderr
    assert "no such directory" in result.stdout
    as_json = cli("status", "--dsn", empty_db, "--spool-dir", str(tmp_path), "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["database"]["missing_tables"] == [
        "audit_chains",
        "audit_logs",
        "audit_quarantine",
    ]


def test_status_of_a_database_with_a_dropped_table(db: str, tmp_path: Path) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TABLE audit_quarantine")
    result = cli("status", "--dsn", db, "--spool-dir", str(tmp_path))
    assert result.returncode == 2
    assert "audit_quarantine are missing" in result.stdout and "PostgreSQL error" not in result.stderr


def test_status_says_in_words_what_has_not_happened_yet(db: str, spool_dir: Path) -> None:
    empty = cli("status", "--dsn", db, "--spool-dir", str(spool_dir))
    assert empty.returncode == 0, empty.stderr
    assert "no record committed yet" in empty.stdout and "None" not in empty.stdout

    app = App(db, spool_dir)
    app.log()
    assert app.close()
    with psycopg.connect(db, autocommit=True) as conn:  # a second emitter registered, nothing committed yet
        conn.execute(
            "INSERT INTO audit_chains (chain_id, created_at, emitter, genesis, genesis_hash) "
            'SELECT gen_random_uuid(), now(), \'{"kind": "sdk"}\', genesis, genesis_hash FROM audit_chains'
        )
    result = cli("status", "--dsn", db, "--spool-dir", str(spool_dir))
    assert result.returncode == 0, result.stderr
    assert_terminal_safe(result.stdout)
    assert "None" not in result.stdout
    assert "billing@" in result.stdout and "head seq 1" in result.stdout
    assert "unknown service@unknown host  no records committed yet" in result.stdout
