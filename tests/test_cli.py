"""The otel-audit command line: exit codes, outputs, the demo."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from otel_audit.cli.main import main
from otel_audit.sink.schema import SCHEMA_VERSION
from tests.harness import App, rows

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "otel_audit", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_db_init_is_idempotent(empty_db: str) -> None:
    first = cli("db", "init", "--dsn", empty_db)
    assert first.returncode == 0, first.stderr
    assert "applied migration 1" in first.stdout
    again = cli("db", "init", "--dsn", empty_db)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert "applied migration 2" in first.stdout
    assert cli("db", "version", "--dsn", empty_db).stdout.strip() == str(SCHEMA_VERSION)


def test_verify_exit_codes(db: str, spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = App(db, spool_dir)
    for _ in range(5):
        app.log()
    assert app.close()
    assert main(["verify", "--dsn", db]) == 0
    assert "INTACT: 5 records in 1 chain(s)" in capsys.readouterr().out

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_logs SET ip_address = '192.0.2.1' WHERE seq = 3")
    assert main(["verify", "--dsn", db, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    (finding,) = report["findings"]
    assert finding["kind"] == "modified" and finding["seq"] == 3 and "ip_address" in finding["detail"]


def test_verify_usage_and_connection_errors_exit_2(empty_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_AUDIT_DSN", raising=False)
    assert cli("verify").returncode == 2
    bad = cli("verify", "--dsn", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert bad.returncode == 2 and "cannot connect" in bad.stderr
    no_tables = cli("verify", "--dsn", empty_db)
    assert no_tables.returncode == 2 and "db init" in no_tables.stderr


def test_queries_in_three_formats(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    for i in range(8):
        app.log(**{"audit.actor.id": "mallory", "audit.result": "denied" if i < 7 else "success"})
    app.log(**{"audit.actor.id": "alice"})
    assert app.close()
    table = cli("query", "actor", "mallory", "--dsn", db)
    assert table.returncode == 0 and "(8 rows)" in table.stdout
    as_json = json.loads(cli("query", "failures", "--dsn", db, "--format", "json").stdout)
    assert as_json[0]["actor_id"] == "mallory" and as_json[0]["failed_attempts"] == 7
    as_csv = cli("query", "resource", "patient_record", "patient-456", "--dsn", db, "--format", "csv").stdout
    assert as_csv.splitlines()[0].startswith('"timestamp","actor_id"') and len(as_csv.splitlines()) == 10
    assert cli("query", "trace", "not-hex", "--dsn", db).returncode == 2


def test_demo_against_a_given_server(db: str, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"HOME": str(tmp_path), "TMPDIR": str(scratch)}
    result = cli("demo", "--dsn", db, "--threads", "2", "--requests", "50", env=env)
    assert result.returncode == 0, result.stderr
    assert "INTACT" in result.stdout
    assert "otel-audit query failures" in result.stdout
    assert cli("verify", "--dsn", db).returncode == 0
    assert not list(scratch.iterdir()), "the demo left its temporary spool behind, though every record was committed"


def test_demo_on_its_embedded_server_as_the_readme_starts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`otel-audit demo` with no DSN, the README's first command: an embedded PostgreSQL in the
    user's data directory, left running for the commands the demo prints, until `demo --stop`."""
    home = Path(tempfile.mkdtemp(prefix="otel-audit-demo-"))
    os.chmod(home, 0o755)  # as root, pgserver runs the server as a user of its own
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    env = {"HOME": str(home)}
    data_dir = home / ".local" / "share" / "otel-audit" / "demo-postgres"
    try:
        result = cli("demo", "--threads", "2", "--requests", "25", env=env)
        assert result.returncode == 0, result.stderr
        assert "INTACT" in result.stdout and f"data directory {data_dir}" in result.stdout, result.stdout
        (verify_line,) = [line for line in result.stdout.splitlines() if "otel-audit verify --dsn" in line]
        dsn = shlex.split(verify_line)[-1]
        (logged,) = [line.split()[0] for line in result.stdout.splitlines() if "audit records logged" in line]
        assert rows(dsn, "SELECT count(*) FROM audit_logs") == [(int(logged.replace(",", "")),)]
        verified = cli("verify", "--dsn", dsn)  # the server outlived the demo
        assert verified.returncode == 0, verified.stdout + verified.stderr
        stopped = cli("demo", "--stop", env=env)
        assert stopped.returncode == 0 and f"stopped the embedded PostgreSQL in {data_dir}" in stopped.stdout
        assert not (data_dir / "postmaster.pid").exists()
        assert cli("demo", "--stop", env=env).stdout.startswith("no embedded demo server is running")
    finally:
        if (data_dir / "postmaster.pid").exists():
            cli("demo", "--stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_status_shows_spool_and_database(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.log()
    assert app.audit.flush(10)
    result = cli("status", "--spool-dir", str(spool_dir), "--dsn", db, "--json")
    app.close()
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    (chain,) = status["spool"]["chains"]
    assert chain["owner_alive"] is True
    assert status["database"]["chains_registered"] == 1
