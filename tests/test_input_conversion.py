"""Conversion rules for hostile input, without a database: to_plain, the Normalizer, the logging
filter's record rewrite, the record builder and the OTLP fallback decoders.

The end-to-end cases (a real logging call, a real pipeline, PostgreSQL, verification) are in
test_input_pipeline.py and test_ingest_input.py.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import json
import logging
import uuid

import orjson
import pytest
import rfc8785
from google.protobuf import json_format
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.instrumentation.logging.handler import LoggingHandler

from otel_audit.core.chain import Chain
from otel_audit.core.normalize import MAX_DEPTH, Normalizer, deep_json_text, to_plain
from otel_audit.core.record import RecordBuilder, encode_draft
from otel_audit.ingest import lenient
from otel_audit.ingest.decode import RequestError, parse_json, parse_protobuf
from otel_audit.ingest.otlp import attribute_map
from otel_audit.inputs import EMPTY_KEY, AuditInputFilter, guard_record
from tests.harness import VALID
from tests.ingest_harness import AUDIT, record, request

T = 1_795_000_000_123_456_789


class RaisingStr:
    def __str__(self) -> str:
        raise ValueError("no text for you")


class RaisingBoth(RaisingStr):
    def __repr__(self) -> str:
        raise RuntimeError("nor a repr")


class NoCustomStr:
    pass


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def nested(depth: int, leaf: object = "leaf") -> dict:
    value: object = leaf
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[return-value]


def build(attrs: dict, **kw: object) -> dict:
    draft = RecordBuilder().build(attrs, time_unix_nano=T, **kw)
    return orjson.loads(encode_draft(draft, 1 << 20))


# ---------------------------------------------------------------------------- to_plain
@pytest.mark.parametrize(
    ("value", "expected", "note"),
    [
        ({3, 1, 2}, [1, 2, 3], "x: set stored as a list (sorted)"),
        (frozenset({"b", 1}), None, "x: frozenset stored as a list (in iteration order)"),
        (
            datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "2026-01-02T03:04:05+00:00",
            "x: datetime.datetime stored as ISO 8601 text",
        ),
        (datetime.date(2026, 1, 2), "2026-01-02", "x: datetime.date stored as ISO 8601 text"),
        (decimal.Decimal("1.10"), "1.10", "x: value of type decimal.Decimal stored as its text form"),
        (
            uuid.UUID(int=5),
            "00000000-0000-0000-0000-000000000005",
            "x: value of type uuid.UUID stored as its text form",
        ),
        (Color.RED, "red", "x: enum member Color.RED stored as its value"),
        (Level.HIGH, 3, "x: enum member Level.HIGH stored as its value"),
        (range(3), [0, 1, 2], "x: range stored as a list"),
        (collections.deque([1]), [1], "x: collections.deque stored as a list"),
        (bytearray(b"ab"), b"ab", None),
        (collections.UserString("u"), "u", None),
        (collections.OrderedDict(a=1), {"a": 1}, None),
        ((1, "a"), [1, "a"], None),
        (2**60, str(2**60), f"x: integer {2**60} is outside the JSON-safe range, stored as text"),
        ("bad \udcff", "bad \ufffd", "x: invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD"),
    ],
)
def test_to_plain_converts_and_notes(value: object, expected: object, note: str | None) -> None:
    notes: list[str] = []
    out = to_plain(value, "x", notes)
    if expected is not None:
        assert out == expected and type(out) is type(expected)
    assert notes == ([note] if note else [])


def test_objects_whose_str_raises_are_kept_as_text_with_the_reason() -> None:
    notes: list[str] = []
    assert to_plain(RaisingStr(), "x", notes).startswith("<tests.test_input_conversion.RaisingStr object at")
    assert to_plain(RaisingBoth(), "y", notes) == "<unprintable tests.test_input_conversion.RaisingBoth>"
    assert notes[0].startswith(
        "x: value of type tests.test_input_conversion.RaisingStr stored as its text form "
        "(str() raised ValueError: no text for you; its repr() was kept)"
    )
    assert notes[1].endswith("(str() raised ValueError: no text for you and repr() failed too)")
    # An object with neither __str__ nor __repr__ (OpenTelemetry stores None for it) keeps its text form.
    assert to_plain(NoCustomStr(), "z", notes).startswith("<tests.test_input_conversion.NoCustomStr object")


def test_keys_that_are_not_text_are_converted_uniquely_and_noted() -> None:
    notes: list[str] = []
    out = to_plain(
        {1: "int", "1": "text", None: "none", (1, 2): "tuple", "": "empty"}, "ov", notes, empty_keys=EMPTY_KEY
    )
    assert out == {"1#2": "int", "1": "text", "None": "none", "(1, 2)": "tuple", EMPTY_KEY: "empty"}
    assert notes == [
        "ov: key of type int stored as text '1#2' (made unique: '1' is taken)",
        "ov: key of type NoneType stored as text 'None'",
        "ov: key of type tuple stored as text '(1, 2)'",
        "ov: empty key stored as '(empty key)' (OpenTelemetry drops empty keys)",
    ]
    # Without OpenTelemetry in the way (the OTLP ingest), an empty key is a valid JSON key.
    assert to_plain({"": 1}, "ov", []) == {"": 1}


def test_deep_nesting_is_cut_at_the_limit_and_the_rest_kept_as_json_text() -> None:
    notes: list[str] = []
    out = to_plain(nested(3000), "deep", notes)
    cursor = out
    for _ in range(MAX_DEPTH):
        cursor = cursor["a"]
    assert isinstance(cursor, str)
    assert cursor.startswith('{"a":{"a":') and cursor.endswith('"leaf"' + "}" * (3000 - MAX_DEPTH))
    assert notes == [f"deep{'.a' * MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels; this part stored as JSON text"]
    # Exactly MAX_DEPTH levels are kept as they are.
    assert to_plain(nested(MAX_DEPTH), "ok", []) == nested(MAX_DEPTH)


def test_cycles_are_cut_and_noted() -> None:
    loop: list = [1]
    loop.append(loop)
    table: dict = {"k": 1}
    table["self"] = table
    notes: list[str] = []
    assert to_plain(loop, "l", notes) == [1, "<cycle>"]
    assert to_plain({"t": table}, "m", notes) == {"t": {"k": 1, "self": "<cycle>"}}
    assert notes == [
        "l[1]: contains itself (a cycle); the inner reference stored as the text '<cycle>'",
        "m.t.self: contains itself (a cycle); the inner reference stored as the text '<cycle>'",
    ]
    # The same object twice, side by side, is not a cycle.
    shared = [1]
    assert to_plain([shared, shared], "s", []) == [[1], [1]]


def test_deep_json_text_never_recurses_and_stops_at_its_limit() -> None:
    text, cut = deep_json_text(nested(100_000), 1000)
    assert cut and len(text) == 1001 and text.endswith("…")
    text, cut = deep_json_text({"b": b"\x00", "f": 1.5, "n": None, "t": True, "s": {2}, "x": RaisingBoth()}, 10_000)
    assert not cut
    assert json.loads(text) == {
        "b": "AA==",
        "f": 1.5,
        "n": None,
        "t": True,
        "s": [2],
        "x": "<unprintable tests.test_input_conversion.RaisingBoth>",
    }


def test_normalizer_applies_the_same_rules_to_what_reaches_the_builder() -> None:
    problems: list[str] = []
    out = Normalizer(problems).value({"s": {2, 1}, "d": nested(25), 7: "seven"}, "audit.old_values")
    assert out["s"] == [1, 2] and out["7"] == "seven"
    cursor = out["d"]
    for _ in range(MAX_DEPTH - 2):  # old_values is level 1, "d" level 2: now at level 20
        cursor = cursor["a"]
    assert isinstance(cursor, dict) and isinstance(cursor["a"], str)
    assert problems == [
        "audit.old_values.s: set stored as a list (sorted)",
        f"audit.old_values.d{'.a' * (MAX_DEPTH - 1)}: nested deeper than {MAX_DEPTH} levels; this part stored as "
        "JSON text",
        "audit.old_values: key of type int stored as text '7'",
    ]


# ---------------------------------------------------------------------------- lone surrogates
@pytest.mark.parametrize(
    "attrs",
    [
        {"note": "bad\udcff"},
        {"x\udc80": "v"},
        {"ünï\udc80": "non-ASCII key: the reference encoder's path"},
        {"audit.reason": "r\ud800"},
        {"audit.old_values": {"name": "a\ud800b"}},
        {"audit.old_values": {"k\ud800": 2**60}},
        {"audit.old_values": {"n": {"deeper\udc00": ["x\udfff"]}}},
    ],
)
def test_a_lone_surrogate_anywhere_keeps_every_other_field(attrs: dict) -> None:
    """Sealed through the chain's inlined fast path, as the processor seals."""

    class Frames:
        def append(self, kind: int, payload: bytes, digest: bytes) -> int:
            return 0

    chain = Chain(Frames(), emitter={"kind": "test"})
    sealed = chain.seal(RecordBuilder().build({**VALID, **attrs}, time_unix_nano=T, body="msg \udcff"))
    doc = orjson.loads(sealed.canonical)
    assert (doc["actor_id"], doc["action"], doc["resource_type"], doc["resource_id"], doc["result"]) == (
        "user-123",
        "read",
        "patient_record",
        "patient-456",
        "success",
    )
    assert doc["message"] == "msg \ufffd"
    assert any("invalid Unicode" in p for p in doc["problems"])
    assert not any("internal error" in p for p in doc["problems"])
    assert sealed.canonical == rfc8785.dumps(doc)


