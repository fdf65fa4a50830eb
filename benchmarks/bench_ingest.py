"""Sustained OTLP ingest throughput: 512-record OTLP/HTTP requests to committed rows, and latency.

``otel-audit serve`` runs as its own process, as deployed; client processes
send pre-built protobuf requests of 512 audit records each over keep-alive
connections, several at once, and time every request. A 200 means the
request's records are committed to PostgreSQL, so records/s counted from the
answers is records/s to committed rows (checked against the table at the end).

Baselines measured in the same run, on the same database:

* raw COPY: the same kind of sealed records written with the sink's own
  staging COPY and projection, in one process, no HTTP and no sealing: the
  database's ceiling for these rows;
* in-process: the same audit records logged through ``logging`` and the
  otel-audit processor (4 threads) until committed.

And the cost the ingest adds to the in-process logging call: exporting the
canonical bytes with the seal (``audit.record.canonical``), timed as the seal
annotation with and without it, next to the whole logging call.

Database: ``OTEL_AUDIT_BENCH_DSN`` (a server you choose), else an embedded
PostgreSQL 16 (pgserver) in a temporary directory. Prints, never asserts.

    python benchmarks/bench_ingest.py [--seconds 20] [--connections 8] [--client-procs 2]
"""

from __future__ import annotations

import argparse
import http.client
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


TOKEN = "bench-token-0123456789abcdef"
RECORDS_PER_REQUEST = 512

# ---------------------------------------------------------------------- database
# A fresh schema on OTEL_AUDIT_BENCH_DSN or an embedded PostgreSQL, and the audit
# attributes every benchmark logs: shared with the other benchmarks.
from benchmarks.common import AUDIT_EXTRA as AUDIT  # noqa: E402
from benchmarks.common import fresh_schema  # noqa: E402


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_logs").fetchone()[0])  # type: ignore[index]


# ---------------------------------------------------------------------- requests
def build_bodies(n_bodies: int, seed: int) -> list[bytes]:
    """``n_bodies`` distinct protobuf requests of 512 audit records (distinct timestamps and ids)."""
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes, _encode_value
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    resource = Resource(
        attributes=_encode_attributes(
            {"service.name": f"billing-{seed}", "service.instance.id": str(uuid.uuid4()), "host.name": "node-7"}
        )
    )
    records = []
    for i in range(RECORDS_PER_REQUEST):
        attrs = {**AUDIT, "audit.resource.id": f"patient-{i}", "http.route": "/patients/{id}", "ward": "B3"}
        records.append(
            LogRecord(
                severity_number=9,
                severity_text="INFO",
                body=_encode_value("patient record viewed"),
                attributes=_encode_attributes(attrs),
                trace_id=os.urandom(16),
                span_id=os.urandom(8),
                flags=1,
            )
        )
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource,
                scope_logs=[ScopeLogs(scope=InstrumentationScope(name="billing.api"), log_records=records)],
            )
        ]
    )
    log_records = request.resource_logs[0].scope_logs[0].log_records
    bodies = []
    base = time.time_ns()
    for b in range(n_bodies):
        for i, lr in enumerate(log_records):
            lr.time_unix_nano = lr.observed_time_unix_nano = base + (b * RECORDS_PER_REQUEST + i) * 1000 + seed
        bodies.append(request.SerializeToString())
    return bodies


