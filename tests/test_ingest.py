"""The OTLP ingest against real PostgreSQL: recognition, sealing, answers, durability, retries."""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otel_audit
from otel_audit.core import attributes as A
from otel_audit.ingest.service import EVENT_LINK_BREAK
from tests.harness import VALID, rows, verify
from tests.ingest_harness import AUDIT, JSON, TOKEN, Ingest, audit_request, record, request
from tests.pgproxy import PgProxy

pytestmark = pytest.mark.storage

_SEAL_EXTRA = (*A.SEAL_ATTRIBUTES, A.RECORD_CANONICAL, A.CHAIN_GENESIS)


@pytest.fixture
def ingest(db: str, spool_dir: Path) -> Iterator[Ingest]:
    service = Ingest(db, spool_dir)
    yield service
    service.close()


def stored(dsn: str, chain_id: str) -> list[dict]:
    return [
        orjson.loads(bytes(c))
        for (c,) in rows(dsn, "SELECT canonical FROM audit_logs WHERE chain_id = %s ORDER BY seq", (chain_id,))
    ]


def test_audit_records_are_sealed_committed_and_others_ignored(db: str, ingest: Ingest) -> None:
    req = request([record({**AUDIT, "test.id": str(i)}) for i in range(5)] + [record({"plain": i}) for i in range(5)])
    reply = ingest.export(req)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/x-protobuf"
    assert not reply.export_response().HasField("partial_success")
    # 200 means committed: the rows are there the moment the answer is.
    docs = stored(db, ingest.chain_id)
    assert sorted(d["attributes"]["test.id"] for d in docs) == ["0", "1", "2", "3", "4"]
    assert all(d["service_name"] == "billing-go" and d["scope"] == "app" for d in docs)
    report = verify(db)
    assert report.ok and report.records == 5 and not report.findings
    (emitter,) = [c.emitter for c in report.chains.values()]
    assert emitter["kind"] == "ingest"
    stats = ingest.service.stats
    assert (stats.sealed, stats.ignored) == (5, 5)


def _processor_app(dsn: str, spool_dir: Path, **options) -> tuple[LoggerProvider, InMemoryLogRecordExporter, object]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "billing", "host.name": "host-1"}), shutdown_on_exit=False
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handle = otel_audit.configure(
        dsn, logger_provider=provider, install_handler=False, spool_dir=spool_dir, metrics=False, **options
    )
    return provider, exporter, handle


def test_a_record_from_otlp_is_built_exactly_as_the_processor_builds_it(db: str, tmp_path: Path) -> None:
    """The same logging calls, sealed in-process and sent through the ingest, give the same documents."""
    rules = {"audit_loggers": ["app.audit"], "event_prefix": "audit."}
    provider, exporter, handle = _processor_app(db, tmp_path / "app-spool", **rules)
    log = logging.Logger("app.web", level=logging.DEBUG)
    log.addHandler(LoggingHandler(logger_provider=provider))
    by_name = logging.Logger("app.audit.exports", level=logging.DEBUG)
    by_name.addHandler(LoggingHandler(logger_provider=provider))
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("GET /patients"):
        log.info(
            "viewed",
            extra={
                **VALID,
                "audit.reason": "treatment",
                "audit.changed_fields": ["dosage", "unit"],
                "audit.old_values": {"dosage": "5mg", "n": 2.5},
                "user_agent.original": "curl/8",
                "session.id": "s-1",
                "user.id": "u-9",
                "ratio": 0.1,
                "count": 7,
                "flag": True,
                "big": 2**60,
                "raw": b"\x00\xff",
                "nested": {"a": [1, {"b": None}]},
                "ünïcode": "naïve",
                "nul": "a\x00b",
                "whole": 3.0,
            },
        )
    log.warning(
        "odd",
        extra={
            "audit.action": "export",
            "audit.actor.id": "svc",
            "audit.actor.type": "robot",
            "client.address": "not-an-ip",
            "audit.result": "maybe",
        },
    )
    log.error("no fields", extra={"audit.action": ""})
    log.info(
        "login",
        extra={
            "otel.event.name": "audit.login",
            "audit.actor.id": "u-1",
            "audit.resource.type": "session",
            "audit.resource.id": "s-2",
            "audit.result": "success",
        },
    )
    by_name.info(
        "export done",
        extra={
            "audit.actor.id": "u-2",
            "audit.resource.type": "report",
            "audit.resource.id": "r-1",
            "audit.result": "success",
        },
    )
    log.info("not audit", extra={"k": 1})
    assert handle.shutdown(timeout=30)

    exported = exporter.get_finished_logs()
    assert len(exported) == 6
    sealed_docs = [orjson.loads(r.log_record.attributes[A.RECORD_CANONICAL]) for r in exported[:5]]
    otlp = encode_logs(exported)
    for resource_logs in otlp.resource_logs:  # what a non-Python SDK would send: no seal
        for scope_logs in resource_logs.scope_logs:
            for lr in scope_logs.log_records:
                kept = [kv for kv in lr.attributes if kv.key not in _SEAL_EXTRA]
                del lr.attributes[:]
                lr.attributes.extend(kept)

    ingest = Ingest(
        db, tmp_path / "ingest-spool", **{k: tuple(v) if isinstance(v, list) else v for k, v in rules.items()}
    )
    try:
        reply = ingest.export(otlp)
        assert reply.status == 200, reply.body
        assert ingest.service.stats.ignored == 1
        ingested = stored(db, ingest.chain_id)
    finally:
        assert ingest.close()
    chain_fields = ("id", "chain_id", "seq", "prev_hash")
    strip = lambda d: {k: v for k, v in d.items() if k not in chain_fields}  # noqa: E731
    assert [strip(d) for d in ingested] == [strip(d) for d in sealed_docs]
    assert (
        sealed_docs[0]["trace_id"]
        and sealed_docs[3]["action"] == "login"
        and sealed_docs[4]["scope"] == ("app.audit.exports")
    )
    assert verify(db).ok