# ---------------------------------------------------------------------------- the logging filter
def make_record(msg: str = "patient record viewed", args: tuple = (), **extra: object) -> logging.LogRecord:
    return logging.Logger("app").makeRecord("app", logging.INFO, "f.py", 1, msg, args, None, extra={**VALID, **extra})


def otel_attributes(rec: logging.LogRecord) -> dict:
    """What OpenTelemetry's own cleaning makes of the record (raises where it would raise)."""
    attrs = LoggingHandler()._get_attributes(rec)
    if isinstance(attrs, tuple):  # (attributes, event name) from 0.66b2 on
        attrs = attrs[0]
    return BoundedAttributes(attributes=attrs, immutable=False, extended_attributes=True)._dict


def test_without_the_filter_opentelemetry_raises_or_mangles() -> None:
    """The failures the filter exists for (if these start passing, OpenTelemetry changed)."""
    with pytest.raises(RecursionError):
        otel_attributes(make_record(deep=nested(3000)))
    with pytest.raises(ValueError, match="no text for you"):
        otel_attributes(make_record(obj=RaisingStr()))
    with pytest.raises(TypeError):
        make_record("viewed %s by %s", ("one",)).getMessage()
    mangled = otel_attributes(
        make_record(**{"audit.old_values": {0: "zero", None: "n", "": "e", "k": NoCustomStr()}, "tags": {"b", "a"}})
    )
    assert mangled["audit.old_values"] == {"k": None} and mangled["tags"] in ("{'a', 'b'}", "{'b', 'a'}")


