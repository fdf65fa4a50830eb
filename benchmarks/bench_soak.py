"""Soak: log through a database outage (default 60 s) and report records lost (must be 0),
peak memory, and how fast the backlog drains when the database returns.

The outage is a TCP proxy cutting every connection (tests/pgproxy.py). The baseline for
the drain rate is the rate at which records were logged, measured in the same run.

    python benchmarks/bench_soak.py [--outage 60] [--rate 2000]
"""

from __future__ import annotations

import argparse
import logging
import resource
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
from benchmarks.common import AUDIT_EXTRA, fresh_schema, report, where
from tests.pgproxy import PgProxy


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the database is unreachable")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of normal operation before it")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of logging after it returns")
    parser.add_argument("--rate", type=int, default=2000, help="records per second to log")
    args = parser.parse_args()

    dsn = fresh_schema()
    proxy = PgProxy(dsn)
    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        proxy.dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-soak-spool-"),
    )
    logging.getLogger("otel_audit").setLevel(logging.CRITICAL)  # the outage warnings are expected
    logger = logging.Logger(f"soak.{uuid.uuid4().hex[:6]}", level=logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=provider))

    logged = [0]
    peak = [rss_mib()]
    stop = threading.Event()

    def producer() -> None:
        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        i = 0
        while not stop.is_set():
            logger.info("soak", extra={**AUDIT_EXTRA, "audit.resource.id": f"r-{i}"})
            logged[0] += 1
            i += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def sampler() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.5)

    start_rss = rss_mib()
    threads = [threading.Thread(target=producer), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    time.sleep(args.before)
    proxy.cut()
    outage_start = time.monotonic()
    time.sleep(args.outage)
    stats = audit.stats()
    rss_at_recovery = rss_mib()
    peak_during_outage = peak[0]
    backlog_bytes = stats["spool_bytes"]
    backlog_records = logged[0] - stats["committed"]
    target = audit.pipeline.spool.end
    proxy.restore()
    recovered = time.monotonic()
    caught_up = audit.pipeline.sink.wait_committed(target, timeout=600)
    drain_seconds = time.monotonic() - recovered
    time.sleep(args.after)
    stop.set()
    for t in threads:
        t.join()
    drained = audit.flush(timeout=600)
    audit.shutdown()
    with psycopg.connect(dsn) as conn:
        stored, distinct = conn.execute("SELECT count(*), count(DISTINCT seq) FROM audit_logs").fetchone()
    lost = logged[0] - stored
    drain_rate = backlog_records / max(drain_seconds, 1e-9)
    report(
        f"soak through a {args.outage:.0f}s outage at {args.rate} records/s, {where()}",
        [
            ("records logged", f"{logged[0]:,}"),
            ("records stored", f"{stored:,} ({distinct:,} distinct)"),
            ("records lost", f"{lost}  (must be 0)"),
            ("spool backlog at recovery", f"{backlog_bytes / 1e6:.1f} MB, {backlog_records:,} records"),
            (
                "RSS",
                f"start {start_rss:.0f} MiB, end of outage {rss_at_recovery:.0f} MiB (peak "
                f"{peak_during_outage:.0f}), peak while draining and after {peak[0]:.0f} MiB",
            ),
            (
                "backlog drained",
                f"{caught_up} in {drain_seconds:.1f}s: {drain_rate:,.0f} records/s while still "
                f"logging {args.rate:,}/s (ratio {drain_rate / args.rate:.1f}x the logging rate)",
            ),
            ("all committed at the end", f"{drained}"),
            ("outage measured", f"{recovered - outage_start:.1f}s"),
        ],
    )
    proxy.close()


if __name__ == "__main__":
    main()
