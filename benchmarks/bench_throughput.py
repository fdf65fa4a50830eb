"""(b) Sustained durable throughput: ``logging`` calls from 4 threads to committed rows,
as a ratio to the seed's design measured in the same run (target >= 7x, >= 25k rows/s here).

The seed's design: one INSERT per event with a last-hash lookup (``ORDER BY timestamp
DESC LIMIT 1``), autocommit, from each thread's own connection, into the seed's table
(its trigger and indexes). otel-audit variants: the default (spool, msync every 0.2 s),
``fsync="always"`` (each call waits for the msync covering it), and fail-closed (each call
waits until its record is committed to PostgreSQL). A last row bounds what any placement of
the sink could give: the rate of the logging calls alone while the sink is stalled.

    python benchmarks/bench_throughput.py [--records 40000] [--threads 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider

import otel_audit
from benchmarks.common import AUDIT_EXTRA, fresh_schema, report, where
from tests.pgproxy import PgProxy

SEED_SCHEMA = """
CREATE TABLE audit_logs (
id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(),
actor_id TEXT NOT NULL,
actor_type TEXT NOT NULL CHECK (actor_type IN ('user', 'service', 'admin', 'system')),
action TEXT NOT NULL,
resource_type TEXT NOT NULL,
resource_id TEXT NOT NULL,
result TEXT NOT NULL CHECK (result IN ('success', 'failure', 'denied')),
ip_address INET,
session_id TEXT,
reason TEXT,
changed_fields TEXT[],
prev_hash TEXT,
hash TEXT NOT NULL UNIQUE
);
CREATE OR REPLACE FUNCTION prevent_audit_modification()
RETURNS TRIGGER AS $$
BEGIN
RAISE EXCEPTION 'Audit logs are immutable — modification not allowed';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_logs_immutable
BEFORE UPDATE OR DELETE ON audit_logs
FOR EACH ROW EXECUTE FUNCTION prevent_audit_modification();
CREATE INDEX idx_audit_actor_id ON audit_logs(actor_id);
CREATE INDEX idx_audit_resource ON audit_logs(resource_type, resource_id);
CREATE INDEX idx_audit_timestamp ON audit_logs(timestamp DESC);
CREATE INDEX idx_audit_action ON audit_logs(action);
"""


def seed_design(records: int, threads: int) -> float:
    """The seed's AuditLogger.log, made synchronous: lookup last hash, hash 8 fields, INSERT."""
    dsn = fresh_schema(init=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED_SCHEMA)

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(records // threads):
                last = conn.execute("SELECT hash FROM audit_logs ORDER BY timestamp DESC LIMIT 1").fetchone()
                prev = last[0] if last else None
                entry = {
                    "id": str(uuid.uuid4()),
                    "timestamp": datetime.now(timezone.utc).isoformat(),
                    "actor_id": "user-123",
                    "action": "read",
                    "resource_type": "patient_record",
                    "resource_id": "patient-456",
                    "result": "success",
                }
                hashable = {**entry, "prev_hash": prev or "GENESIS"}
                digest = hashlib.sha256(json.dumps(hashable, sort_keys=True).encode()).hexdigest()
                conn.execute(
                    "INSERT INTO audit_logs (id, timestamp, actor_id, actor_type, action, resource_type, "
                    "resource_id, result, ip_address, prev_hash, hash) VALUES (%s, %s, %s, 'user', %s, %s, %s, "
                    "%s, '10.1.2.3', %s, %s)",
                    (
                        entry["id"],
                        entry["timestamp"],
                        entry["actor_id"],
                        entry["action"],
                        entry["resource_type"],
                        entry["resource_id"],
                        entry["result"],
                        prev or "GENESIS",
                        digest,
                    ),
                )

    return _run_threads(work, threads, records)


def otel_audit_design(
    records: int,
    threads: int,
    *,
    fsync: str = "interval",
    fail_closed: bool = False,
    signing: bool = False,
    sink_stalled: bool = False,
) -> float:
    """Rows committed per second; with ``sink_stalled``, records *logged* per second while the sink
    cannot reach PostgreSQL (it does no work): the bound for any placement of the sink."""
    dsn = fresh_schema()
    proxy = PgProxy(dsn) if sink_stalled else None
    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        proxy.dsn if proxy else dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_fsync=fsync,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
    )
    logger = logging.Logger(f"bench.{uuid.uuid4().hex[:6]}", level=logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=provider))
    per_thread = records // threads
    if proxy is not None:
        logger.info("warm-up", extra=AUDIT_EXTRA)
        audit.flush(60)
        proxy.pause()

    def work() -> None:
        info = logger.info
        if fail_closed:
            for _ in range(per_thread):
                with audit.fail_closed(timeout=30):
                    info("patient record viewed", extra=AUDIT_EXTRA)
        else:
            for _ in range(per_thread):
                info("patient record viewed", extra=AUDIT_EXTRA)

    rate = _run_threads(work, threads, records, finish=None if proxy else lambda: audit.flush(300))
    if proxy is not None:
        proxy.resume()
    audit.shutdown()
    if proxy is not None:
        proxy.close()
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
    expected = per_thread * threads + (1 if proxy else 0)
    assert stored == expected, f"{stored} rows stored, expected {expected}"
    return rate


def _run_threads(work, threads: int, records: int, finish=None) -> float:
    pool = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if finish is not None:
        finish()
    return (records // threads * threads) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--seed-records", type=int, default=8_000, help="events for the (slow) seed baseline")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--waiting-threads",
        type=int,
        default=64,
        help="callers for the variants where each call waits (they share msyncs / commits)",
    )
    args = parser.parse_args()

    seed = seed_design(args.seed_records, args.threads)
    default = otel_audit_design(args.records, args.threads)
    always = otel_audit_design(args.records // 2, args.waiting_threads, fsync="always")
    closed = otel_audit_design(args.records // 2, args.waiting_threads, fail_closed=True)
    stalled = otel_audit_design(args.records, args.threads, sink_stalled=True)
    report(
        f"durable throughput, {args.threads} threads, {where()} (rows committed per second)",
        [
            ("seed design (INSERT + last-hash lookup)", f"{seed:9,.0f} rows/s (baseline, {args.threads} threads)"),
            (
                f"otel-audit default, {args.threads} threads",
                f"{default:9,.0f} rows/s   ratio {default / seed:5.1f}x  (target >= 7x)",
            ),
            (
                f"otel-audit fsync=always, {args.waiting_threads} threads",
                f"{always:9,.0f} rows/s   ratio {always / seed:5.1f}x",
            ),
            (
                f"otel-audit fail-closed, {args.waiting_threads} threads",
                f"{closed:9,.0f} rows/s   ratio {closed / seed:5.1f}x",
            ),
            (
                f"bound: logging only, sink stalled, {args.threads} threads",
                f"{stalled:9,.0f} records/s   ratio {stalled / seed:5.1f}x  (no sink placement can exceed this)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