def test_otlp_json_with_hex_ids_and_gzip(db: str, ingest: Ingest) -> None:
    trace_hex, span_hex = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "node-api"}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "audit"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000123456789",
                                "severityNumber": 9,
                                "body": {"stringValue": "viewed"},
                                "traceId": trace_hex,
                                "spanId": span_hex,
                                "flags": 1,
                                "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in AUDIT.items()]
                                + [{"key": "attempt", "value": {"intValue": "3"}}],
                                "someFutureField": {"x": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    reply = ingest.post(orjson.dumps(body), content_type=JSON, gzip_body=True)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == JSON and orjson.loads(reply.body) == {}
    (doc,) = stored(db, ingest.chain_id)
    assert (doc["trace_id"], doc["span_id"], doc["trace_flags"]) == (trace_hex, span_hex, 1)
    assert doc["timestamp"] == "2023-11-14T22:13:20.123456Z" and doc["attributes"] == {"attempt": 3}
    assert doc["service_name"] == "node-api" and doc["message"] == "viewed"


@pytest.mark.parametrize(
    ("headers", "body", "status", "fragment"),
    [
        ({"Content-Type": "text/plain"}, b"x", 415, "unsupported Content-Type"),
        ({"Content-Encoding": "br"}, b"x", 415, "unsupported Content-Encoding"),
        ({}, b"\xff\xff\xff", 400, "not a valid OTLP ExportLogsServiceRequest"),
        ({"Content-Type": JSON}, b"{not json", 400, "not valid JSON"),
        ({"Content-Type": JSON}, b'{"resourceLogs": 5}', 400, "not a valid OTLP/JSON"),
        (
            {"Content-Type": JSON},
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}',
            400,
            "traceId must be 32 hex digits",
        ),
        (
            {"Content-Encoding": "gzip"},
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 8,
            400,
            "not valid gzip",
        ),
        ({"Content-Encoding": "gzip"}, b"\x1f\x8b\x08\x00garbage", 400, "truncated"),
    ],
)
def test_malformed_requests_get_a_clear_4xx_with_an_otlp_status(
    ingest: Ingest, headers: dict, body: bytes, status: int, fragment: str
) -> None:
    reply = ingest.post(body, headers=headers)
    assert reply.status == status
    if reply.headers["content-type"] == "application/x-protobuf":
        message = status_pb2.Status.FromString(reply.body).message
    else:
        message = orjson.loads(reply.body)["message"]
    assert fragment in message, message
    assert ingest.export(audit_request(1)).status == 200  # and the server is fine


def test_authentication(ingest: Ingest) -> None:
    req = audit_request(1).SerializeToString()
    for token, header in (
        (None, None),
        ("wrong-token-0123456789", None),
        (None, f"Basic {TOKEN}"),
        (None, f"Bearer {TOKEN}x"),
    ):
        reply = ingest.post(req, token=token, headers={"Authorization": header} if header else None)
        assert reply.status == 401
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in status_pb2.Status.FromString(reply.body).message
    assert ingest.post(req, headers={"Authorization": f"bearer {TOKEN}"}).status == 200
    assert ingest.service.stats.unauthorized == 4


