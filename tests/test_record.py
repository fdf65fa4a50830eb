"""Building record documents: validation, enrichment fields, normalization, size limits."""

from __future__ import annotations

import hashlib

import orjson
import rfc8785

from otel_audit.core.chain import Chain
from otel_audit.core.record import MAX_INDEXED_CHARS, RECORD_FIELDS, RecordBuilder, encode_draft, record_seq
from tests.harness import VALID

T = 1_795_000_000_123_456_789


def build(attrs: dict, **kw):
    return RecordBuilder().build(attrs, time_unix_nano=T, **kw)


def test_valid_record_fields_and_omitted_nulls() -> None:
    draft = build(
        {**VALID, "client.address": "10.1.2.3", "http.route": "/p/{id}", "n": 3},
        body="patient record viewed",
        severity_text="INFO",
        severity_number=9,
        scope="billing",
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        trace_flags=1,
        service_name="billing",
        service_instance_id="i-1",
        host_name="host-a",
    )
    doc = draft.doc
    assert doc["problems"] == []
    assert doc["timestamp"] == "2026-11-18T11:06:40.123456Z"
    assert doc["actor_type"] == "user"  # default
    assert doc["ip_address"] == "10.1.2.3"
    assert doc["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and doc["span_id"] == "b7ad6b7169203331"
    assert doc["attributes"] == {"http.route": "/p/{id}", "n": 3}  # audit inputs are lifted out
    assert set(doc) <= set(RECORD_FIELDS)
    assert "reason" not in doc and "old_values" not in doc  # null fields are omitted


def test_invalid_records_are_flagged_with_every_problem() -> None:
    doc = build({"audit.action": "read", "audit.result": "ok", "audit.actor.type": "robot"}).doc
    problems = " | ".join(doc["problems"])
    for expected in ("audit.actor.id", "audit.resource.type", "audit.resource.id", "'ok'", "'robot'"):
        assert expected in problems
    assert doc["result"] == "ok" and doc["actor_type"] == "robot"  # the given values are kept


def test_actor_falls_back_to_user_id_attribute_then_baggage() -> None:
    attrs = {k: v for k, v in VALID.items() if k != "audit.actor.id"}
    assert build({**attrs, "user.id": "u-attr"}, fallback_user_id="u-bag").doc["actor_id"] == "u-attr"
    doc = build(attrs, fallback_user_id="u-bag", fallback_session_id="s-bag").doc
    assert doc["actor_id"] == "u-bag" and doc["user_id"] == "u-bag" and doc["session_id"] == "s-bag"
    assert doc["problems"] == []
    assert build({**attrs, "session.id": "s-attr"}, fallback_session_id="s-bag").doc["session_id"] == "s-attr"


def test_optional_fields_and_their_validation() -> None:
    doc = build(
        {
            **VALID,
            "audit.changed_fields": ("dosage", "medication"),
            "audit.old_values": {"dosage": "250mg", "n": 2.0},
            "audit.reason": "consultation",
            "user_agent.original": "curl/8",
            "client.address": "2001:DB8::1",
        }
    ).doc
    assert doc["changed_fields"] == ["dosage", "medication"]
    assert doc["old_values"] == {"dosage": "250mg", "n": 2}
    assert doc["reason"] == "consultation" and doc["user_agent"] == "curl/8"
    assert doc["ip_address"] == "2001:db8::1"

    bad = build({**VALID, "client.address": "10.1.2.3:443", "audit.changed_fields": "dosage"}).doc
    assert "ip_address" not in bad and bad["attributes"]["client.address"] == "10.1.2.3:443"
    assert bad["changed_fields"] == ["dosage"]
    assert len(bad["problems"]) == 2


def test_non_text_inputs_are_converted_and_noted() -> None:
    doc = build({**VALID, "audit.actor.id": 12345, "audit.resource.id": ("a", "b")}).doc
    assert doc["actor_id"] == "12345"
    assert doc["resource_id"] == '["a","b"]'
    assert len(doc["problems"]) == 2


def test_event_name_recognition_supplies_the_action() -> None:
    attrs = {k: v for k, v in VALID.items() if k != "audit.action"}
    doc = build(attrs, default_action="login", event_name="audit.login").doc
    assert doc["action"] == "login" and doc["event_name"] == "audit.login" and doc["problems"] == []


def test_text_postgresql_cannot_hold_is_replaced_and_noted() -> None:
    draft = build({**VALID, "audit.reason": "a\x00b", "note": "bad \udcff byte", "k\x00": 1})
    canonical = encode_draft(draft, 1 << 20)
    doc = orjson.loads(canonical)
    assert doc["reason"] == "a\ufffdb"
    assert doc["attributes"]["note"] == "bad \ufffd byte"
    assert "k\ufffd" in doc["attributes"]
    assert len(doc["problems"]) == 3
    assert b"\\u0000" not in canonical
    assert canonical == rfc8785.dumps(doc)


def test_oversized_records_are_shrunk_never_dropped() -> None:
    huge = "x" * 500_000
    draft = build({**VALID, "payload": huge, "small": "kept"})
    canonical = encode_draft(draft, 64 * 1024)
    doc = orjson.loads(canonical)
    assert len(canonical) <= 64 * 1024
    assert doc["attributes"]["small"] == "kept"
    assert doc["attributes"]["payload"].startswith("xxx")
    digest = hashlib.sha256(orjson.dumps(huge)).hexdigest()
    assert any("truncated" in p and digest in p for p in doc["problems"])


def test_indexed_fields_longer_than_a_btree_entry_are_clipped() -> None:
    doc = build({**VALID, "audit.resource.id": "r" * 5000}).doc
    assert len(doc["resource_id"]) == MAX_INDEXED_CHARS
    assert any("audit.resource.id truncated" in p for p in doc["problems"])


class _ListSink:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes, bytes]] = []

    def append(self, kind: int, payload: bytes, digest: bytes) -> int:
        self.frames.append((kind, payload, digest))
        return len(self.frames)


def test_record_seq_reads_the_top_level_key_only() -> None:
    sink = _ListSink()
    chain = Chain(sink, emitter={"kind": "test"})
    tricky = {**VALID, "x": {"seq": 999, '"seq":': 5}, "audit.old_values": {"seq": 7, "prev_hash": "no"}}
    for _ in range(3):
        sealed = chain.seal(RecordBuilder().build(tricky, time_unix_nano=T))
    assert record_seq(sealed.canonical) == 3 == orjson.loads(sealed.canonical)["seq"]


def test_record_hashes_of_many_records_equal_record_hash_of_each() -> None:
    from otel_audit.core.record import record_hash, record_hashes

    canonicals = [b"", b"{}", b'{"seq":1}', "é".encode() * 500]
    assert record_hashes(canonicals) == [record_hash(c) for c in canonicals]
    assert record_hashes(iter(canonicals)) == [record_hash(c) for c in canonicals]
