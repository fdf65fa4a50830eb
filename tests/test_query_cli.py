"""``otel-audit query`` as a new user meets it: limits that say so, problem records as problems, filters,
a wide mode, timelines, usage errors instead of PostgreSQL errors, a quiet end when piped into ``head``."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider

from otel_audit import query as q
from tests.harness import App
from tests.test_output_escaping import FORGED, ROOT, assert_terminal_safe, cli, stored

pytestmark = pytest.mark.storage


@pytest.fixture
def trail(db: str, spool_dir: Path) -> dict:
    """Two services; actions, results, sessions and a trace of known shape; one record stored flagged."""
    billing = App(db, spool_dir, service="billing")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        billing.log(
            "login",
            **{
                "audit.action": "login",
                "audit.actor.id": "alice",
                "session.id": "s-1",
                "audit.resource.type": "session",
                "audit.resource.id": "s-1",
            },
        )
        billing.log("viewed", **{"audit.actor.id": "alice", "session.id": "s-1"})
        billing.log(
            "export refused",
            **{
                "audit.action": "export",
                "audit.actor.id": "alice",
                "session.id": "s-1",
                "audit.result": "denied",
                "audit.reason": "no export grant",
            },
        )
    for i in range(6):
        billing.log(**{"audit.actor.id": "mallory", "audit.result": "failure", "session.id": "s-2", "n": i})
    billing.log(
        "changed",
        **{
            "audit.action": "update",
            "audit.actor.id": "bob",
            "audit.changed_fields": ["dose"],
            "audit.old_values": {"dose": "5mg"},
            "user_agent.original": "curl/8.5",
        },
    )
    billing.log(**{"audit.actor.id": "eve", "audit.result": "maybe"})  # stored flagged: result not allowed
    assert billing.close()
    pharmacy = App(db, spool_dir / "p", service="pharmacy")
    pharmacy.log(**{"audit.actor.id": "carol"})
    assert pharmacy.close()
    return {"dsn": db, "trace": trace_id, "total": 12}


def query_json(dsn: str, *args: str) -> list[dict]:
    result = cli("query", *args, "--dsn", dsn, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------------- limits that say so
def test_a_cut_result_says_how_many_more_match(trail: dict) -> None:
    dsn = trail["dsn"]
    table = cli("query", "--dsn", dsn, "--limit", "5")
    assert table.returncode == 0, table.stderr
    assert "(5 rows)" in table.stdout
    assert (
        "(showing the newest 5 of 12 matching records: 7 more match (raise --limit or narrow the filters))"
        in table.stdout
    )
    as_json = cli("query", "--dsn", dsn, "--limit", "5", "--format", "json")
    assert len(json.loads(as_json.stdout)) == 5  # the data stays clean: the notice goes to stderr
    assert "7 more match" in as_json.stderr
    as_csv = cli("query", "--dsn", dsn, "--limit", "5", "--format", "csv")
    assert len(list(csv.reader(io.StringIO(as_csv.stdout, newline="")))) == 6 and "7 more match" in as_csv.stderr
    whole = cli("query", "--dsn", dsn, "--limit", "12")
    assert "more match" not in whole.stdout and "(12 rows)" in whole.stdout
    failures = cli("query", "failures", "--dsn", dsn, "--threshold", "0", "--limit", "1", "--since", "1h")
    assert "(showing the first 1 of 2 matching actors: 1 more match" in failures.stdout


# ---------------------------------------------------------------------- problem records
def test_problem_records_are_shown_as_problems_and_quarantined_ones_are_not_hidden(trail: dict) -> None:
    dsn = trail["dsn"]
    flagged = query_json(dsn, "--problems")
    assert [r["actor_id"] for r in flagged] == ["eve"]
    assert flagged[0]["problems"] and "maybe" in flagged[0]["problems"][0]
    table = cli("query", "--dsn", dsn)
    assert "1 of the rows shown are problem records" in table.stdout

    # A superuser moves a valid record into audit_quarantine and deletes it from audit_logs (issue 9's attack):
    # queries still show it, as a problem.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO audit_quarantine (chain_id, seq, hash, canonical, reason) SELECT chain_id, seq, hash, "
            "canonical, 'moved by hand' FROM audit_logs WHERE actor_id = 'bob'"
        )
        conn.execute("DELETE FROM audit_logs WHERE actor_id = 'bob'")
    bob = query_json(dsn, "actor", "bob")
    assert len(bob) == 1 and bob[0]["action"] == "update" and bob[0]["problems"][0] == "quarantined: moved by hand"
    assert {r["actor_id"] for r in query_json(dsn, "--problems")} == {"eve", "bob"}
    assert len(query_json(dsn)) == trail["total"]


# ---------------------------------------------------------------------- filters and the wide mode
def test_filters(trail: dict) -> None:
    dsn = trail["dsn"]
    assert {r["action"] for r in query_json(dsn, "--action", "export", "--action", "update")} == {"export", "update"}
    assert {r["actor_id"] for r in query_json(dsn, "--session", "s-1")} == {"alice"}
    assert len(query_json(dsn, "--result", "failure")) == 6
    assert len(query_json(dsn, "--result", "failure", "--result", "denied")) == 7
    assert [r["actor_id"] for r in query_json(dsn, "--service", "pharmacy")] == ["carol"]
    assert len(query_json(dsn, "actor", "alice", "--result", "denied")) == 1
    assert len(query_json(dsn, "resource", "patient_record", "patient-456", "--service", "billing")) == 10
    chain = query_json(dsn, "--service", "pharmacy")[0]["chain_id"]
    assert len(query_json(dsn, "--chain", chain)) == 1
    # Time range: records are all from the last minutes; a range before them matches nothing.
    assert len(query_json(dsn, "--since", "1h")) == trail["total"]
    assert query_json(dsn, "--until", "2000-01-01") == []
    now = datetime.now(timezone.utc)
    assert (
        len(query_json(dsn, "--since", (now - timedelta(hours=1)).isoformat(), "--until", now.isoformat()))
        == trail["total"]
    )
    # Filters may also come before the question.
    assert len(query_json(dsn, "--result", "denied", "actor", "alice")) == 1


def test_the_wide_mode_adds_what_an_investigator_reads(trail: dict) -> None:
    dsn = trail["dsn"]
    narrow = query_json(dsn, "actor", "bob")[0]
    assert "message" not in narrow and "problems" in narrow and "id" in narrow
    wide = query_json(dsn, "actor", "bob", "--wide")[0]
    assert wide["message"] == "changed" and wide["user_agent"] == "curl/8.5"
    assert wide["changed_fields"] == ["dose"] and wide["old_values"] == {"dose": "5mg"}
    table = cli("query", "actor", "bob", "--wide", "--dsn", dsn)
    header = table.stdout.splitlines()[0].split()
    assert {"message", "user_agent", "changed_fields", "old_values", "session_id", "trace_id"} <= set(header)


# ---------------------------------------------------------------------- timelines
def test_a_trace_and_a_session_read_as_a_story(trail: dict) -> None:
    dsn = trail["dsn"]
    result = cli("query", "trace", trail["trace"], "--dsn", dsn, "--format", "timeline")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Timeline of trace {trail['trace']}: 3 records")
    steps = [line for line in lines if line.startswith("20")]
    assert len(steps) == 3
    assert "+0.000s" in steps[0] and "alice (user)" in steps[0] and "login" in steps[0] and "success" in steps[0]
    assert "export" in steps[2] and "DENIED" in steps[2] and "reason: no export grant" in steps[2]
    assert [line.split()[0] for line in steps] == sorted(line.split()[0] for line in steps)
    same = cli("query", "--trace", trail["trace"], "--format", "timeline", "--dsn", dsn)
    assert same.stdout == result.stdout
    session = cli("query", "session", "s-1", "--format", "timeline", "--dsn", dsn)
    assert "Timeline of session s-1: 3 records" in session.stdout
    as_json = query_json(dsn, "trace", trail["trace"])
    assert [r["action"] for r in as_json] == ["login", "read", "export"]  # trace and session: in time order
    empty = cli("query", "session", "nobody", "--format", "timeline", "--dsn", dsn)
    assert empty.returncode == 0 and "no records" in empty.stdout


def test_timeline_output_escapes_stored_values(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.log(**{"audit.actor.id": FORGED, "session.id": "s-x", "audit.reason": FORGED})
    assert app.close()
    result = cli("query", "session", "s-x", "--format", "timeline", "--dsn", db)
    assert result.returncode == 0, result.stderr
    assert_terminal_safe(result.stdout)
    steps = [line for line in result.stdout.splitlines() if line.startswith("20")]
    assert len(steps) == 1 and "mallory\\x1b[2K\\r2026-01-01" in steps[0] and "\\u202eevil" in steps[0]


# ---------------------------------------------------------------------- errors that say what to do
@pytest.mark.parametrize(
    "args",
    [
        ["--limit", "-1"],
        ["--limit", "0"],
        ["--limit", "many"],
        ["--since", "yesterday"],
        ["--until", "soon"],
        ["trace", "not-hex"],
        ["--trace", "0af7"],
        ["--result", "maybe"],
        ["--chain", "x"],
        ["--since", "2026-12-02", "--until", "2026-12-01"],
        ["--since", "99999999d"],
        ["failures", "--threshold", "-1"],
        ["failures", "--window", "forever"],
        ["failures", "--window", "1h", "--since", "2h"],
        ["failures", "--actor", "x"],
        ["failures", "--format", "timeline"],
    ],
)
def test_bad_arguments_are_usage_errors(db: str, args: list[str]) -> None:
    result = cli("query", *args, "--dsn", db)
    assert result.returncode == 2, result.stdout
    assert "PostgreSQL error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_a_database_without_the_tables_says_to_run_db_init(empty_db: str) -> None:
    for args in (["actor", "alice"], ["--session", "s"], ["failures"], ["trace", "0" * 32]):
        result = cli("query", *args, "--dsn", empty_db)
        assert result.returncode == 2
        assert "otel-audit db init" in result.stderr and "PostgreSQL error" not in result.stderr


def test_piping_into_head_ends_quietly(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    for i in range(800):
        app.log(n=i)
    assert app.close()
    for fmt in ("table", "csv", "json"):
        process = subprocess.Popen(
            [sys.executable, "-m", "otel_audit", "query", "--dsn", db, "--wide", "--format", fmt],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()  # what `head -1` does: read a line, then go away
        process.stdout.close()
        err = process.stderr.read().decode()
        code = process.wait(timeout=120)
        assert err == "", err  # no traceback, no "Broken pipe", no "Exception ignored"
        # 141 as a Unix tool stopped by SIGPIPE. One large write (JSON) can also end without the kernel
        # reporting the closed pipe to Python: quiet all the same.
        assert code == 141 or (fmt == "json" and code == 0), (fmt, code)


def test_the_library_functions_keep_their_questions(trail: dict) -> None:
    with psycopg.connect(trail["dsn"]) as conn:
        alice = q.actor_activity(conn, "alice")
        assert len(alice.rows) == 3 and alice.total == 3 and "trace_id" in alice.columns
        assert len(q.resource_access(conn, "session", "s-1").rows) == 1
        assert [r["action"] for r in q.trace_records(conn, trail["trace"]).as_dicts()] == ["login", "read", "export"]
        assert len(q.session_records(conn, "s-2").rows) == 6
        failures = q.failed_attempts(conn, threshold=5)
        assert [r["actor_id"] for r in failures.as_dicts()] == ["mallory"]
        with pytest.raises(ValueError, match="limit"):
            q.find_records(conn, q.RecordFilter(), limit=0)
    assert stored(trail["dsn"], "SELECT count(*) FROM audit_logs")[0][0] == trail["total"]


def test_archive_queries_refuse_filters_they_cannot_apply(db: str, tmp_path: Path) -> None:
    for args, says in (
        (["session", "s-1"], "--archive answers the questions"),
        (["actor", "alice", "--result", "denied"], "does not apply --result"),
        (["trace", "0" * 32, "--since", "1d"], "does not apply --since"),
        (["resource", "t", "i", "--wide"], "does not apply --wide"),
    ):
        result = cli("query", *args, "--archive", str(tmp_path), "--dsn", db)
        assert result.returncode == 2 and says in result.stderr, (args, result.stderr)