def test_paths_methods_and_health(ingest: Ingest) -> None:
    assert ingest.post(b"", path="/v1/traces").status == 404
    assert ingest.post(b"", method="GET").status == 405
    reply = ingest.post(b"", method="PUT")
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    health = ingest.post(b"", path="/health", method="GET", token=None)
    assert health.status == 200 and orjson.loads(health.body)["status"] == "ok"
    assert ingest.post(b"", path="/stats", method="GET", token=None).status == 401
    stats = orjson.loads(ingest.post(b"", path="/stats", method="GET").body)
    assert stats["pipeline"]["chain_id"] == ingest.chain_id


def test_size_and_count_limits(db: str, spool_dir: Path) -> None:
    ingest = Ingest(db, spool_dir, max_body_bytes=64 * 1024, max_records=10)
    try:
        assert ingest.export(audit_request(11)).status == 413
        big = request([record({**AUDIT, "blob": "x" * 70_000})]).SerializeToString()
        reply = ingest.post(big)
        assert reply.status == 413 and reply.headers.get("connection") == "close"
        bomb = b"\x00" * (10 * 1024 * 1024)  # compresses to ~10 kB
        reply = ingest.post(bomb, gzip_body=True)
        assert reply.status == 413
        assert "decompressed body exceeds" in status_pb2.Status.FromString(reply.body).message
        assert ingest.export(audit_request(10)).status == 200
    finally:
        ingest.close()


def test_chunked_body_and_expect_continue(ingest: Ingest) -> None:
    body = audit_request(3).SerializeToString()
    conn = ingest.connection()
    conn.putrequest("POST", "/v1/logs")
    conn.putheader("Content-Type", "application/x-protobuf")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for part in (body[:10], body[10:]):
        conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 200
    conn.close()
    # Expect: 100-continue with a bad token is refused before the body is sent.
    sock = socket.create_connection((ingest.host, ingest.port), timeout=10)
    sock.sendall(
        b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Authorization: Bearer nope-nope-nope-nope\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    assert sock.recv(100).startswith(b"HTTP/1.1 401")
    sock.close()


def test_keep_alive_connection_serves_many_requests(db: str, ingest: Ingest) -> None:
    conn = ingest.connection()
    for i in range(5):
        conn.request(
            "POST",
            "/v1/logs",
            body=audit_request(2, tag=f"k{i}").SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"},
        )
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200
    conn.close()
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(10,)]


# ---------------------------------------------------------------------- pre-sealed records
def _sealed_records(dsn: str, spool_dir: Path, n: int) -> tuple[list, object]:
    """``n`` audit records sealed by an in-process processor, as its OTLP exporter sends them."""
    provider, exporter, handle = _processor_app(dsn, spool_dir)
    log = logging.Logger("app.web", level=logging.DEBUG)
    log.addHandler(LoggingHandler(logger_provider=provider))
    for i in range(n):
        log.info("step %d", i, extra={**VALID, "test.id": f"s-{i}"})
    return exporter.get_finished_logs(), handle


def test_presealed_records_keep_their_chain_and_are_not_duplicated(db: str, tmp_path: Path) -> None:
    exported, handle = _sealed_records(db, tmp_path / "app", 20)
    assert handle.shutdown(timeout=30)  # the processor's own sink stored them already
    app_chain = exported[0].log_record.attributes[A.CHAIN_ID]
    assert A.CHAIN_GENESIS in exported[0].log_record.attributes and A.CHAIN_GENESIS not in (
        exported[1].log_record.attributes
    )
    ingest = Ingest(db, tmp_path / "ingest")
    try:
        reply = ingest.export(encode_logs(exported))
        assert reply.status == 200 and not reply.export_response().HasField("partial_success")
        assert ingest.export(encode_logs(exported)).status == 200  # a redelivery changes nothing
        stats = ingest.service.stats
        assert (stats.relayed, stats.sealed, stats.link_breaks) == (40, 0, 0)
    finally:
        assert ingest.close()
    # The app's records once; in the ingest's own chain only its attestation that it accepted record 1.
    assert sorted(rows(db, "SELECT chain_id::text, count(*) FROM audit_logs GROUP BY 1")) == sorted(
        [(app_chain, 20), (ingest.chain_id, 1)]
    )
    assert rows(db, "SELECT action, resource_id FROM audit_logs WHERE chain_id = %s", (ingest.chain_id,)) == [
        ("otel_audit.chain_accepted", app_chain)
    ]
    assert rows(db, "SELECT count(*) FROM audit_quarantine") == [(0,)]
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]


