"""Tampering as a database superuser would do it, against real PostgreSQL: each kind is detected.

Triggers stop ordinary roles; a superuser switches them off
(``session_replication_role = replica``) and edits freely. The verifier must
name what changed, where. (Rewriting a whole chain and cutting its tail are
detected by signed checkpoints; see test_checkpoints.py.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import psycopg
import pytest

from otel_audit.core.record import RECORD_DOMAIN
from otel_audit.verify.report import Kind
from tests.harness import App, exit_code, fork_logging, rows, verify

pytestmark = [pytest.mark.storage, pytest.mark.usefixtures("verify_mode")]

N = 30


@pytest.fixture
def trail(db: str, spool_dir: Path) -> str:
    app = App(db, spool_dir)
    for i in range(N):
        app.log(
            **{
                "audit.reason": f"reason {i}",
                "audit.changed_fields": ["dosage"],
                "audit.old_values": {"dosage": f"{i}mg"},
                "user_agent.original": "curl/8",
                "session.id": f"s-{i}",
                "n": i,
            }
        )
    assert app.close()
    report = verify(db)
    assert report.ok and report.records == N and not report.findings
    return db


def tamper(dsn: str, *statements: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # superuser only: triggers off
        for statement in statements:
            conn.execute(statement, params if "%s" in statement else None)


def kinds(dsn: str) -> list[tuple[str, int | None]]:
    return [(f.kind.value, f.seq) for f in verify(dsn).errors]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("ip_address", "'192.0.2.99'"),
        ("reason", "'emergency override'"),
        ("old_values", """'{"dosage": "999mg"}'::jsonb"""),
        ("changed_fields", "'{other}'"),
        ("actor_id", "'someone-else'"),
        ("actor_type", "'admin'"),
        ("action", "'delete'"),
        ("resource_id", "'patient-000'"),
        ("result", "'denied'"),
        ("timestamp", "timestamp - interval '1 hour'"),
        ("session_id", "NULL"),
        ("user_agent", "'Mozilla'"),
        ("message", "'nothing happened'"),
        ("attributes", """'{"n": 0}'::jsonb"""),
        ("problems", "'{forged problem}'"),
        ("trace_id", "'0af7651916cd43dd8448eb211c80319c'"),
        ("service_name", "'other-service'"),
        ("id", "gen_random_uuid()"),
        ("prev_hash", "repeat('0', 64)"),
    ],
)
def test_editing_any_single_column_is_detected(trail: str, column: str, value: str) -> None:
    tamper(trail, f"UPDATE audit_logs SET {column} = {value} WHERE seq = 17")
    findings = verify(trail).errors
    assert [(f.kind, f.seq) for f in findings] == [(Kind.MODIFIED, 17)], [str(f) for f in findings]
    assert f"column {column} was changed" in findings[0].detail


def test_editing_the_hashed_bytes_is_detected(trail: str) -> None:
    tamper(
        trail,
        "UPDATE audit_logs SET canonical = convert_to(replace(convert_from(canonical, 'UTF8'), "
        "'reason 9', 'reason X'), 'UTF8') WHERE seq = 10",
    )
    findings = verify(trail).errors
    assert [(f.kind, f.seq) for f in findings] == [(Kind.MODIFIED, 10)]
    assert "do not match the stored hash" in findings[0].detail


def test_editing_bytes_hash_and_column_together_breaks_the_next_link(trail: str) -> None:
    ((canonical,),) = rows(trail, "SELECT canonical FROM audit_logs WHERE seq = 12")
    forged = bytes(canonical).replace(b"reason 11", b"reason X!")
    new_hash = hashlib.sha256(RECORD_DOMAIN + forged).hexdigest()
    tamper(
        trail,
        "UPDATE audit_logs SET canonical = %s, hash = %s, reason = 'reason X!' WHERE seq = 12",
        params=(forged, new_hash),
    )
    assert kinds(trail) == [("broken_link", 13)]


def test_deleting_a_middle_row_is_detected(trail: str) -> None:
    tamper(trail, "DELETE FROM audit_logs WHERE seq = 8")
    assert kinds(trail) == [("missing", 8)]


def test_deleting_a_range_is_one_finding(trail: str) -> None:
    tamper(trail, "DELETE FROM audit_logs WHERE seq BETWEEN 3 AND 9")
    (finding,) = verify(trail).errors
    assert (finding.kind, finding.seq, finding.count) == (Kind.MISSING, 3, 7)


def test_swapping_two_rows_sequence_numbers_is_detected(trail: str) -> None:
    tamper(
        trail,
        "ALTER TABLE audit_logs DROP CONSTRAINT audit_logs_seq_positive",
        "UPDATE audit_logs SET seq = -1 WHERE seq = 5",
        "UPDATE audit_logs SET seq = 5 WHERE seq = 6",
        "UPDATE audit_logs SET seq = 6 WHERE seq = -1",
    )
    assert sorted(kinds(trail)) == [("reordered", 5), ("reordered", 6)]


# Each partition of audit_logs has its own unique (chain_id, seq) index: a superuser drops them all.
DROP_POSITION_INDEXES = (
    "DO $$ DECLARE r record; BEGIN FOR r IN SELECT indexrelid::regclass::text AS ix FROM pg_index i "
    "JOIN pg_inherits h ON h.inhrelid = i.indrelid WHERE h.inhparent = 'audit_logs'::regclass AND i.indisunique "
    "LOOP EXECUTE 'DROP INDEX ' || r.ix; END LOOP; END $$"
)


@pytest.mark.parametrize("timestamp", ["timestamp", "timestamp - interval '400 days'"])
def test_a_forged_row_with_a_duplicate_position_is_detected(trail: str, timestamp: str) -> None:
    """In the same partition (its unique index dropped) and in another partition (nothing to drop)."""
    tamper(
        trail,
        DROP_POSITION_INDEXES,
        f"INSERT INTO audit_logs SELECT gen_random_uuid(), {timestamp}, 'intruder', actor_type, action, resource_type, "
        "resource_id, result, ip_address, user_agent, session_id, user_id, reason, changed_fields, old_values, "
        "prev_hash, hash, chain_id, seq, trace_id, span_id, trace_flags, service_name, service_instance_id, "
        "host_name, scope, severity_text, severity_number, event_name, message, attributes, problems, "
        "format_version, canonical, now() FROM audit_logs WHERE seq = 20",
    )
    found = kinds(trail)
    assert ("inserted", 20) in found, found
    assert all(seq == 20 for _, seq in found)


def test_a_forged_row_appended_to_the_chain_is_detected(trail: str) -> None:
    ((chain_id,),) = rows(trail, "SELECT chain_id::text FROM audit_chains")
    doc = {
        "v": 1,
        "id": "11111111-1111-8111-8111-111111111111",
        "chain_id": chain_id,
        "seq": N + 1,
        "prev_hash": "f" * 64,
        "timestamp": "2026-11-28T10:00:00.000000Z",
        "actor_id": "intruder",
        "actor_type": "user",
        "action": "read",
        "resource_type": "patient_record",
        "resource_id": "patient-1",
        "result": "success",
        "attributes": {},
        "problems": [],
    }
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    tamper(
        trail,
        "INSERT INTO audit_logs (id, timestamp, actor_id, actor_type, action, resource_type, resource_id, result, "
        "prev_hash, hash, chain_id, seq, attributes, problems, format_version, canonical) VALUES "
        "(%s, '2026-11-28T10:00:00Z', 'intruder', 'user', 'read', 'patient_record', 'patient-1', 'success', %s, %s, "
        "%s, %s, '{}', '{}', 1, %s)",
        params=(
            doc["id"],
            doc["prev_hash"],
            hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest(),
            chain_id,
            N + 1,
            canonical,
        ),
    )
    assert kinds(trail) == [("inserted", N + 1)]


def test_records_under_an_invented_chain_are_detected(trail: str) -> None:
    tamper(
        trail,
        "INSERT INTO audit_logs SELECT gen_random_uuid(), timestamp, actor_id, actor_type, action, "
        "resource_type, resource_id, result, ip_address, user_agent, session_id, user_id, reason, "
        "changed_fields, old_values, prev_hash, hash, gen_random_uuid(), seq, trace_id, span_id, "
        "trace_flags, service_name, service_instance_id, host_name, scope, severity_text, "
        "severity_number, event_name, message, attributes, problems, format_version, canonical, now() "
        "FROM audit_logs WHERE seq = 1",
    )
    found = {k for k, _ in kinds(trail)}
    assert "unregistered_chain" in found and "reordered" in found


def test_deleting_or_editing_the_chain_registry_is_detected(trail: str) -> None:
    tamper(
        trail,
        'UPDATE audit_chains SET emitter = \'{"kind": "sdk", "service_name": "x"}\', '
        "genesis = convert_to(replace(convert_from(genesis, 'UTF8'), 'billing', 'xilling'), 'UTF8')",
    )
    assert kinds(trail) == [("genesis_modified", 0), ("broken_link", 1)]
    tamper(trail, "DELETE FROM audit_chains")
    assert [k for k, _ in kinds(trail)] == ["unregistered_chain"]


def test_clean_concurrent_threads_and_processes_give_no_findings(db: str, tmp_path: Path) -> None:
    """Four processes with four threads each, one spool directory, one database: no false positives."""
    script = textwrap.dedent(
        """
        import logging, sys, threading
        import otel_audit
        audit = otel_audit.configure(dsn=sys.argv[1], service_name="worker", spool_dir=sys.argv[2])
        log = logging.getLogger("worker")
        def work(t):
            for i in range(300):
                log.info("step", extra={"audit.action": "read", "audit.actor.id": f"u{t}",
                    "audit.resource.type": "doc", "audit.resource.id": str(i), "audit.result": "success"})
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        sys.exit(0 if audit.shutdown(timeout=60) else 3)
        """
    )
    spool = tmp_path / "shared-spool"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, db, str(spool)], env=env) for _ in range(4)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.records == 4 * 4 * 300
    assert len(report.chains) == 4
    assert all(c.first_seq == 1 and c.last_seq == 1200 for c in report.chains.values())
    # The seed's in-process last-hash forked under 4 threads (5,028 distinct prev_hash of 8,000 rows).
    assert rows(db, "SELECT count(*), count(DISTINCT prev_hash) FROM audit_logs") == [(4800, 4800)]


def test_asyncio_tasks_share_one_unforked_chain(db: str, spool_dir: Path) -> None:
    import asyncio

    app = App(db, spool_dir)

    async def task(k: int) -> None:
        for i in range(200):
            app.log(**{"audit.resource.id": f"{k}-{i}"})
            if i % 10 == 0:
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(task(k) for k in range(10)))

    asyncio.run(main())
    assert app.close()
    report = verify(db)
    assert report.ok and not report.findings and report.records == 2000


def test_the_seed_queries_run_unchanged(trail: str) -> None:
    seed = Path(__file__).with_name("seed_queries.sql").read_text().split(";")
    with psycopg.connect(trail) as conn:
        results = [conn.execute(q).fetchall() for q in seed if q.strip()]
    assert len(results) == 3
    assert len(results[0]) == N  # user-123's actions in the last 30 days
    assert len(results[1]) == N  # all access to patient-456
    assert results[2] == []  # no failures


def test_fork_gives_the_child_a_chain_of_its_own(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.log()
    pid = fork_logging(app, 1)  # the child's record goes to a chain of its own
    app.log()
    assert exit_code(pid) == 0
    assert app.close()
    report = verify(db)
    assert report.ok and not report.errors
    assert sorted((c.records for c in report.chains.values())) == [1, 2]


def test_a_forked_child_that_never_audits_leaves_no_chain(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.log()
    assert exit_code(fork_logging(app, 0)) == 0  # the child shuts down without ever sealing
    app.log()
    assert app.close()
    assert rows(db, "SELECT count(*) FROM audit_chains") == [(1,)]
    assert [p.name for p in spool_dir.iterdir() if p.is_dir()] == []
    assert verify(db).ok


def test_rows_with_a_null_sequence_number_or_chain_id_are_detected(trail: str) -> None:
    tamper(
        trail,
        "ALTER TABLE audit_logs ALTER COLUMN seq DROP NOT NULL, ALTER COLUMN chain_id DROP NOT NULL",
        "UPDATE audit_logs SET seq = NULL WHERE seq = 5",
        "CREATE TEMP TABLE forged AS SELECT * FROM audit_logs WHERE seq = 7",
        "UPDATE forged SET chain_id = NULL, id = gen_random_uuid()",
        "INSERT INTO audit_logs SELECT * FROM forged",
    )
    findings = verify(trail).errors
    assert sorted((f.kind.value, f.seq, f.chain_id is None) for f in findings) == [
        ("inserted", None, True),  # the row without a chain
        ("reordered", None, False),  # the row whose seq was cleared: still in its place by its sealed seq
    ], [str(f) for f in findings]


def test_a_number_orjson_cannot_read_in_a_json_column_is_a_finding_not_a_crash(trail: str) -> None:
    tamper(trail, """UPDATE audit_logs SET attributes = '{"n": 123456789012345678901234567890}' WHERE seq = 4""")
    findings = verify(trail).errors
    assert [(f.kind, f.seq) for f in findings] == [(Kind.MODIFIED, 4)]
    assert "column attributes was changed" in findings[0].detail
