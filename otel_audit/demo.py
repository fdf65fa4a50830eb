"""``otel-audit demo``: a small, realistic instrumented workload, end to end.

A patient portal handles requests on several threads, inside OpenTelemetry
spans, with the session in baggage. Clinicians read and update records, an
admin exports, a billing service syncs, and one account keeps getting denied.
Everything goes through plain ``logging`` calls; the records are sealed,
spooled, written to PostgreSQL and then verified.
"""

from __future__ import annotations

import logging
import random
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

import otel_audit
from otel_audit.sink.schema import migrate
from otel_audit.verify import VerificationReport, verify_database

__all__ = ["DemoResult", "run_demo"]

_USERS = [
    ("dr-alice", "user", "10.20.1.11"),
    ("nurse-bob", "user", "10.20.1.12"),
    ("admin-carol", "admin", "10.20.9.2"),
    ("billing-sync", "service", "10.30.0.5"),
]
_MALLORY = ("mallory", "user", "203.0.113.66")


@dataclass
class DemoResult:
    dsn: str
    records: int
    report: VerificationReport
    sample_trace_id: str | None
    embedded_data_dir: Path | None


def run_demo(
    dsn: str | None = None,
    *,
    data_dir: Path | None = None,
    threads: int = 4,
    requests_per_thread: int = 250,
    say: Callable[[str], None] = print,
) -> DemoResult:
    embedded_dir = None
    if dsn is None:
        from otel_audit.embedded import EmbeddedPostgres

        say("starting an embedded PostgreSQL (pgserver) ...")
        pg = EmbeddedPostgres(data_dir, keep_running=True)
        embedded_dir = pg.data_dir
        dsn = pg.create_database("otel_audit_demo")
        say(f"  data directory {pg.data_dir}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        applied = migrate(conn)
    say(f"schema ready ({'created' if applied else 'already up to date'})")

    from opentelemetry import baggage, context, trace
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("patient-portal")

    spool_dir = (embedded_dir.parent / "demo-spool") if embedded_dir else Path(tempfile.mkdtemp(prefix="otel-audit-"))
    audit = otel_audit.configure(dsn=dsn, service_name="patient-portal", spool_dir=spool_dir, otlp=False)
    log = logging.getLogger("portal.audit")
    app_log = logging.getLogger("portal")
    say(f"logging a workload on {threads} threads (chain {audit.chain_id}) ...")

    traces: list[str] = []
    counter = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        rnd = random.Random(index)
        for i in range(requests_per_thread):
            actor, actor_type, ip = _USERS[(index + i) % len(_USERS)]
            if rnd.random() < 0.04:
                actor, actor_type, ip = _MALLORY
            patient = f"patient-{rnd.randrange(1, 60):04d}"
            session = f"sess-{index}-{i // 20}"
            token = context.attach(baggage.set_baggage("session.id", session))
            try:
                with tracer.start_as_current_span("GET /patients/{id}") as span:
                    if i == 0 and index == 0:
                        traces.append(format(span.get_span_context().trace_id, "032x"))
                    n = _one_request(log, app_log, rnd, actor, actor_type, ip, patient)
            finally:
                context.detach(token)
            with lock:
                counter[0] += n

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    started = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    # A burst of denied attempts, as a brute-force would look.
    for _ in range(8):
        with tracer.start_as_current_span("POST /login"):
            log.warning(
                "login denied",
                extra={
                    "audit.action": "login",
                    "audit.actor.id": _MALLORY[0],
                    "audit.resource.type": "user_account",
                    "audit.resource.id": _MALLORY[0],
                    "audit.result": "denied",
                    "audit.reason": "invalid second factor",
                    "client.address": _MALLORY[2],
                    "user_agent.original": "curl/8.5.0",
                },
            )
            counter[0] += 1
    elapsed = time.monotonic() - started
    committed = audit.shutdown(timeout=60)
    if not committed:
        say("warning: not every record was committed within 60s; they remain in the spool " + str(spool_dir))
    elif embedded_dir is None:
        shutil.rmtree(spool_dir, ignore_errors=True)  # a temporary spool whose every record is committed
    say(f"  {counter[0]} audit records logged in {elapsed:.2f}s and committed to PostgreSQL")

    with psycopg.connect(dsn) as conn:
        report = verify_database(conn)
    return DemoResult(dsn, counter[0], report, traces[0] if traces else None, embedded_dir)


def _one_request(
    log: logging.Logger,
    app_log: logging.Logger,
    rnd: random.Random,
    actor: str,
    actor_type: str,
    ip: str,
    patient: str,
) -> int:
    base = {
        "audit.actor.id": actor,
        "audit.actor.type": actor_type,
        "client.address": ip,
        "user_agent.original": "PortalWeb/4.2 (Firefox 133)",
    }
    app_log.debug("handling request for %s", patient)  # an ordinary log line: not audited
    if actor == _MALLORY[0]:
        log.warning(
            "access to patient record denied",
            extra={
                **base,
                "audit.action": "read",
                "audit.resource.type": "patient_record",
                "audit.resource.id": patient,
                "audit.result": "denied",
                "audit.reason": "no treatment relationship",
            },
        )
        return 1
    roll = rnd.random()
    if actor_type == "service":
        log.info(
            "invoice synced",
            extra={
                **base,
                "audit.action": "write",
                "audit.resource.type": "invoice",
                "audit.resource.id": f"inv-{rnd.randrange(10_000, 99_999)}",
                "audit.result": "success",
                "billing.amount": round(rnd.uniform(20, 900), 2),
                "billing.currency": "EUR",
            },
        )
        return 1
    if actor_type == "admin" and roll < 0.3:
        log.info(
            "patient records exported",
            extra={
                **base,
                "audit.action": "export",
                "audit.resource.type": "patient_record",
                "audit.resource.id": patient,
                "audit.result": "success",
                "audit.reason": "quarterly quality report",
                "export.format": "csv",
            },
        )
        return 1
    if roll < 0.2:
        log.info(
            "patient record updated",
            extra={
                **base,
                "audit.action": "update",
                "audit.resource.type": "patient_record",
                "audit.resource.id": patient,
                "audit.result": "success",
                "audit.reason": "medication adjusted after consultation",
                "audit.changed_fields": ["medication", "dosage"],
                "audit.old_values": {"medication": "amoxicillin", "dosage": "250mg"},
            },
        )
        return 1
    result = "success" if roll > 0.03 else "failure"
    log.info(
        "patient record viewed",
        extra={
            **base,
            "audit.action": "read",
            "audit.resource.type": "patient_record",
            "audit.resource.id": patient,
            "audit.result": result,
            "audit.reason": "treatment" if result == "success" else "record locked by another session",
        },
    )
    return 1


def next_steps(result: DemoResult) -> list[str]:
    dsn = shlex.quote(result.dsn)
    lines = [
        f"otel-audit verify --dsn {dsn}",
        f"otel-audit query actor dr-alice --dsn {dsn}",
        f"otel-audit query resource patient_record patient-0007 --dsn {dsn}",
        f"otel-audit query failures --dsn {dsn}",
    ]
    if result.sample_trace_id:
        lines.append(f"otel-audit query trace {result.sample_trace_id} --dsn {dsn}")
    lines.append(f"otel-audit status --dsn {dsn}")
    return lines