def test_presealed_records_whose_emitter_never_reached_the_database(db: str, tmp_path: Path) -> None:
    """Only the ingest stores them: the chain is registered from record 1's genesis attribute."""
    proxy = PgProxy(db)
    proxy.cut()  # the application's own sink cannot reach PostgreSQL
    try:
        exported, handle = _sealed_records(proxy.dsn, tmp_path / "app", 10)
        ingest = Ingest(db, tmp_path / "ingest")
        try:
            # Out of order, as concurrent collector consumers may deliver them.
            assert ingest.export(encode_logs(exported[5:])).status == 200
            assert ingest.export(encode_logs(exported[:5])).status == 200
            assert ingest.service.stats.link_breaks == 0
        finally:
            assert ingest.close()
        handle.shutdown(timeout=1)
    finally:
        proxy.close()
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    # The app's chain (10) and the ingest's (its attestation that it registered the app's chain).
    assert report.records == 11 and len(report.chains) == 2


def test_tampered_presealed_records_are_rejected_through_partial_success(db: str, tmp_path: Path) -> None:
    exported, handle = _sealed_records(db, tmp_path / "app", 4)
    assert handle.shutdown(timeout=30)
    otlp = encode_logs(exported)
    records = otlp.resource_logs[0].scope_logs[0].log_records
    for kv in records[1].attributes:
        if kv.key == A.RECORD_CANONICAL:  # altered in transit
            kv.value.string_value = kv.value.string_value.replace("user-123", "user-666")
    for kv in records[2].attributes:
        if kv.key == A.SEQUENCE_NUMBER:  # seal attribute disagrees with the sealed bytes
            kv.value.int_value = 99
    ingest = Ingest(db, tmp_path / "ingest")
    try:
        reply = ingest.export(otlp)
        assert reply.status == 200
        partial = reply.export_response().partial_success
        assert partial.rejected_log_records == 2
        assert "hash to" in partial.error_message and "differs from the seal attribute" in partial.error_message
        json_reply = ingest.post(orjson.dumps(_to_json(otlp)), content_type=JSON)
        assert orjson.loads(json_reply.body)["partialSuccess"]["rejectedLogRecords"] in ("2", 2)
    finally:
        assert ingest.close()
    # The rejection itself is on record, in the ingest's chain.
    assert rows(
        db,
        "SELECT count(*), min(ip_address::text) FROM audit_logs WHERE action = "
        "'otel_audit.ingest.sealed_record_rejected'",
    ) == [(2, "127.0.0.1/32")]
    assert verify(db).ok


def _to_json(otlp) -> dict:
    from google.protobuf import json_format

    data = json_format.MessageToDict(otlp)
    for rl in data["resourceLogs"]:
        for sl in rl["scopeLogs"]:
            for lr in sl["logRecords"]:
                for key in ("traceId", "spanId"):
                    if key in lr:
                        lr[key] = base64.b64decode(lr[key]).hex()
    return data


def test_a_forged_record_for_an_existing_chain_is_flagged_quarantined_and_verified(db: str, tmp_path: Path) -> None:
    """A token holder forges a self-consistent record at a position the chain already has."""
    exported, handle = _sealed_records(db, tmp_path / "app", 3)
    assert handle.shutdown(timeout=30)
    attrs = exported[1].log_record.attributes
    forged_doc = orjson.loads(attrs[A.RECORD_CANONICAL])
    forged_doc["actor_id"] = "intruder"
    from otel_audit.core.canonical import canonical_json
    from otel_audit.core.record import record_hash

    canonical = canonical_json(forged_doc)
    forged = request(
        [
            record(
                {
                    **{k: attrs[k] for k in A.SEAL_ATTRIBUTES},
                    A.INTEGRITY_VALUE: record_hash(canonical),
                    A.RECORD_CANONICAL: canonical.decode(),
                }
            )
        ]
    )
    ingest = Ingest(db, tmp_path / "ingest")
    try:
        assert ingest.export(encode_logs(exported)).status == 200
        assert ingest.export(forged).status == 200
        assert ingest.service.stats.link_breaks == 1
    finally:
        assert ingest.close()
    ((reason,),) = rows(db, "SELECT reason FROM audit_logs WHERE action = %s", (EVENT_LINK_BREAK,))
    assert "conflict at seq 2" in reason
    assert rows(db, "SELECT seq FROM audit_quarantine") == [(2,)]
    report = verify(db)
    assert report.ok  # the chain itself is intact
    assert [(f.kind.value, f.severity.value, f.seq) for f in report.findings] == [("inserted", "warning", 2)]