def test_the_filter_makes_the_record_safe_and_lists_every_change() -> None:
    rec = make_record(
        "viewed %s by %s",
        ("one",),
        deep=nested(3000),
        obj=RaisingStr(),
        tags={"b", "a"},
        **{"audit.old_values": {0: "zero", None: "n", "": "e"}, "bad\udcff": 1},
    )
    assert AuditInputFilter().filter(rec) is True
    attrs = otel_attributes(rec)  # no exception now
    notes = list(attrs["otel_audit.input.problems"])
    assert rec.getMessage() == "viewed %s by %s (arguments: one)"
    assert attrs["tags"] == ("a", "b")
    assert attrs["audit.old_values"] == {"0": "zero", "None": "n", EMPTY_KEY: "e"}
    assert "bad\ufffd" in attrs
    expected = [
        "message: formatting the message with its arguments failed (TypeError: not enough arguments for format "
        "string); stored the unformatted message followed by the arguments' text forms",
        f"deep{'.a' * MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels; this part stored as JSON text",
        "tags: set stored as a list (sorted)",
        "audit.old_values: key of type int stored as text '0'",
        "audit.old_values: key of type NoneType stored as text 'None'",
        "audit.old_values: empty key stored as '(empty key)' (OpenTelemetry drops empty keys)",
        "extra: key: invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD",
    ]
    for note in expected:
        assert note in notes, note
    assert any(
        n.startswith("obj: value of type tests.test_input_conversion.RaisingStr stored as its text form") for n in notes
    )
    assert len(notes) == len(expected) + 1
    # The builder moves the notes into problems, first, and keeps every audit field.
    doc = build(dict(attrs), body=rec.getMessage())
    assert doc["problems"][: len(notes)] == notes
    assert (doc["actor_id"], doc["action"], doc["resource_id"], doc["result"]) == (
        "user-123",
        "read",
        "patient-456",
        "success",
    )


