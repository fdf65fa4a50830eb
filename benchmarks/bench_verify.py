"""(c) Verification speed in records/s (target >= 150k/s), with the cost of merely streaming
the same rows out of PostgreSQL measured in the same run as the baseline.

    python benchmarks/bench_verify.py [--records 200000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider

import otel_audit
from benchmarks.common import AUDIT_EXTRA, fresh_schema, median, report, where
from otel_audit.verify import VerifyOptions, verify_database
from otel_audit.verify.parallel import default_workers


def populate(records: int) -> str:
    dsn = fresh_schema()
    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
    )
    logger = logging.Logger(f"bench.{uuid.uuid4().hex[:6]}", level=logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=provider))

    def work(k: int) -> None:
        for i in range(records // 4):
            logger.info("patient record viewed", extra={**AUDIT_EXTRA, "audit.resource.id": f"p-{k}-{i}"})

    pool = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    audit.shutdown(timeout=600)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_logs")
    return dsn


def stream_only(dsn: str) -> float:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        start = time.perf_counter()
        n = 0
        with cur.copy(
            "COPY (SELECT chain_id, seq, hash, canonical FROM audit_logs ORDER BY chain_id, seq) "
            "TO STDOUT (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["uuid", "int8", "text", "bytea"])
            for _ in copy.rows():
                n += 1
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dsn = populate(args.records)
    base, single, full = [], [], []
    for _ in range(args.rounds):
        base.append(stream_only(dsn))
        for workers, results in ((1, single), (None, full)):
            with psycopg.connect(dsn) as conn:
                result = verify_database(conn, VerifyOptions(workers=workers))
            assert result.ok, [str(f) for f in result.findings]
            results.append(result.records_per_second)
    b, s, f = median(base), median(single), median(full)
    report(
        f"verification of {args.records:,} records, {where()} (median of {args.rounds})",
        [
            ("stream rows only (COPY, no checks)", f"{b:9,.0f} records/s (baseline)"),
            ("otel-audit verify --workers 1", f"{s:9,.0f} records/s   {s / b:.2f} of the stream rate"),
            (
                f"otel-audit verify (default: {default_workers()} workers)",
                f"{f:9,.0f} records/s   {f / b:.2f} of the stream rate  (target >= 150,000/s)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