# ---------------------------------------------------------------------- outages, backpressure, retries
def test_database_down_is_refused_before_sealing_and_accepted_once_back(db: str, spool_dir: Path) -> None:
    proxy = PgProxy(db)
    ingest = Ingest(proxy.dsn, spool_dir, commit_timeout=2.0)
    try:
        assert ingest.export(audit_request(3, tag="a")).status == 200
        proxy.cut()
        req_b = audit_request(3, tag="b")  # sent again and again, as the collector retries it
        for _ in range(40):  # the first attempt notices the outage, the next ones are refused at once
            reply = ingest.export(req_b)
            if reply.status == 503 and ingest.service.stats.refused_unavailable:
                break
        assert reply.status == 503 and int(reply.headers["retry-after"]) > 0
        assert "PostgreSQL is unreachable" in status_pb2.Status.FromString(reply.body).message
        health = ingest.post(b"", path="/health", method="GET", token=None)
        assert health.status == 503 and orjson.loads(health.body) == {
            "status": "unavailable",
            "reason": "database_unreachable",
        }
        sealed_before = ingest.service.stats.sealed
        assert ingest.export(audit_request(3, tag="c")).status == 503
        assert ingest.service.stats.sealed == sealed_before  # refused, nothing sealed
        proxy.restore()
        for _ in range(200):
            reply = ingest.export(req_b)
            if reply.status == 200:
                break
            time.sleep(0.1)
        assert reply.status == 200
    finally:
        assert ingest.close()
        proxy.close()
    ids = [r[0] for r in rows(db, "SELECT attributes->>'test.id' FROM audit_logs ORDER BY seq")]
    assert sorted(ids) == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"], ids  # b sealed once, however often sent
    assert verify(db).ok


def test_a_commit_timeout_answers_503_and_the_retry_is_not_sealed_twice(db: str, spool_dir: Path) -> None:
    proxy = PgProxy(db)
    ingest = Ingest(proxy.dsn, spool_dir, commit_timeout=1.0)
    try:
        assert ingest.export(audit_request(2, tag="warm")).status == 200
        proxy.pause()  # PostgreSQL hangs: the COMMIT does not come back
        req = audit_request(50, tag="t")
        reply = ingest.export(req)
        assert reply.status == 503 and "sealed and safe" in status_pb2.Status.FromString(reply.body).message
        assert int(reply.headers["retry-after"]) > 0
        proxy.resume()
        reply = ingest.export(req)  # the sender's retry
        assert reply.status == 200
        assert ingest.service.stats.retried == 50
    finally:
        assert ingest.close()
        proxy.close()
    assert rows(db, "SELECT count(*), count(DISTINCT attributes->>'test.id') FROM audit_logs") == [(52, 52)]
    assert verify(db).ok


def test_identical_records_in_one_request_are_all_kept(db: str, ingest: Ingest) -> None:
    same = record(AUDIT, time_ns=1_700_000_000_000_000_000)
    assert ingest.export(request([same, same, same])).status == 200
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(3,)]


def test_backlog_over_the_limit_answers_429(db: str, spool_dir: Path) -> None:
    proxy = PgProxy(db)
    ingest = Ingest(proxy.dsn, spool_dir, commit_timeout=0.5, max_backlog_bytes=1)
    try:
        assert ingest.pipeline.flush(30)  # the chain's genesis is committed: nothing waits
        assert ingest.export(audit_request(1)).status == 200
        proxy.pause()
        assert ingest.export(audit_request(5, tag="x")).status == 503  # sealed, commit not confirmed
        reply = ingest.export(audit_request(5, tag="y"))
        assert reply.status == 429 and reply.headers["retry-after"] == "1"
        proxy.resume()
    finally:
        assert ingest.close()
        proxy.close()


