"""End to end: `otel-audit serve` as its own process, real OTel SDK OTLP/HTTP exporters in several others.

The senders speak the protocol the collector's ``otlp_http`` exporter speaks
(protobuf over HTTP, optionally gzip, bearer token), as plain OTel SDK
applications that know nothing of otel-audit; one more application runs the
otel-audit processor in-process with OTLP export on, so its records reach
PostgreSQL twice: through its own sink and, pre-sealed, through the ingest.
Every audit record must be stored exactly once, the trail must verify, and no
ordinary record may be stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psycopg
import pytest

from tests.harness import rows, verify

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "e2e-token-0123456789abcdef"
AUDIT_PER_SENDER = 400
PLAIN_PER_SENDER = 300

SDK_SENDER = textwrap.dedent(
    """
    import logging, sys, threading
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    url, token, name, n_audit, n_plain, gzip = sys.argv[1:7]
    exporter = OTLPLogExporter(endpoint=url, headers={"Authorization": f"Bearer {token}"},
                               compression=Compression.Gzip if gzip == "1" else Compression.NoCompression)
    provider = LoggerProvider(resource=Resource.create({"service.name": name}))
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_queue_size=100_000, max_export_batch_size=512, schedule_delay_millis=50))
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(LoggingHandler(logger_provider=provider))

    def work(part, count_audit, count_plain):
        for i in range(max(count_audit, count_plain)):
            if i < count_audit:
                log.info("record viewed", extra={"audit.action": "read", "audit.actor.id": f"user-{i % 7}",
                    "audit.resource.type": "document", "audit.resource.id": str(i), "audit.result": "success",
                    "test.id": f"{name}-{part}-{i}"})
            if i < count_plain:
                log.info("cache refreshed", extra={"test.id": f"plain-{name}-{part}-{i}"})

    threads = [threading.Thread(target=work, args=(p, int(n_audit) // 2, int(n_plain) // 2)) for p in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ok = provider.force_flush(60_000)
    provider.shutdown()
    sys.exit(0 if ok else 3)
    """
)

OTEL_AUDIT_SENDER = textwrap.dedent(
    """
    import logging, sys
    import otel_audit
    dsn, spool, name, n_audit, n_plain = sys.argv[1:6]
    audit = otel_audit.configure(dsn=dsn, service_name=name, spool_dir=spool, otlp=True, metrics=False)
    log = logging.getLogger(name)
    for i in range(int(n_audit)):
        log.info("record changed", extra={"audit.action": "update", "audit.actor.id": "admin-1",
            "audit.actor.type": "admin", "audit.resource.type": "document", "audit.resource.id": str(i),
            "audit.result": "success", "test.id": f"{name}-{i}"})
        if i < int(n_plain):
            log.info("plain", extra={"test.id": f"plain-{name}-{i}"})
    committed = audit.shutdown(timeout=60)  # flushes its own sink, then the OTLP exporter
    sys.exit(0 if committed else 3)
    """
)


def _start_serve(dsn: str, spool: Path) -> tuple[subprocess.Popen, str, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_AUDIT_INGEST_TOKENS": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_audit",
            "serve",
            "--dsn",
            dsn,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--spool-dir",
            str(spool),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stderr.readline()  # type: ignore[union-attr]
    if "listening on " not in first:
        proc.kill()
        raise AssertionError(f"otel-audit serve did not start: {first}{proc.stderr.read()}")  # type: ignore[union-attr]
    lines: list[str] = [first]
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    return proc, first.split("listening on ", 1)[1].split(" ", 1)[0], lines


def test_many_senders_through_serve_every_audit_record_once(db: str, tmp_path: Path) -> None:
    serve, url, serve_log = _start_serve(db, tmp_path / "ingest-spool")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        senders = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SDK_SENDER,
                    url,
                    TOKEN,
                    f"svc{k}",
                    str(AUDIT_PER_SENDER),
                    str(PLAIN_PER_SENDER),
                    "1" if k % 2 else "0",
                ],
                env=env,
            )
            for k in range(3)
        ]
        py_env = {
            **env,
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": url,
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS": f"Authorization=Bearer%20{TOKEN}",
        }
        senders.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    OTEL_AUDIT_SENDER,
                    db,
                    str(tmp_path / "app-spool"),
                    "pyapp",
                    str(AUDIT_PER_SENDER),
                    str(PLAIN_PER_SENDER),
                ],
                env=py_env,
            )
        )
        assert [p.wait(timeout=300) for p in senders] == [0, 0, 0, 0]
        stats = _stats(url)
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=60)
    assert code == 0, "".join(serve_log)
    # The otel-audit app's records really went through serve (pre-sealed), not only through its own sink.
    assert stats["ingest"]["relayed"] == AUDIT_PER_SENDER
    assert stats["ingest"]["sealed"] == 3 * AUDIT_PER_SENDER
    assert stats["ingest"]["rejected"] == stats["ingest"]["link_breaks"] == 0

    expected = {f"svc{k}-{part}-{i}" for k in range(3) for part in range(2) for i in range(AUDIT_PER_SENDER // 2)}
    expected |= {f"pyapp-{i}" for i in range(AUDIT_PER_SENDER)}
    stored = rows(db, "SELECT attributes->>'test.id', count(*) FROM audit_logs WHERE attributes ? 'test.id' GROUP BY 1")
    assert {test_id for test_id, _ in stored} == expected
    assert all(n == 1 for _, n in stored), [s for s in stored if s[1] != 1][:5]
    assert rows(db, "SELECT count(*) FROM audit_logs WHERE attributes->>'test.id' LIKE 'plain-%'") == [(0,)]

    # The SDK senders' records are in the ingest's chain; the otel-audit app's under its own chain only.
    # The ingest's chain also holds its attestation that it accepted the app's record 1 (chain_accepted).
    chains = dict(
        rows(
            db,
            "SELECT c.emitter->>'kind', count(l.*) FROM audit_chains c "
            "LEFT JOIN audit_logs l USING (chain_id) GROUP BY 1",
        )
    )
    assert chains == {"ingest": 3 * AUDIT_PER_SENDER + 1, "sdk": AUDIT_PER_SENDER}
    assert rows(db, "SELECT count(*) FROM audit_logs WHERE action = 'otel_audit.chain_accepted'") == [(1,)]
    by_service = dict(
        rows(db, "SELECT service_name, count(*) FROM audit_logs WHERE action <> 'otel_audit.chain_accepted' GROUP BY 1")
    )
    assert by_service == {
        "svc0": AUDIT_PER_SENDER,
        "svc1": AUDIT_PER_SENDER,
        "svc2": AUDIT_PER_SENDER,
        "pyapp": AUDIT_PER_SENDER,
    }
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.records == 4 * AUDIT_PER_SENDER + 1
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_quarantine").fetchone() == (0,)


def _stats(url: str) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(url.replace("/v1/logs", "/stats"), headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())