def test_ordinary_records_are_checked_not_changed() -> None:
    old = {"dosage": "250mg", "n": [1, 2.5, None, True]}
    rec = make_record("viewed %s", ("x",), **{"audit.old_values": old, "n": 3})
    before = dict(rec.__dict__)
    assert AuditInputFilter().filter(rec) is True
    assert rec.__dict__ == before and rec.__dict__["audit.old_values"] is old
    assert "otel_audit.input.problems" not in rec.__dict__


def test_non_audit_records_are_not_touched() -> None:
    rec = logging.Logger("app").makeRecord(
        "app", logging.INFO, "f", 1, "x %s %s", ("a",), None, extra={"deep": nested(3000)}
    )
    before = dict(rec.__dict__)
    assert AuditInputFilter().filter(rec) is True
    assert rec.__dict__ == before
    # ... unless a designated audit logger or event name makes them audit records.
    rec = logging.Logger("audit.payments").makeRecord(
        "audit.payments", logging.INFO, "f", 1, "x", (), None, extra={"s": {1}}
    )
    AuditInputFilter(audit_loggers=["audit"]).filter(rec)
    assert rec.__dict__["s"] == [1]
    rec = logging.Logger("app").makeRecord(
        "app", logging.INFO, "f", 1, "x", (), None, extra={"s": {1}, "otel.event.name": "audit.login"}
    )
    AuditInputFilter(event_prefix="audit.").filter(rec)
    assert rec.__dict__["s"] == [1]


def test_the_filter_twice_keeps_the_first_notes_once() -> None:
    rec = make_record(tags={1})
    guard_record(rec)
    guard_record(rec)
    assert rec.__dict__["otel_audit.input.problems"] == ("tags: set stored as a list (sorted)",)


def test_a_caller_cannot_hide_a_note_by_setting_the_notes_attribute() -> None:
    rec = make_record(tags={1}, **{"otel_audit.input.problems": RaisingStr()})
    guard_record(rec)
    notes = rec.__dict__["otel_audit.input.problems"]
    assert "tags: set stored as a list (sorted)" in notes
    assert any("reserved for otel-audit's notes" in n for n in notes)


def test_a_message_whose_str_raises() -> None:
    rec = logging.Logger("app").makeRecord("app", logging.INFO, "f", 1, RaisingBoth(), (), None, extra=dict(VALID))
    notes = guard_record(rec)
    assert rec.getMessage() == "<unprintable tests.test_input_conversion.RaisingBoth>"
    assert notes == [
        "message: the message (a RaisingBoth) could not be made text (ValueError: no text for you); "
        "stored a placeholder instead"
    ]


