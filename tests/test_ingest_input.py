"""Hostile text and nesting through `otel-audit serve` (a real HTTP server, real PostgreSQL):
stored with a note, never a refused request, a dropped record or a 500."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_audit.core.normalize import MAX_DEPTH
from tests.harness import rows, verify
from tests.ingest_harness import AUDIT, JSON, Ingest, record, request
from tests.test_input_conversion import deep_protobuf_request

pytestmark = pytest.mark.storage

SURROGATE_NOTE = "invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD"
DEEP_NOTE = f"nested deeper than {MAX_DEPTH} levels; this part stored as JSON text"


@pytest.fixture
def ingest(db: str, spool_dir: Path) -> Iterator[Ingest]:
    service = Ingest(db, spool_dir)
    yield service
    service.close()


def stored(dsn: str) -> list[dict]:
    return [orjson.loads(bytes(c)) for (c,) in rows(dsn, "SELECT canonical FROM audit_logs ORDER BY seq")]


def intact(doc: dict) -> bool:
    return (
        doc.get("actor_id"),
        doc.get("action"),
        doc.get("resource_type"),
        doc.get("resource_id"),
        doc.get("result"),
    ) == ("user-123", "read", "patient_record", "patient-456", "success")


def test_invalid_utf8_in_protobuf_strings(db: str, ingest: Ingest) -> None:
    req = request(
        [
            record({**AUDIT, "note": "XXXX", "test.id": "bad"}, body="viewed XXXX", event_name="XXXX"),
            record({**AUDIT, "test.id": "clean"}),
        ],
        scope="scope-XXXX",
        resource={"host.name": "host-XXXX"},
    )
    reply = ingest.post(req.SerializeToString().replace(b"XXXX", b"a\xffbc"))  # same length: framing intact
    assert reply.status == 200, reply.body
    bad, clean = stored(db)
    assert intact(bad) and intact(clean)
    assert bad["attributes"]["note"] == "a\ufffdbc" and bad["message"] == "viewed a\ufffdbc"
    assert bad["scope"] == "scope-a\ufffdbc" and bad["host_name"] == "host-a\ufffdbc"
    assert bad["event_name"] == "a\ufffdbc"
    assert set(bad["problems"]) == {
        f"{field}: {SURROGATE_NOTE}" for field in ("note", "message", "scope", "event_name", "resource.host.name")
    }
    assert clean["problems"] == [f"resource.host.name: {SURROGATE_NOTE}", f"scope: {SURROGATE_NOTE}"]
    assert verify(db).ok


def test_anyvalue_nested_beyond_the_protobuf_limit(db: str, ingest: Ingest) -> None:
    reply = ingest.post(deep_protobuf_request(3000))
    assert reply.status == 200, reply.body
    (doc,) = stored(db)
    assert intact(doc)
    assert doc["problems"] == [f"deep{'.a' * MAX_DEPTH}: {DEEP_NOTE}"]
    assert verify(db).ok


def test_nesting_within_the_protobuf_limit_is_cut_the_same_way(db: str, ingest: Ingest) -> None:
    reply = ingest.post(deep_protobuf_request(MAX_DEPTH + 5))
    assert reply.status == 200, reply.body
    (doc,) = stored(db)
    assert doc["problems"] == [f"deep{'.a' * MAX_DEPTH}: {DEEP_NOTE}"]


def test_otlp_json_with_lone_surrogates_invalid_utf8_and_deep_nesting(db: str, ingest: Ingest) -> None:
    # Each request its own record (timestamp): the first two are identical once repaired, and an
    # identical record arriving before the server has finished answering the previous request is
    # rightly taken for a retry of it and stored once.
    sent = time.time_ns()
    one, two, three = (
        json.dumps(json_format.MessageToDict(request([record({**AUDIT, "note": "QQQQ"}, time_ns=sent + i)])))
        for i in range(3)
    )
    deep = '{"stringValue": "leaf"}'
    for _ in range(400):  # ~1,600 JSON levels: beyond orjson's and the standard library's limits
        deep = '{"kvlistValue": {"values": [{"key": "a", "value": %s}]}}' % deep
    for raw in (
        one.replace("QQQQ", "a\\ud800b").encode(),
        two.encode().replace(b"QQQQ", b"a\xffb"),
        three.replace('{"stringValue": "QQQQ"}', deep).encode(),
    ):
        reply = ingest.post(raw, content_type=JSON)
        assert reply.status == 200, reply.body
    first, second, third = stored(db)
    assert all(intact(d) for d in (first, second, third))
    assert first["attributes"]["note"] == second["attributes"]["note"] == "a\ufffdb"
    assert first["problems"] == second["problems"] == [f"note: {SURROGATE_NOTE}"]
    assert third["problems"] == [f"note{'.a' * MAX_DEPTH}: {DEEP_NOTE}"]
    assert verify(db).ok


def test_ipv4_mapped_client_address_from_a_dual_stack_node_server(db: str, ingest: Ingest) -> None:
    assert ingest.export(request([record({**AUDIT, "client.address": "::ffff:10.1.2.3"})])).status == 200
    assert rows(db, "SELECT host(ip_address), family(ip_address), problems FROM audit_logs") == [("10.1.2.3", 4, [])]
    assert verify(db).ok


@st.composite
def damaged_request(draw: st.DrawFn) -> tuple[bytes, int]:
    """Audit records with invalid UTF-8 patched into random strings and maps nested past the limits."""
    records = []
    count = draw(st.integers(1, 4))
    for i in range(count):
        attrs = {**AUDIT, "test.id": f"r{i}"}
        for _ in range(draw(st.integers(0, 3))):
            attrs[draw(st.sampled_from(["k", "MARKk", "x.y"]))] = draw(
                st.sampled_from(["MARK", "aMARKb", ["MARK", 1], {"MARK": "v", "n": {"m": "MARK"}}, b"MARK"])
            )
        records.append(
            record(
                attrs,
                body=draw(st.sampled_from(["MARK", "plain", {"k": "MARK"}])),
                event_name=draw(st.sampled_from(["", "MARK"])),
            )
        )
    raw = request(records, scope=draw(st.sampled_from(["app", "MARK"]))).SerializeToString()
    # Four bytes each, so the protobuf framing stays intact: only the text is damaged.
    damage = draw(st.sampled_from([b"\xff\xff\xff\xff", b"a\xed\xa0\x80", b"ab\xc3c", b"MARK"]))
    return raw.replace(b"MARK", damage), count


def test_damaged_requests_keep_every_audit_record(db: str, spool_dir: Path) -> None:
    ingest = Ingest(db, spool_dir)
    expected = 0

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=damaged_request(), depth=st.sampled_from([0, 0, MAX_DEPTH + 1, 200]))
    def send(case: tuple[bytes, int], depth: int) -> None:
        nonlocal expected
        raw, count = case
        reply = ingest.post(raw)
        assert reply.status == 200, reply.body
        expected += count
        if depth:
            assert ingest.post(deep_protobuf_request(depth)).status == 200
            expected += 1

    try:
        send()
        assert ingest.service.stats.internal_errors == 0
    finally:
        assert ingest.close()
    docs = stored(db)
    assert len(docs) == expected
    assert all(intact(d) for d in docs)
    assert verify(db).ok
