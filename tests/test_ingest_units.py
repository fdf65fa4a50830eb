"""The OTLP ingest's parts without a database: decoding, seals, links, tokens, the verifier's walk.

The decoder is fuzzed with hostile payloads: whatever the bytes and headers,
it answers with a :class:`RequestError` (a 4xx) or a request, never with any
other exception.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otel_audit.core import attributes as A
from otel_audit.core.chain import Chain, genesis_hash
from otel_audit.core.record import RECORD_DOMAIN, RecordBuilder, record_hash
from otel_audit.errors import AuditConfigurationError
from otel_audit.ingest.auth import TokenSet
from otel_audit.ingest.decode import JSON, PROTOBUF, RequestError, decode_request, decompress
from otel_audit.ingest.otlp import attribute_map
from otel_audit.ingest.presealed import LinkTracker, SealRejected, read_seal
from tests.ingest_harness import AUDIT, audit_request, record, request

LIMIT = 1024 * 1024


def decode(body: bytes, content_type: str = PROTOBUF, encoding: str | None = None, **limits: int):
    return decode_request(
        body,
        content_type=content_type,
        content_encoding=encoding,
        max_body_bytes=limits.get("max_body_bytes", LIMIT),
        max_records=limits.get("max_records", 1000),
    )


# ---------------------------------------------------------------------- decoding
def test_protobuf_gzip_and_deflate_decode_to_the_same_request() -> None:
    req = audit_request(3)
    raw = req.SerializeToString()
    assert decode(raw)[0] == req
    assert decode(gzip.compress(raw), encoding="gzip")[0] == req
    assert decode(gzip.compress(raw[:50]) + gzip.compress(raw[50:]), encoding="gzip")[0] == req  # two members
    assert decode(zlib.compress(raw), encoding="deflate")[0] == req
    assert decode(raw, content_type="application/x-protobuf; charset=binary")[1] == PROTOBUF


def test_decompression_is_capped_while_it_runs() -> None:
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB in ~65 kB
    assert len(bomb) < 100_000
    with pytest.raises(RequestError) as info:
        decompress(bomb, "gzip", LIMIT)
    assert info.value.status == 413 and "decompressed body exceeds the limit" in info.value.message
    assert decompress(gzip.compress(b"x" * LIMIT), "gzip", LIMIT) == b"x" * LIMIT  # exactly the limit is fine
    with pytest.raises(RequestError) as info:
        decompress(gzip.compress(b"x" * 10)[:-3], "gzip", LIMIT)
    assert info.value.status == 400 and "truncated" in info.value.message
    with pytest.raises(RequestError) as info:
        decompress(zlib.compress(b"x") + b"junk", "deflate", LIMIT)
    assert info.value.status == 400 and "unexpected bytes" in info.value.message


def test_otlp_json_ids_are_read_as_hex_not_base64() -> None:
    trace_hex, span_hex = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    body = {
        "resourceLogs": [
            {"scopeLogs": [{"logRecords": [{"traceId": trace_hex, "spanId": span_hex, "unknownField": 1}]}]}
        ]
    }
    req, encoding = decode(orjson.dumps(body), content_type=JSON)
    lr = req.resource_logs[0].scope_logs[0].log_records[0]
    assert encoding == JSON
    assert (lr.trace_id.hex(), lr.span_id.hex()) == (trace_hex, span_hex)
    # The trap this avoids: json_format alone takes hex for base64 and yields other bytes.
    assert base64.b64decode(trace_hex) != bytes.fromhex(trace_hex)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "ab"}]}]}]}, "32 hex digits"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"spanId": "zzzzzzzzzzzzzzzz"}]}]}]}, "not hexadecimal"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}, "not a valid OTLP/JSON"),
        ({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": 3}]}]}]}, "not a valid OTLP/JSON"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_otlp_json_is_a_400_that_says_why(body: object, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        decode(orjson.dumps(body), content_type=JSON)
    assert info.value.status == 400 and fragment in info.value.message


def test_record_count_and_id_length_limits() -> None:
    with pytest.raises(RequestError) as info:
        decode(audit_request(11).SerializeToString(), max_records=10)
    assert info.value.status == 413
    bad = request([record(AUDIT, trace_id=b"\x01" * 15)])
    with pytest.raises(RequestError) as info:
        decode(bad.SerializeToString())
    assert info.value.status == 400 and "16 / 8 bytes" in info.value.message


def test_unsupported_media_and_encodings_are_415() -> None:
    for content_type, encoding in (("text/plain", None), (PROTOBUF, "br"), (PROTOBUF, "zstd"), (None, None)):
        with pytest.raises(RequestError) as info:
            decode(b"", content_type=content_type, encoding=encoding)  # type: ignore[arg-type]
        assert info.value.status == 415


def _fixed_request(n: int) -> bytes:
    """``n`` audit records with fixed timestamps: hypothesis needs the same bytes for the same draw."""
    req = audit_request(n)
    for i, lr in enumerate(req.resource_logs[0].scope_logs[0].log_records):
        lr.time_unix_nano = lr.observed_time_unix_nano = 1_700_000_000_000_000_000 + i
    return req.SerializeToString()


def _valid_bodies() -> st.SearchStrategy[bytes]:
    return st.integers(0, 5).map(_fixed_request)


def _mutate(data: st.DataObject, body: bytes) -> bytes:
    choice = data.draw(st.integers(0, 4))
    if not body or choice == 0:
        return data.draw(st.binary(max_size=2048))
    if choice == 1:
        return body[: data.draw(st.integers(0, len(body)))]  # truncated
    if choice == 2:
        pos = data.draw(st.integers(0, len(body) - 1))
        return body[:pos] + bytes([data.draw(st.integers(0, 255))]) + body[pos + 1 :]  # one byte flipped
    if choice == 3:
        return body + data.draw(st.binary(min_size=1, max_size=64))  # trailing garbage
    return data.draw(st.binary(max_size=16)) + body


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)
_otlp_keys = st.sampled_from(
    [
        "resourceLogs",
        "scopeLogs",
        "logRecords",
        "attributes",
        "key",
        "value",
        "stringValue",
        "intValue",
        "kvlistValue",
        "arrayValue",
        "values",
        "traceId",
        "spanId",
        "timeUnixNano",
        "body",
        "severityNumber",
        "flags",
        "resource",
    ]
)


@st.composite
def _hostile_json(draw: st.DrawFn) -> bytes:
    """JSON shaped like OTLP, with wrong types, odd ids, deep nesting and invalid text in places."""
    kind = draw(st.integers(0, 3))
    if kind == 0:  # the stdlib encoder: big integers, NaN and lone surrogates get through to the decoder
        value = draw(st.dictionaries(_otlp_keys, _json_values, max_size=4))
        text = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [value]}]}]}, ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")
    if kind == 1:
        depth = draw(st.integers(1, 3000))
        return b'{"resourceLogs":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 2:
        text = draw(st.text(max_size=40))
        return json.dumps(
            {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": text, "spanId": text}]}]}]}
        ).encode()
    return draw(st.binary(max_size=64)) + b'{"resourceLogs": [{"x": "\xff\xfe"}]}'


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), body=_valid_bodies(), compress=st.booleans(), as_json=st.booleans())
def test_fuzz_the_decoder_never_fails_with_anything_but_a_4xx(
    data: st.DataObject, body: bytes, compress: bool, as_json: bool
) -> None:
    payload = data.draw(_hostile_json()) if as_json else _mutate(data, body)
    encoding = None
    if compress:
        payload = gzip.compress(payload, mtime=0)
        if data.draw(st.booleans()):
            payload = _mutate(data, payload)
        encoding = "gzip"
    try:
        request, _ = decode(
            payload,
            content_type=JSON if as_json else PROTOBUF,
            encoding=encoding,
            max_body_bytes=64 * 1024,
            max_records=50,
        )
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message
    else:
        assert isinstance(request, ExportLogsServiceRequest)


def test_attribute_limit_keeps_the_audit_fields() -> None:
    attrs = {f"k{i:04d}": i for i in range(1000)}
    attrs.update(AUDIT)
    problems: list[str] = []
    kept = attribute_map(record(attrs), 100, problems)
    assert len(kept) == 100 and all(kept[k] == v for k, v in AUDIT.items())
    assert problems == [
        "905 attribute(s) beyond the ingest's limit of 100 attributes per record were dropped before sealing"
    ]


# ---------------------------------------------------------------------- pre-sealed records
class _MemorySink:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes, bytes]] = []

    def append(self, kind: int, payload: bytes, digest: bytes) -> int:
        self.frames.append((kind, payload, digest))
        return len(self.frames)


def _sealed(n: int = 2) -> tuple[Chain, list[dict]]:
    chain = Chain(_MemorySink(), emitter={"kind": "sdk"})
    out = []
    for i in range(n):
        sealed = chain.seal(RecordBuilder().build({**AUDIT, "i": i}, time_unix_nano=1_700_000_000_000_000_000 + i))
        attrs = {
            A.RECORD_ID: sealed.record_id,
            A.CHAIN_ID: sealed.chain_id,
            A.SEQUENCE_NUMBER: sealed.seq,
            A.SEQUENCE_PREV_HASH: sealed.prev_hash,
            A.INTEGRITY_ALGORITHM: "sha256",
            A.INTEGRITY_VALUE: sealed.hash,
            A.RECORD_CANONICAL: sealed.canonical.decode(),
        }
        if sealed.seq == 1:
            attrs[A.CHAIN_GENESIS] = chain.genesis.decode()
        out.append(attrs)
    return chain, out


def test_a_presealed_record_is_read_back_exactly() -> None:
    chain, (first, second) = _sealed()
    item = read_seal(first, max_record_bytes=LIMIT)
    assert item.canonical == first[A.RECORD_CANONICAL].encode() and item.hash == first[A.INTEGRITY_VALUE]
    assert item.genesis == chain.genesis and item.genesis_problem is None
    assert read_seal(second, max_record_bytes=LIMIT).genesis is None


def _reseal(attrs: dict, change) -> dict:
    """A record edited and re-hashed: self-consistent, so only its content checks can catch it."""
    doc = orjson.loads(attrs[A.RECORD_CANONICAL])
    change(doc)
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return {**attrs, A.RECORD_CANONICAL: canonical.decode(), A.INTEGRITY_VALUE: record_hash(canonical)}


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda a: {**a, A.RECORD_CANONICAL: a[A.RECORD_CANONICAL].replace("user-123", "user-999")}, "hash to"),
        (lambda a: {**a, A.SEQUENCE_NUMBER: 7}, "seq 1 differs"),
        (lambda a: {**a, A.INTEGRITY_ALGORITHM: "md5"}, "unsupported"),
        (lambda a: {k: v for k, v in a.items() if k != A.INTEGRITY_VALUE}, "incomplete seal"),
        (lambda a: {k: v for k, v in a.items() if k != A.RECORD_CANONICAL}, "has no audit.record.canonical"),
        (lambda a: {**a, A.SEQUENCE_NUMBER: "1"}, "wrong types"),
        (lambda a: _reseal(a, lambda d: d.update(extra=1)), "unknown fields"),
        (lambda a: _reseal(a, lambda d: d.update(timestamp="2026-13-01T00:00:00.000000Z")), "timestamp"),
        (lambda a: _reseal(a, lambda d: d.update(ip_address="10.0.0.1/8")), "ip_address"),
        (lambda a: _reseal(a, lambda d: d.update(result="maybe")), "valid actor_type and result"),
        (lambda a: _reseal(a, lambda d: d.update(chain_id=d["chain_id"].upper())), "lowercase UUID"),
        (
            lambda a: {
                **_reseal(a, lambda d: None),
                A.RECORD_CANONICAL: orjson.dumps(
                    orjson.loads(a[A.RECORD_CANONICAL]), option=orjson.OPT_INDENT_2
                ).decode(),
            },
            "hash to",
        ),
    ],
)
def test_presealed_records_that_do_not_match_their_seal_are_rejected(edit, fragment: str) -> None:
    _, (first, _) = _sealed()
    with pytest.raises(SealRejected) as info:
        read_seal(edit(first), max_record_bytes=LIMIT)
    assert fragment in str(info.value)


def test_non_canonical_bytes_with_a_matching_hash_are_rejected() -> None:
    _, (first, _) = _sealed()
    pretty = orjson.dumps(orjson.loads(first[A.RECORD_CANONICAL]), option=orjson.OPT_INDENT_2)
    with pytest.raises(SealRejected, match="not in canonical form"):
        read_seal(
            {**first, A.RECORD_CANONICAL: pretty.decode(), A.INTEGRITY_VALUE: record_hash(pretty)},
            max_record_bytes=LIMIT,
        )


def test_a_genesis_that_does_not_belong_to_the_record_is_not_registered() -> None:
    _, (first, _) = _sealed()
    other_chain, _ = _sealed()
    item = read_seal({**first, A.CHAIN_GENESIS: other_chain.genesis.decode()}, max_record_bytes=LIMIT)
    assert item.genesis is None and "hashes to" in item.genesis_problem


def test_link_tracker_checks_neighbours_in_any_order() -> None:
    tracker = LinkTracker(max_chains=2, window=8)
    h = [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)]
    assert tracker.observe("c", 3, h[3], h[2]) is None
    assert tracker.observe("c", 1, h[1], h[0]) is None
    assert tracker.observe("c", 2, h[2], h[1]) is None  # fits between 1 and 3
    assert tracker.observe("c", 2, h[2], h[1]) is None  # redelivery
    assert "conflict at seq 2" in tracker.observe("c", 2, h[5], h[1])
    assert "broken link at seq 4" in tracker.observe("c", 4, h[4], h[5])
    tracker.observe("d", 1, h[1], h[0])
    tracker.observe("e", 1, h[1], h[0])  # "c" is evicted (two chains at most)
    assert tracker.observe("c", 2, h[5], h[1]) is None


def test_genesis_hash_links_record_one() -> None:
    chain, (first, _) = _sealed()
    assert first[A.SEQUENCE_PREV_HASH] == genesis_hash(chain.genesis)
    assert hashlib.sha256(RECORD_DOMAIN + first[A.RECORD_CANONICAL].encode()).hexdigest() == first[A.INTEGRITY_VALUE]


# ---------------------------------------------------------------------- tokens
def test_tokens_from_file_and_environment(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated 2026-11\nold-token-aaaaaaaaaaaa\n\nnew-token-bbbbbbbbbbbb\n")
    path.chmod(0o600)
    tokens = TokenSet.load(path, "env-token-cccccccccccc, ")
    assert len(tokens) == 3
    for token in ("old-token-aaaaaaaaaaaa", "new-token-bbbbbbbbbbbb", "env-token-cccccccccccc"):
        assert tokens.check(f"Bearer {token}") and tokens.check(f"bearer  {token} ")
    for header in (
        None,
        "",
        "Bearer",
        "Bearer old-token-aaaaaaaaaaa",
        "Basic old-token-aaaaaaaaaaaa",
        "Bearer old-token-aaaaaaaaaaaa2",
        "Bearer \u00e9\u00e9",
    ):
        assert not tokens.check(header)


def test_weak_or_malformed_tokens_are_refused_at_start() -> None:
    with pytest.raises(AuditConfigurationError, match="at least 16"):
        TokenSet(["short"])
    with pytest.raises(AuditConfigurationError, match="characters a bearer token cannot carry"):
        TokenSet(['"quoted-token-from-yaml-file"'])
