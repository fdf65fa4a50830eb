"""OTLP/HTTP request bodies -> ``ExportLogsServiceRequest``, with every limit enforced.

Nothing here trusts the input. Each failure is a :class:`RequestError` that
carries the HTTP status to answer and a message saying what to send instead;
no other exception leaves :func:`decode_request` for any input (the fuzz tests
hold it to that).

* **Compression**: ``gzip`` (several members allowed) and ``deflate`` (zlib),
  decompressed in bounded steps, so a small "gzip bomb" is refused with 413
  once it exceeds the size limit instead of being inflated in memory first.
* **Protobuf**: parsed by the upb runtime, which rejects invalid UTF-8 and
  nesting deeper than 100 levels. A body it refuses for those reasons is read
  again by :mod:`otel_audit.ingest.lenient`, which keeps every record and notes
  what it had to change (U+FFFD, deep values as JSON text); only a body that is
  not protobuf at all is refused.
* **JSON** (OTLP/JSON): ``traceId`` and ``spanId`` are hex strings in OTLP/JSON,
  but ``google.protobuf.json_format`` reads ``bytes`` fields as base64 and would
  silently yield wrong ids; they are converted (and validated) before parsing.
  Unknown fields are ignored, as the OTLP specification requires. Lone
  surrogate escapes, invalid UTF-8 and deep nesting are handled as for protobuf.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otel_audit.core.normalize import MAX_DEPTH
from otel_audit.ingest import lenient

__all__ = [
    "JSON",
    "PROTOBUF",
    "RequestError",
    "count_records",
    "decode_request",
    "decompress",
    "encoding_of",
    "parse_json",
    "parse_protobuf",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

#: Content-Encoding values understood (``identity`` and none mean uncompressed).
SUPPORTED_ENCODINGS = ("gzip", "deflate")

_JSON_MAX_DEPTH = 64  # OTLP nests 3 levels of envelopes, then AnyValue; plenty
# After lenient.repair() no AnyValue nests deeper than MAX_DEPTH levels: about 10 JSON
# levels of envelope plus 4 per map level.
_REPAIRED_MAX_DEPTH = 16 + 4 * (MAX_DEPTH + 1)


class RequestError(Exception):
    """The request cannot be processed as sent; answer ``status`` with ``message``.

    ``close``: the connection must be closed after the answer (the body was not
    read, or the stream is no longer trustworthy).
    """

    def __init__(self, status: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers or {}


def encoding_of(content_type: str | None) -> str:
    """The OTLP encoding named by a Content-Type header (parameters such as charset ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if media == JSON:
        return JSON
    raise RequestError(
        415,
        f"unsupported Content-Type {content_type!r}: send OTLP logs as {PROTOBUF} (binary protobuf) or "
        f"{JSON} (OTLP/JSON)",
    )


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding``; refuse (413) output larger than ``limit`` bytes."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, limit, wbits=16 + zlib.MAX_WBITS, members=True, name="gzip")
    if encoding == "deflate":
        return _inflate(body, limit, wbits=zlib.MAX_WBITS, members=False, name="deflate (zlib)")
    raise RequestError(
        415,
        f"unsupported Content-Encoding {content_encoding!r}: use gzip (the collector's `compression: gzip`) "
        "or send the body uncompressed",
    )


def _inflate(body: bytes, limit: int, *, wbits: int, members: bool, name: str) -> bytes:
    out = bytearray()
    data = body
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            while True:
                room = limit + 1 - len(out)  # one byte more than allowed reveals an overflow
                out += inflater.decompress(data, room)
                if len(out) > limit:
                    raise _too_large(limit, decompressed=True)
                if inflater.eof:
                    break
                if inflater.unconsumed_tail:
                    data = inflater.unconsumed_tail
                    continue
                # All input consumed and the stream is not finished: one more call
                # drains output zlib may still hold; nothing new means truncation.
                more = inflater.decompress(b"", limit + 1 - len(out))
                if not more:
                    raise RequestError(400, f"the {name} body is truncated (the compressed stream does not end)")
                out += more
                data = b""
                if len(out) > limit:
                    raise _too_large(limit, decompressed=True)
            rest = inflater.unused_data
            if not rest:
                return bytes(out)
            if not members:
                raise RequestError(400, f"unexpected bytes after the end of the {name} stream")
            data = rest
    except zlib.error as exc:
        raise RequestError(
            400, f"the body is not valid {name} data ({exc}); check the Content-Encoding header"
        ) from None


def _too_large(limit: int, *, decompressed: bool = False) -> RequestError:
    what = "decompressed body" if decompressed else "body"
    return RequestError(
        413,
        f"the {what} exceeds the limit of {limit} bytes: send smaller batches (collector: lower "
        "sending_queue.batch max_size / OTEL_AUDIT_MAX_REQUEST_BYTES), or raise `otel-audit serve --max-body-bytes`",
    )


def parse_protobuf(body: bytes) -> ExportLogsServiceRequest:
    try:
        request: ExportLogsServiceRequest = ExportLogsServiceRequest.FromString(body)
        return request
    except Exception as exc:  # DecodeError, and the runtime's own limits as other types
        failure = exc
    # Invalid UTF-8 or deep nesting in one record must not cost the whole request its
    # audit records: read it again without those checks (otel_audit.ingest.lenient).
    try:
        data = lenient.decode_protobuf(body)
    except lenient.Malformed:
        data = None
    repaired = _from_repaired(data) if data is not None else None
    if repaired is not None:
        return repaired
    if isinstance(failure, DecodeError):
        raise RequestError(
            400,
            f"the body is not a valid OTLP ExportLogsServiceRequest in binary protobuf ({failure}); send "
            f"opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest with Content-Type {PROTOBUF}",
        ) from None
    raise RequestError(400, f"the protobuf body could not be parsed ({type(failure).__name__}: {failure})") from None


def _from_repaired(data: Any) -> ExportLogsServiceRequest | None:
    """The request built from a leniently read body after :func:`lenient.repair`; None if it is not OTLP."""
    if not isinstance(data, dict):
        return None
    try:
        if not lenient.repair(data):
            return None  # nothing to repair: the strict decoder refused it for another reason
        return _parse_dict(data, _REPAIRED_MAX_DEPTH)
    except Exception:
        return None


def parse_json(body: bytes) -> ExportLogsServiceRequest:
    repaired = False
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # Lone surrogate escapes, invalid UTF-8 or deep nesting: read it again without
        # those checks, and make each record storable (otel_audit.ingest.lenient).
        try:
            data = lenient.decode_json(body)
            repaired = isinstance(data, dict) and lenient.repair(data)
        except (ValueError, RecursionError):
            repaired = False
        if not repaired:  # not one of those: refused as before
            raise RequestError(
                400, f"the body is not valid JSON ({exc}); send OTLP/JSON (UTF-8) or use protobuf"
            ) from None
    if not isinstance(data, dict):
        raise RequestError(400, 'OTLP/JSON must be a JSON object like {"resourceLogs": [...]}')
    _hex_ids_to_base64(data)
    try:
        return _parse_dict(data, _REPAIRED_MAX_DEPTH if repaired else _JSON_MAX_DEPTH)
    except RequestError:
        raise
    except Exception as exc:  # ParseError, and TypeError/ValueError/RecursionError on odd shapes
        failure = exc
    if not repaired and lenient.repair(data):  # too deep for the strict limit: cut what is too deep
        try:
            return _parse_dict(data, _REPAIRED_MAX_DEPTH)
        except Exception:
            pass
    text = str(failure).strip() or type(failure).__name__
    raise RequestError(
        400,
        f"the JSON body is not a valid OTLP/JSON ExportLogsServiceRequest: {text[:500]}. See "
        "https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding",
    ) from None


def _parse_dict(data: dict[str, Any], max_depth: int) -> ExportLogsServiceRequest:
    message = ExportLogsServiceRequest()
    json_format.ParseDict(data, message, ignore_unknown_fields=True, max_recursion_depth=max_depth)
    return message


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """Rewrite OTLP/JSON hex trace/span ids in place as the base64 json_format expects.

    Only well-formed shapes are walked; anything else is left for ParseDict to
    reject with its own message.
    """
    for r_index, resource_logs in enumerate(_items(data, "resourceLogs", "resource_logs")):
        for s_index, scope_logs in enumerate(_items(resource_logs, "scopeLogs", "scope_logs")):
            for l_index, record in enumerate(_items(scope_logs, "logRecords", "log_records")):
                where = f"resourceLogs[{r_index}].scopeLogs[{s_index}].logRecords[{l_index}]"
                for keys, size in ((("traceId", "trace_id"), 16), (("spanId", "span_id"), 8)):
                    for key in keys:
                        value = record.get(key)
                        if isinstance(value, str):
                            record[key] = _hex_to_base64(value, size, f"{where}.{keys[0]}")


def _items(container: Any, *keys: str) -> list[dict[str, Any]]:
    if not isinstance(container, dict):
        return []
    for key in keys:
        value = container.get(key)
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return []


def _hex_to_base64(value: str, size: int, where: str) -> str:
    if value == "":
        return ""
    if len(value) != 2 * size:
        raise RequestError(
            400, f"{where} must be {2 * size} hex digits ({size} bytes) or empty, got {len(value)} characters"
        )
    try:
        raw = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, f"{where} is not hexadecimal: OTLP/JSON encodes trace and span ids as hex, not base64"
        ) from None
    return base64.b64encode(raw).decode("ascii")