def test_connections_over_the_limit_are_answered_429(db: str, spool_dir: Path) -> None:
    ingest = Ingest(db, spool_dir, max_connections=2)
    idle = [socket.create_connection((ingest.host, ingest.port)) for _ in range(2)]
    try:
        time.sleep(0.2)
        reply = ingest.export(audit_request(1))
        assert reply.status == 429 and "too many connections" in reply.body.decode()
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    try:
        assert ingest.export(audit_request(1)).status == 200
    finally:
        ingest.close()


def test_tls(db: str, spool_dir: Path, tmp_path: Path) -> None:
    import ssl

    from otel_audit.ingest import tls_context

    cert, key = _self_signed(tmp_path)
    ingest = Ingest(db, spool_dir, ssl_context=tls_context(str(cert), str(key)))
    try:
        client = ssl.create_default_context(cafile=str(cert))
        reply = ingest.export(audit_request(2), context=client)
        assert reply.status == 200
        plain = http.client.HTTPConnection(ingest.host, ingest.port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("POST", "/v1/logs", body=b"x")
            plain.getresponse()
        assert ingest.export(audit_request(1), context=client).status == 200
    finally:
        assert ingest.close()
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(3,)]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_the_emitters_own_replay_does_not_skip_records_the_ingest_stored_out_of_order(db: str, tmp_path: Path) -> None:
    """The sink used to skip every record below the highest stored sequence number after a reconnect.

    With the ingest, rows of a chain can arrive out of order (and from a token
    holder); the replay must only skip records that are stored *with the same hash*.
    """
    proxy = PgProxy(db)
    try:
        provider, exporter, handle = _processor_app(proxy.dsn, tmp_path / "app")
        log = logging.Logger("app.web", level=logging.DEBUG)
        log.addHandler(LoggingHandler(logger_provider=provider))
        log.info("warm-up", extra=VALID)
        assert handle.flush(timeout=30)
        proxy.cut()  # the application's sink loses PostgreSQL ...
        for i in range(30):
            log.info("step %d", i, extra={**VALID, "test.id": str(i)})
        later = [r for r in exporter.get_finished_logs() if r.log_record.attributes[A.SEQUENCE_NUMBER] == 25]
        ingest = Ingest(db, tmp_path / "ingest")  # ... while the ingest stores record 25 of its chain
        try:
            assert ingest.export(encode_logs(later)).status == 200
        finally:
            assert ingest.close()
        proxy.restore()
        assert handle.shutdown(timeout=60)
    finally:
        proxy.close()
    report = verify(db)
    assert report.ok and not report.errors, [str(f) for f in report.findings]
    assert report.records == 31


def test_the_insert_only_writer_role_is_enough_for_the_ingest(db: str, tmp_path: Path) -> None:
    """Records already stored by their emitter reach the ingest again: the sink must tell that replay
    (same hash) from a forgery, which needs the writer role to read (chain_id, seq, hash) and nothing more."""
    import uuid

    from psycopg import sql

    from otel_audit.sink.schema import grant_writer

    role = f"audit_writer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        grant_writer(conn, role)
    writer_dsn = psycopg.conninfo.make_conninfo(db, user=role)
    try:
        exported, handle = _sealed_records(writer_dsn, tmp_path / "app", 10)
        assert handle.shutdown(timeout=30)
        ingest = Ingest(writer_dsn, tmp_path / "ingest", commit_timeout=10.0)
        try:
            assert ingest.export(encode_logs(exported)).status == 200
            assert ingest.export(audit_request(3)).status == 200
        finally:
            assert ingest.close()
        assert rows(db, "SELECT count(*) FROM audit_logs") == [(14,)]  # 10 relayed, 3 sealed, 1 attestation
        with psycopg.connect(writer_dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT canonical FROM audit_logs")
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_seal_without_canonical_bytes_is_sealed_anew_not_refused(db: str, ingest: Ingest) -> None:
    """Another audit library may use the same attribute names; refusing would make the collector drop it."""
    foreign = {
        **AUDIT,
        "audit.chain.id": "chain-of-another-system",
        "audit.sequence.number": 7,
        "audit.integrity.algorithm": "sha512",
        "audit.integrity.value": "abc",
    }
    reply = ingest.export(request([record(foreign)]))
    assert reply.status == 200 and not reply.export_response().HasField("partial_success")
    (doc,) = stored(db, ingest.chain_id)
    assert doc["attributes"]["audit.chain.id"] == "chain-of-another-system"
    assert any("without audit.record.canonical" in p for p in doc["problems"])