def test_an_exception_whose_argument_cannot_be_made_text() -> None:
    try:
        try:
            raise KeyError("cause")
        except KeyError as cause:
            raise RuntimeError(RaisingBoth()) from cause
    except RuntimeError:
        rec = logging.Logger("app").makeRecord(
            "app", logging.ERROR, "f", 1, "failed", (), sys_exc_info(), extra=dict(VALID)
        )
    original = rec.exc_info[1]
    with pytest.raises(ValueError):
        otel_attributes(rec)
    notes = guard_record(rec)
    attrs = otel_attributes(rec)
    assert attrs["exception.type"] == "RuntimeError"
    assert attrs["exception.message"] == "<unprintable tests.test_input_conversion.RaisingBoth>"
    stack = attrs["exception.stacktrace"]
    assert (
        "KeyError: 'cause'" in stack and "RuntimeError: <unprintable" in stack and "test_input_conversion.py" in stack
    )
    assert notes == [
        "exception.message: str() of the exception's first argument raised ValueError: no text for "
        "you; stored its text form"
    ]
    assert rec.exc_info[1] is not original and isinstance(original.args[0], RaisingBoth)  # the app's object untouched


def sys_exc_info():
    import sys

    return sys.exc_info()


def test_a_bug_in_the_filter_still_leaves_a_record_opentelemetry_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    import otel_audit.inputs as inputs

    def broken(record: logging.LogRecord) -> list[str]:
        raise RuntimeError("bug")

    monkeypatch.setattr(inputs, "guard_record", broken)
    rec = make_record("x %s", ("a", "b"), deep=nested(3000), obj=RaisingStr(), **{"k\udc80": "v\ud800"})
    assert AuditInputFilter().filter(rec) is True
    attrs = otel_attributes(rec)
    assert attrs["otel_audit.input.problems"] == (
        "internal error while preparing the record for OpenTelemetry (RuntimeError); extras stored as text",
    )
    assert attrs["audit.actor.id"] == "user-123" and isinstance(attrs["deep"], str)
    assert rec.getMessage() == "x %s"


# ---------------------------------------------------------------------------- builder
def test_input_notes_that_are_not_a_list_of_texts_are_kept_in_attributes_and_flagged() -> None:
    doc = build({**VALID, "otel_audit.input.problems": 5})
    assert doc["attributes"]["otel_audit.input.problems"] == 5
    assert "otel_audit.input.problems should be a list of texts; kept in attributes" in doc["problems"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::FFFF:0a01:0203", "10.1.2.3"),
        ("10.1.2.3", "10.1.2.3"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::10.1.2.3", "::a01:203"),
    ],
)
def test_ipv4_mapped_addresses_are_stored_as_ipv4(given: str, stored: str) -> None:
    doc = build({**VALID, "client.address": given})
    assert doc["ip_address"] == stored and doc["problems"] == []


# ---------------------------------------------------------------------------- OTLP fallback decoders
def _records(req) -> list:
    return [lr for rl in req.resource_logs for sl in rl.scope_logs for lr in sl.log_records]


def _problems(lr) -> list[str]:
    return list(attribute_map(lr, 256, []).get("otel_audit.input.problems") or [])


def test_protobuf_with_invalid_utf8_keeps_every_record() -> None:
    req = request([record({**AUDIT, "note": "XXXX", "kXXXX": 1}), record({**AUDIT, "clean": "yes"})])
    raw = req.SerializeToString().replace(b"XXXX", b"a\xffb\xed")
    parsed = _records(parse_protobuf(raw))
    assert len(parsed) == 2
    attrs = attribute_map(parsed[0], 256, [])
    assert attrs["note"] == "a\ufffdb\ufffd" and "ka\ufffdb\ufffd" in attrs
    assert _problems(parsed[0]) == [
        "note: invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD",
        "attributes: key: invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD",
    ]
    assert _problems(parsed[1]) == []


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([byte])
        out += bytes([byte | 0x80])


