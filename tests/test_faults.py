"""Fault tests against real PostgreSQL: outages, restarts, SIGKILL, a full spool.

After each one, every record whose logging call returned is in PostgreSQL
exactly once and the trail verifies.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_audit.errors import SpoolFull
from otel_audit.sink.schema import migrate
from tests.harness import App, rows, verify
from tests.pgproxy import PgProxy

pytestmark = [pytest.mark.storage, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


@pytest.fixture
def proxy(db: str) -> Iterator[PgProxy]:
    p = PgProxy(db)
    yield p
    p.close()


def sustained_load(app: App, seconds: float, threads: int = 4) -> tuple[int, list[BaseException]]:
    """Log from several threads for ``seconds``; returns how many calls returned normally."""
    counts = [0] * threads
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def work(k: int) -> None:
        i = 0
        while time.monotonic() < stop:
            try:
                app.log(**{"audit.resource.id": f"r-{k}-{i}"})
                counts[k] += 1
            except BaseException as exc:
                errors.append(exc)
                return
            i += 1
            if i % 50 == 0:
                time.sleep(0.001)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts), errors


def assert_exactly_once(dsn: str, expected: int) -> None:
    assert rows(
        dsn, "SELECT count(*), count(DISTINCT (chain_id, seq)), count(DISTINCT resource_id) FROM audit_logs"
    ) == [(expected, expected, expected)]
    report = verify(dsn)
    assert report.ok and not report.errors, [str(f) for f in report.findings]


def test_network_outage_during_sustained_load(proxy: PgProxy, db: str, spool_dir: Path) -> None:
    app = App(proxy.dsn, spool_dir)
    outage = threading.Timer(1.0, proxy.cut)
    recovery = threading.Timer(3.0, proxy.restore)
    outage.start()
    recovery.start()
    logged, errors = sustained_load(app, 4.0)
    assert not errors
    assert app.audit.stats()["database_up"] in (False, True)
    assert app.audit.flush(timeout=90), app.audit.stats()
    assert app.close()
    assert_exactly_once(db, logged)


@pytest.fixture(scope="module")
def private_pg() -> Iterator:
    """A server of our own, so stopping it does not disturb other tests."""
    from otel_audit.embedded import EmbeddedPostgres

    data = Path(tempfile.mkdtemp(prefix="otel-audit-fault-pg-"))
    os.chmod(data, 0o755)
    server = EmbeddedPostgres(data / "data")
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)  # its data directory: a few dozen megabytes per run otherwise


def test_server_stopped_and_restarted_during_sustained_load(private_pg, tmp_path: Path) -> None:
    dsn = private_pg.create_database("faults")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
        migrate(conn)
    app = App(dsn, tmp_path / "spool")
    stopper = threading.Timer(1.0, private_pg.stop)
    starter = threading.Timer(3.0, private_pg.start)
    stopper.start()
    starter.start()
    logged, errors = sustained_load(app, 4.5)
    starter.join()
    assert not errors
    assert app.audit.flush(timeout=90), app.audit.stats()
    assert app.close()
    assert_exactly_once(dsn, logged)


def test_sigkill_while_the_database_is_down_then_replay(proxy: PgProxy, db: str, tmp_path: Path) -> None:
    proxy.cut()
    spool = tmp_path / "spool"
    script = textwrap.dedent(
        """
        import logging, os, signal, sys
        import otel_audit
        otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2])
        log = logging.getLogger("app")
        n = int(sys.argv[3])
        for i in range(n):
            log.info("r", extra={"audit.action": "read", "audit.actor.id": "u", "audit.resource.type": "t",
                                 "audit.resource.id": str(i), "audit.result": "success"})
        print(n, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, proxy.dsn, str(spool), "5000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL and proc.stdout.strip() == "5000"
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(0,)]

    proxy.restore()
    app = App(proxy.dsn, spool)  # a restarted process on the same spool replays the dead one's records
    deadline = time.monotonic() + 90
    while rows(db, "SELECT count(*) FROM audit_logs")[0][0] < 5000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert app.close()
    assert_exactly_once(db, 5000)
    assert app.audit.stats()["replayed"] == 5000


def test_full_spool_blocks_then_fails_the_call_and_loses_nothing(proxy: PgProxy, db: str, spool_dir: Path) -> None:
    proxy.cut()
    app = App(proxy.dsn, spool_dir, spool_max_bytes=2 * MiB, spool_segment_bytes=MiB, block_timeout=0.5)
    accepted = 0
    started = time.monotonic()
    with pytest.raises(SpoolFull, match="full"):
        while time.monotonic() - started < 60:
            app.log(**{"audit.resource.id": f"r-{accepted}", "pad": "x" * 500})
            accepted += 1
    assert accepted > 1000
    proxy.restore()
    assert app.audit.flush(timeout=60)
    app.log(**{"audit.resource.id": "after"})  # space is back: logging works again
    assert app.close()
    assert_exactly_once(db, accepted + 1)


def test_drop_policy_counts_logs_and_marks_the_chain(proxy: PgProxy, db: str, spool_dir: Path) -> None:
    proxy.cut()
    app = App(proxy.dsn, spool_dir, spool_max_bytes=2 * MiB, spool_segment_bytes=MiB, when_full="drop")
    calls = 4000
    for i in range(calls):
        app.log(**{"audit.resource.id": f"r-{i}", "pad": "x" * 500})  # never raises
    stats = app.audit.stats()
    assert stats["dropped"] > 0 and stats["accepted"] + stats["dropped"] == calls
    proxy.restore()
    assert app.audit.flush(timeout=60)
    app.log(**{"audit.resource.id": "after"})  # first record after space returns: the marker follows it
    assert app.close()
    ((count, reason),) = rows(
        db,
        "SELECT (attributes->>'otel_audit.dropped.count')::int, reason FROM audit_logs "
        "WHERE action = 'otel_audit.records_dropped'",
    )
    assert count == stats["dropped"] and "when_full=drop" in reason
    report = verify(db)
    assert report.ok and not report.errors


def test_pipeline_metrics_are_exported(db: str, spool_dir: Path) -> None:
    reader = InMemoryMetricReader()
    app = App(db, spool_dir, metrics=True, meter_provider=MeterProvider(metric_readers=[reader]))
    for _ in range(25):
        app.log()
    assert app.audit.flush(10)
    values = {
        metric.name: sum(p.value for p in metric.data.data_points)
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    app.close()
    assert values["otel_audit.records.accepted"] == 25
    assert values["otel_audit.records.committed"] == 25
    assert values["otel_audit.records.dropped"] == 0
    assert "otel_audit.spool.bytes" in values
