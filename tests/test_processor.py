"""The OTel side end to end against real PostgreSQL: recognize, enrich, seal, annotate, store."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider

from otel_audit.core.record import record_hash
from otel_audit.errors import AuditNotCommitted, AuditRecordInvalid
from tests.harness import VALID, App, rows, verify

pytestmark = pytest.mark.storage


def test_audit_record_is_sealed_stored_and_exported_with_its_seal(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    tracer = TracerProvider().get_tracer("t")
    token = context.attach(baggage.set_baggage("session.id", "sess-9"))
    try:
        with tracer.start_as_current_span("GET /patients/{id}") as span:
            app.log(**{"audit.reason": "treatment", "ward": "B3"})
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        context.detach(token)
    app.logger.info("not an audit record", extra={"ward": "B3"})
    assert app.close()

    exported = app.exporter.get_finished_logs()
    assert len(exported) == 2
    sealed = exported[0].log_record.attributes
    plain = exported[1].log_record.attributes
    assert "audit.record.id" not in plain and dict(plain) == {"ward": "B3"}

    (row,) = rows(
        db,
        "SELECT id::text, chain_id::text, seq, prev_hash, hash, canonical, trace_id, session_id, "
        "service_name, host_name, reason, attributes FROM audit_logs",
    )
    record_id, chain_id, seq, prev_hash, hash_, canonical, db_trace, session, service, host, reason, attrs = row
    assert sealed["audit.record.id"] == record_id
    assert sealed["audit.chain.id"] == chain_id
    assert sealed["audit.sequence.number"] == seq == 1
    assert sealed["audit.sequence.prev_hash"] == prev_hash
    assert sealed["audit.integrity.algorithm"] == "sha256"
    assert sealed["audit.integrity.value"] == hash_ == record_hash(bytes(canonical))
    assert db_trace == trace_id
    assert session == "sess-9"  # from baggage
    assert service == "billing" and host
    # The resource's other attributes (here the SDK's telemetry.sdk.*) are kept under a prefix.
    assert reason == "treatment" and {k: v for k, v in attrs.items() if not k.startswith("resource.")} == {"ward": "B3"}
    assert attrs["resource.telemetry.sdk.language"] == "python"
    assert verify(db).ok


def test_non_audit_records_pass_through_untouched(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    for i in range(50):
        app.logger.info("plain %d", i, extra={"k": i})
    assert app.close()
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(0,)]
    assert all("audit.chain.id" not in r.log_record.attributes for r in app.exporter.get_finished_logs())


def test_invalid_records_are_stored_flagged_and_counted(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.logger.info("bad", extra={"audit.action": "read", "audit.result": "maybe"})
    stats = app.audit.stats()
    assert app.close()
    (problems,) = rows(db, "SELECT problems FROM audit_logs")[0]
    assert any("audit.result 'maybe'" in p for p in problems)
    assert stats["invalid"] == 1
    report = verify(db)
    assert report.ok and [f.kind.value for f in report.findings] == ["invalid_records"]


def test_strict_mode_raises_at_the_call_site_and_stores_nothing(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir, strict=True)
    with pytest.raises(AuditRecordInvalid, match="audit.resource.type"):
        app.logger.info("bad", extra={"audit.action": "read", "audit.actor.id": "u", "audit.result": "success"})
    app.log()
    assert app.close()
    assert rows(db, "SELECT seq FROM audit_logs") == [(1,)]


def test_designated_loggers_and_event_names_are_audit_records(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir, audit_loggers=[], event_prefix="audit.")
    attrs = {k: v for k, v in VALID.items() if k != "audit.action"}
    app.logger.info("signed in", extra={**attrs, "otel.event.name": "audit.login"})
    app.logger.info("other event", extra={**attrs, "otel.event.name": "app.started"})
    assert app.close()
    assert rows(db, "SELECT action, event_name FROM audit_logs") == [("login", "audit.login")]


def test_designated_audit_logger(db: str, spool_dir: Path) -> None:
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    app = App(db, spool_dir, audit_loggers=["audit"])
    audit_logger = logging.Logger("audit.payments", level=logging.INFO)
    audit_logger.addHandler(LoggingHandler(logger_provider=app.provider))
    audit_logger.info("refund issued", extra={k: v for k, v in VALID.items() if k != "audit.action"})
    assert app.close()
    ((action, problems, scope),) = rows(db, "SELECT action, problems, scope FROM audit_logs")
    assert action is None and problems == ["missing audit.action"] and scope == "audit.payments"


def test_flush_returns_only_when_everything_is_committed(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    for _ in range(2000):
        app.log()
    assert app.audit.flush(timeout=30)
    assert rows(db, "SELECT count(*), max(seq) FROM audit_logs") == [(2000, 2000)]
    assert app.close()


def test_fail_closed_waits_for_the_commit(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    with app.audit.fail_closed(timeout=10) as sealed:
        app.log(**{"audit.action": "transfer"})
    # Committed before the block returned: visible from another connection now.
    assert rows(db, "SELECT id::text FROM audit_logs WHERE action = 'transfer'") == [(sealed[0].record_id,)]
    with pytest.raises(AuditNotCommitted, match="expected 1 audit record"):
        with app.audit.fail_closed(timeout=1):
            app.logger.debug("filtered: the level drops it")  # not an audit record at all
    assert app.close()


def test_fail_closed_raises_when_the_database_is_unreachable(spool_dir: Path) -> None:
    app = App("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", spool_dir)
    started = time.monotonic()
    with pytest.raises(AuditNotCommitted, match="not committed"):
        with app.audit.fail_closed(timeout=1):
            app.log()
    assert time.monotonic() - started < 10
    assert not app.audit.shutdown(timeout=1)  # records stay in the spool


def test_attribute_values_of_every_otel_type_survive(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.log(
        f=0.1,
        i=7,
        b=True,
        s="é\u2028",
        raw=b"\x01\x02",
        seq=[1, 2.5, "x"],
        m={"nested": {"deep": [None, False]}},
        big=2**62,
    )
    assert app.close()
    ((attrs, canonical, problems),) = rows(db, "SELECT attributes, canonical, problems FROM audit_logs")
    doc = orjson.loads(bytes(canonical))
    assert attrs == doc["attributes"]
    assert attrs["f"] == 0.1 and attrs["raw"] == "AQI=" and attrs["big"] == str(2**62)
    assert len(problems) == 2
    assert verify(db).ok


def test_an_internal_error_still_stores_the_event_as_text(db: str, spool_dir: Path, monkeypatch) -> None:
    app = App(db, spool_dir)
    calls = {"n": 0}
    original = app.audit.processor._builder.build

    def flaky(attributes, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return original(attributes, **kw)

    monkeypatch.setattr(app.audit.processor._builder, "build", flaky)
    app.log()
    assert app.close()
    ((problems, attrs),) = rows(db, "SELECT problems, attributes FROM audit_logs")
    assert "RuntimeError: boom" in problems[0]
    assert "patient-456" in attrs["otel_audit.unsealable"]
    assert verify(db).ok


def test_exported_records_carry_their_canonical_bytes_and_record_one_the_genesis(db: str, spool_dir: Path) -> None:
    """What the OTLP ingest needs to store a record it did not seal: the exact hashed bytes."""
    app = App(db, spool_dir)
    app.log()
    app.log()
    assert app.close()
    first, second = (r.log_record.attributes for r in app.exporter.get_finished_logs())
    for attrs in (first, second):
        canonical = attrs["audit.record.canonical"].encode()
        assert record_hash(canonical) == attrs["audit.integrity.value"]
        assert orjson.loads(canonical)["seq"] == attrs["audit.sequence.number"]
    ((genesis, genesis_hash),) = rows(db, "SELECT genesis, genesis_hash FROM audit_chains")
    assert first["audit.chain.genesis"].encode() == bytes(genesis)
    assert first["audit.sequence.prev_hash"] == genesis_hash
    assert "audit.chain.genesis" not in second