def count_records(request: ExportLogsServiceRequest) -> int:
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


def decode_request(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    max_body_bytes: int,
    max_records: int,
) -> tuple[ExportLogsServiceRequest, str]:
    """Decompress and parse one request body; returns the message and its encoding."""
    encoding = encoding_of(content_type)
    raw = decompress(body, content_encoding, max_body_bytes)
    request = parse_protobuf(raw) if encoding == PROTOBUF else parse_json(raw)
    count = count_records(request)
    if count > max_records:
        raise RequestError(
            413,
            f"{count} log records in one request exceed the limit of {max_records}: send smaller batches, or "
            "raise `otel-audit serve --max-records`",
        )
    _check_ids(request)
    return request, encoding


def _check_ids(request: ExportLogsServiceRequest) -> None:
    """OTLP ids are 16 (trace) and 8 (span) bytes or empty; the collector refuses others too."""
    for r_index, resource_logs in enumerate(request.resource_logs):
        for s_index, scope_logs in enumerate(resource_logs.scope_logs):
            for l_index, record in enumerate(scope_logs.log_records):
                trace_id, span_id = record.trace_id, record.span_id
                if (trace_id and len(trace_id) != 16) or (span_id and len(span_id) != 8):
                    raise RequestError(
                        400,
                        f"resourceLogs[{r_index}].scopeLogs[{s_index}].logRecords[{l_index}] has a trace id of "
                        f"{len(trace_id)} bytes / span id of {len(span_id)} bytes; OTLP requires 16 / 8 bytes "
                        "(or none)",
                    )