def client_process(port: int, connections: int, seconds: float, seed: int, queue) -> None:
    """Send pre-built requests on ``connections`` keep-alive connections for ``seconds``."""
    bodies = build_bodies(64, seed)
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"}
    results: list[tuple[int, float, int]] = []  # (status, seconds, records)
    start_at = queue.get()  # all clients start together
    lock = threading.Lock()

    def run(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = index
        while time.time() < start_at:
            time.sleep(0.001)
        deadline = start_at + seconds
        while time.time() < deadline:
            body = bodies[n % len(bodies)]
            n += connections
            t0 = time.perf_counter()
            conn.request("POST", "/v1/logs", body=body, headers=headers)
            reply = conn.getresponse()
            reply.read()
            elapsed = time.perf_counter() - t0
            with lock:
                results.append((reply.status, elapsed, RECORDS_PER_REQUEST))
            if reply.status != 200:
                time.sleep(float(reply.getheader("Retry-After") or 1))
        conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    queue.put(results)


def start_serve(dsn: str, spool: Path) -> tuple[subprocess.Popen, int]:
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
    line = proc.stderr.readline()  # type: ignore[union-attr]
    if "listening on" not in line:
        raise SystemExit(f"otel-audit serve did not start: {line}{proc.stderr.read()}")  # type: ignore[union-attr]
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc, int(line.split("listening on http://127.0.0.1:", 1)[1].split("/", 1)[0])


def bench_ingest(seconds: float, connections: int, client_procs: int) -> dict:
    dsn = fresh_schema()
    spool = Path(tempfile.mkdtemp(prefix="otel-audit-bench-spool-"))
    serve, port = start_serve(dsn, spool)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    per_proc = max(1, connections // client_procs)
    procs = [ctx.Process(target=client_process, args=(port, per_proc, seconds, k, queue)) for k in range(client_procs)]
    try:
        [p.start() for p in procs]
        time.sleep(3.0 + 0.5 * client_procs)  # let the clients build their requests
        start_at = time.time() + 0.5
        for _ in procs:
            queue.put(start_at)
        results = []
        for _ in procs:
            results.extend(queue.get(timeout=seconds + 300))
        [p.join() for p in procs]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        shutil.rmtree(spool, ignore_errors=True)
    ok = [r for r in results if r[0] == 200]
    latencies = sorted(r[1] for r in ok)
    committed = sum(r[2] for r in ok)
    elapsed = seconds
    return {
        "requests": len(results),
        "ok": len(ok),
        "refused": len(results) - len(ok),
        "records": committed,
        "rows": count_rows(dsn),
        "rate": committed / elapsed,
        "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
    }


# ---------------------------------------------------------------------- baselines
def bench_raw_copy(n: int) -> float:
    """Sealed rows written with the sink's staging COPY + projection, batches of 10k: the DB ceiling."""
    from otel_audit.core.chain import Chain
    from otel_audit.core.record import RecordBuilder
    from otel_audit.sink.rows import CREATE_STAGE, PROJECT_STAGE, STAGE_TABLE

    class _Null:
        def append(self, kind: int, payload: bytes, digest: bytes) -> int:
            return 0

    chain = Chain(_Null(), emitter={"kind": "bench"})
    builder = RecordBuilder()
    base = time.time_ns()
    sealed = [
        chain.seal(
            builder.build(
                {**AUDIT, "audit.resource.id": f"patient-{i}", "http.route": "/patients/{id}", "ward": "B3"},
                time_unix_nano=base + i,
                body="patient record viewed",
                severity_text="INFO",
                severity_number=9,
                scope="billing.api",
                trace_id=int.from_bytes(os.urandom(16), "big"),
                span_id=1,
                trace_flags=1,
                service_name="billing",
                service_instance_id="i-1",
                host_name="node-7",
            )
        )
        for i in range(n)
    ]
    dsn = fresh_schema()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_STAGE)
        t0 = time.perf_counter()
        for lo in range(0, n, 10_000):
            with conn.transaction():
                cur = conn.cursor()
                with cur.copy(f"COPY {STAGE_TABLE} (ord, hash, canonical) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "text", "bytea"])
                    for k, s in enumerate(sealed[lo : lo + 10_000]):
                        copy.write_row((k, s.hash, s.canonical))
                cur.execute(PROJECT_STAGE)
        return n / (time.perf_counter() - t0)


def _billing_app() -> tuple[Any, logging.Logger, Path]:
    """An SDK-instrumented service ("billing") on a fresh schema: (audit handle, logger, spool dir)."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource

    import otel_audit

    dsn = fresh_schema()
    spool = Path(tempfile.mkdtemp(prefix="otel-audit-bench-spool-"))
    provider = LoggerProvider(resource=Resource.create({"service.name": "billing"}), shutdown_on_exit=False)
    audit = otel_audit.configure(dsn, logger_provider=provider, install_handler=False, spool_dir=spool, metrics=False)
    log = logging.Logger("billing.api", level=logging.INFO)
    log.addHandler(LoggingHandler(logger_provider=provider))
    return audit, log, spool


def bench_in_process(n: int, threads: int = 4) -> float:
    audit, log, spool = _billing_app()
    extra = {**AUDIT, "http.route": "/patients/{id}", "ward": "B3"}

    def work() -> None:
        for _ in range(n // threads):
            log.info("patient record viewed", extra=extra)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    [t.start() for t in workers]
    [t.join() for t in workers]
    audit.flush(timeout=300)
    rate = (n // threads * threads) / (time.perf_counter() - t0)
    audit.shutdown()
    shutil.rmtree(spool, ignore_errors=True)
    return rate


def bench_canonical_export_cost(calls: int, rounds: int) -> tuple[float, float, float]:
    """What exporting audit.record.canonical adds to a logging call.

    Returns (µs per logging call through the processor, µs per seal annotation
    with the canonical bytes, µs without them), medians of alternating rounds.
    The annotation is timed on its own because a sub-microsecond difference is
    lost in the noise of whole logging calls on a shared machine.
    """
    from opentelemetry.attributes import BoundedAttributes

    from otel_audit import processor as processor_module
    from otel_audit.core import attributes as A

    audit, log, spool = _billing_app()
    sealed = []
    original = processor_module._annotate

    def capture(attributes, record, genesis=None):
        sealed.append(record)
        original(attributes, record, genesis)

    processor_module._annotate = capture
    log.info("patient record viewed", extra=AUDIT)
    processor_module._annotate = original
    record = sealed[0]

    def without_canonical(attributes, sealed, genesis=None):  # the previous behaviour
        attributes._dict.update(
            {
                A.RECORD_ID: sealed.record_id,
                A.CHAIN_ID: sealed.chain_id,
                A.SEQUENCE_NUMBER: sealed.seq,
                A.SEQUENCE_PREV_HASH: sealed.prev_hash,
                A.INTEGRITY_ALGORITHM: "sha256",
                A.INTEGRITY_VALUE: sealed.hash,
            }
        )

    timings: dict[str, list[float]] = {"call": [], "with": [], "without": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            log.info("patient record viewed", extra=AUDIT)
        timings["call"].append((time.perf_counter() - t0) / calls * 1e6)
        audit.flush(timeout=120)
        for name, fn in (("with", original), ("without", without_canonical)):
            targets = [BoundedAttributes(attributes=AUDIT, immutable=False) for _ in range(calls)]
            t0 = time.perf_counter()
            for attributes in targets:
                fn(attributes, record, None)
            timings[name].append((time.perf_counter() - t0) / calls * 1e6)
    audit.shutdown()
    shutil.rmtree(spool, ignore_errors=True)
    return tuple(statistics.median(timings[k]) for k in ("call", "with", "without"))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed sending phase")
    parser.add_argument("--connections", type=int, default=8, help="concurrent client connections in total")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes")
    parser.add_argument("--baseline-records", type=int, default=100_000)
    args = parser.parse_args()
    where = "server from OTEL_AUDIT_BENCH_DSN" if os.environ.get("OTEL_AUDIT_BENCH_DSN") else "embedded PostgreSQL 16"
    print(f"database: {where}; {os.cpu_count()} CPUs; serve, clients and PostgreSQL share them")

    ingest = bench_ingest(args.seconds, args.connections, args.client_procs)
    raw = bench_raw_copy(args.baseline_records)
    in_process = bench_in_process(args.baseline_records)
    call, with_c, without_c = bench_canonical_export_cost(20_000, 5)

    def line(key: str, value: str) -> None:
        print(f"  {key:<38} {value}")

    print(
        f"\n== OTLP/HTTP ingest: {RECORDS_PER_REQUEST}-record protobuf requests, {args.connections} connections, "
        f"{args.seconds:g} s"
    )
    line("requests answered 200 / refused", f"{ingest['ok']} / {ingest['refused']}")
    line("records committed (from answers)", f"{ingest['records']:,} (rows in table: {ingest['rows']:,})")
    line("throughput to committed rows", f"{ingest['rate']:,.0f} records/s   (target >= 20,000)")
    line(
        "request latency p50 / p99 / max",
        f"{ingest['p50'] * 1000:.1f} / {ingest['p99'] * 1000:.1f} / {ingest['max'] * 1000:.1f} ms",
    )
    print("\n== baselines (same run, same database)")
    line("raw COPY + projection (DB ceiling)", f"{raw:,.0f} rows/s   ingest = {ingest['rate'] / raw:.2f}x")
    line(
        "in-process processor, 4 threads", f"{in_process:,.0f} records/s   ingest = {ingest['rate'] / in_process:.2f}x"
    )
    print("\n== processor: exporting audit.record.canonical with the seal (what the ingest needs)")
    line("seal annotation with / without it", f"{with_c:.2f} / {without_c:.2f} µs   (+{with_c - without_c:.2f} µs)")
    line(
        "logging call through the processor",
        f"{call:.2f} µs   (the canonical bytes add {(with_c - without_c) / call * 100:.1f}%)",
    )


if __name__ == "__main__":
    main()