def deep_protobuf_request(depth: int) -> bytes:
    """One audit record whose attribute ``deep`` is a map nested ``depth`` levels (the SDK cannot build it)."""
    value = b"\x0a\x04leaf"  # AnyValue{string_value: "leaf"}
    for _ in range(depth):
        kv = b"\x0a\x01a\x12" + _varint(len(value)) + value  # KeyValue{key: "a", value}
        kvlist = b"\x0a" + _varint(len(kv)) + kv  # KeyValueList{values: [kv]}
        value = b"\x32" + _varint(len(kvlist)) + kvlist  # AnyValue{kvlist_value}
    log_record = record(AUDIT).SerializeToString()
    kv = b"\x0a\x04deep\x12" + _varint(len(value)) + value
    log_record += b"\x32" + _varint(len(kv)) + kv  # LogRecord.attributes
    scope_logs = b"\x12" + _varint(len(log_record)) + log_record
    resource_logs = b"\x12" + _varint(len(scope_logs)) + scope_logs
    return b"\x0a" + _varint(len(resource_logs)) + resource_logs


def test_protobuf_nested_beyond_the_runtime_limit_is_cut_not_refused() -> None:
    (lr,) = _records(parse_protobuf(deep_protobuf_request(3000)))
    attrs = attribute_map(lr, 256, [])
    cursor = attrs["deep"]
    for _ in range(MAX_DEPTH):
        cursor = cursor["a"]
    assert isinstance(cursor, str) and cursor.startswith('{"a":{"a":')
    assert _problems(lr) == [
        f"deep{'.a' * MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels; this part stored as JSON text"
    ]
    assert attrs["audit.actor.id"] == "user-123"


def test_json_with_lone_surrogates_invalid_utf8_or_deep_nesting_keeps_every_record() -> None:
    body = json.dumps(json_format.MessageToDict(request([record({**AUDIT, "note": "QQQQ"})])))
    for raw in (body.replace("QQQQ", "a\\ud800b").encode(), body.encode().replace(b"QQQQ", b"a\xffb")):
        (lr,) = _records(parse_json(raw))
        assert attribute_map(lr, 256, [])["note"] == "a\ufffdb"
        assert _problems(lr) == ["note: invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD"]
    for depth in (30, 3000):  # too deep for json_format's limit, and for any recursive JSON parser
        value = '{"stringValue": "leaf"}'
        for _ in range(depth):
            value = '{"kvlistValue": {"values": [{"key": "a", "value": %s}]}}' % value
        (lr,) = _records(parse_json(body.replace('{"stringValue": "QQQQ"}', value).encode()))
        assert _problems(lr) == [
            f"note{'.a' * MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels; this part stored as JSON text"
        ]


@pytest.mark.parametrize("body", [b"\x0a\xff\xff", b"garbage", b"\x0a\x05ab"])
def test_what_is_not_protobuf_is_still_refused(body: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_protobuf(body)
    assert info.value.status == 400


@pytest.mark.parametrize("body", [b"{", b'{"a": NaN}', b"[1,]", b'{"resourceLogs": "\\ud800"}x'])
def test_what_is_not_json_is_still_refused(body: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_json(body)
    assert info.value.status == 400


def test_the_fallback_reader_agrees_with_the_strict_one_on_valid_requests() -> None:
    req = request(
        [
            record(
                {**AUDIT, "n": 5, "f": 1.5, "b": b"\x01", "l": [1, "x"], "m": {"k": True}},
                trace_id=b"\x01" * 16,
                span_id=b"\x02" * 8,
                flags=1,
                event_name="audit.x",
            )
        ],
        resource={"host.name": "h"},
    )
    rebuilt = type(req)()
    json_format.ParseDict(lenient.decode_protobuf(req.SerializeToString()), rebuilt)
    assert rebuilt == req
