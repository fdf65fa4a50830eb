"""OTLP requests the strict decoders refuse because of their *content*, kept instead of refused.

The protobuf runtime (upb) refuses a whole request when one string holds
invalid UTF-8 or when messages nest deeper than 100 levels (about 30 levels of
maps in an attribute); ``orjson`` refuses JSON with a lone surrogate escape
(``"\\ud800"``) or invalid UTF-8, and ``json_format`` nesting deeper than 64.
Refusing the request would drop every audit record in it (a collector does not
retry a 400), so :mod:`otel_audit.ingest.decode` falls back to this module:

1. :func:`decode_protobuf` / :func:`decode_json` read the body without those
   checks into the OTLP/JSON mapping (undecodable bytes become lone surrogates);
2. :func:`repair` makes each log record storable with the rules the record
   builder applies in-process: lone surrogates become U+FFFD, maps and lists
   nested deeper than :data:`~otel_audit.core.normalize.MAX_DEPTH` levels are
   stored as their JSON text, and every change is listed, per record, in the
   ``otel_audit.input.problems`` attribute, which the record builder moves into
   the sealed record's ``problems``;
3. ``json_format.ParseDict`` builds the request the strict path would have.

A body that is not OTLP at all still gets its 400. Memory stays bounded: below
the depth limit at most :data:`DEEP_NODE_BUDGET` values are decoded per request.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otel_audit.core import attributes as A
from otel_audit.core.normalize import MAX_DEEP_TEXT, MAX_DEPTH, cut_deep, unicode_text

__all__ = ["DEEP_NODE_BUDGET", "decode_json", "decode_protobuf", "repair"]

#: Values nested below the depth limit decoded per request (they end up as text
#: of at most MAX_DEEP_TEXT characters anyway; the rest is skipped).
DEEP_NODE_BUDGET = 65536
#: JSON nesting the fallback JSON reader materializes; deeper parts are kept as raw text.
JSON_MAX_NESTING = 256

_ANY = "opentelemetry.proto.common.v1.AnyValue"
_SKIPPED = "…"  # what a value beyond the budget is decoded as


class Malformed(ValueError):
    """The body is not a protobuf message at all (bad varint, length beyond the end, groups)."""


# ---------------------------------------------------------------------- protobuf
class _Info:
    __slots__ = ("fields", "is_any", "oneofs")

    def __init__(self) -> None:
        self.fields: dict[int, tuple[str, int, bool, _Info | None, str | None]] = {}
        self.oneofs: dict[str, tuple[str, ...]] = {}
        self.is_any = False


_INFOS: dict[str, _Info] = {}


def _info(descriptor: Any) -> _Info:
    info = _INFOS.get(descriptor.full_name)
    if info is not None:
        return info
    info = _INFOS[descriptor.full_name] = _Info()
    info.is_any = descriptor.full_name == _ANY
    for field in descriptor.fields:
        oneof = field.containing_oneof.name if field.containing_oneof is not None else None
        sub = _info(field.message_type) if field.type == FieldDescriptor.TYPE_MESSAGE else None
        info.fields[field.number] = (field.json_name, field.type, field.is_repeated, sub, oneof)
    for oneof in descriptor.oneofs:
        info.oneofs[oneof.name] = tuple(f.json_name for f in oneof.fields)
    return info


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise Malformed("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _double(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


_T = FieldDescriptor


def _scalar(ftype: int, wire: int, raw: Any) -> Any:
    """A decoded scalar in the OTLP/JSON mapping ``json_format`` reads; ``None``: wrong wire type."""
    if ftype == _T.TYPE_STRING:
        return bytes(raw).decode("utf-8", "surrogateescape") if wire == 2 else None
    if ftype == _T.TYPE_BYTES:
        return base64.b64encode(bytes(raw)).decode("ascii") if wire == 2 else None
    if wire == 0:
        if ftype == _T.TYPE_BOOL:
            return raw != 0
        if ftype in (_T.TYPE_INT64, _T.TYPE_INT32, _T.TYPE_ENUM):
            value = _signed64(raw)
            return value if ftype == _T.TYPE_INT64 else max(-(2**31), min(2**31 - 1, value))
        if ftype == _T.TYPE_UINT64:
            return raw & 0xFFFFFFFFFFFFFFFF
        if ftype == _T.TYPE_UINT32:
            return raw & 0xFFFFFFFF
        if ftype in (_T.TYPE_SINT32, _T.TYPE_SINT64):
            return (raw >> 1) ^ -(raw & 1)
        return None
    if wire == 1:
        if ftype == _T.TYPE_DOUBLE:
            return _double(struct.unpack("<d", raw)[0])
        if ftype == _T.TYPE_FIXED64:
            return struct.unpack("<Q", raw)[0]
        if ftype == _T.TYPE_SFIXED64:
            return struct.unpack("<q", raw)[0]
        return None
    if wire == 5:
        if ftype == _T.TYPE_FLOAT:
            return _double(struct.unpack("<f", raw)[0])
        if ftype == _T.TYPE_FIXED32:
            return struct.unpack("<I", raw)[0]
        if ftype == _T.TYPE_SFIXED32:
            return struct.unpack("<i", raw)[0]
    return None


def decode_protobuf(body: bytes) -> dict[str, Any]:
    """An ``ExportLogsServiceRequest`` in the OTLP/JSON mapping, read without UTF-8 or depth checks.

    Iterative (any nesting depth). Raises :class:`Malformed` if the bytes are not
    a protobuf message.
    """
    data = bytes(body)
    root: dict[str, Any] = {}
    budget = DEEP_NODE_BUDGET
    # frame: [info, position, end, output dict, AnyValue nesting level]
    stack: list[list[Any]] = [[_info(ExportLogsServiceRequest.DESCRIPTOR), 0, len(data), root, 0]]
    raw: Any  # an int (varint), bytes (fixed) or a (start, end) slice (length-delimited)
    while stack:
        frame = stack[-1]
        info, pos, end, out, level = frame
        if pos >= end:
            stack.pop()
            continue
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise Malformed("field number 0")
        if wire == 0:
            raw, pos = _varint(data, pos, end)
        elif wire == 1:
            raw, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            raw, pos = data[pos : pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(data, pos, end)
            raw, pos = (pos, pos + size), pos + size
        else:
            raise Malformed(f"wire type {wire}")
        if pos > end:
            raise Malformed("a field runs past the end of its message")
        frame[1] = pos
        field = info.fields.get(number)
        if field is None:
            continue  # unknown fields are ignored, as OTLP requires
        name, ftype, repeated, sub, oneof = field
        if ftype == _T.TYPE_MESSAGE:
            if wire != 2:
                continue
            child: dict[str, Any] = {}
            child_level = level + 1 if sub.is_any else level
            if sub.is_any and child_level > MAX_DEPTH:
                if budget <= 0:
                    child = {"stringValue": _SKIPPED}
                    _store(out, info, name, repeated, oneof, child)
                    continue
                budget -= 1
            _store(out, info, name, repeated, oneof, child)
            stack.append([sub, raw[0], raw[1], child, child_level])
            continue
        if wire == 2 and ftype not in (_T.TYPE_STRING, _T.TYPE_BYTES):
            continue  # packed repeated numbers: the OTLP log schema has none
        value = _scalar(ftype, wire, data[raw[0] : raw[1]] if wire == 2 else raw)
        if value is not None:
            _store(out, info, name, repeated, oneof, value)
    return root


def _store(out: dict[str, Any], info: _Info, name: str, repeated: bool, oneof: str | None, value: Any) -> None:
    if repeated:
        out.setdefault(name, []).append(value)
        return
    if oneof is not None:
        for other in info.oneofs[oneof]:
            out.pop(other, None)
    out[name] = value


# ---------------------------------------------------------------------- JSON
_JSON_TOKEN = re.compile(
    r'[ \t\n\r]*(?:([\[\]{}:,])|("(?:[^"\\]|\\.)*")|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)'
    r"|(true|false|null|NaN|-?Infinity))",
    re.S,
)
_LITERALS = {"true": True, "false": False, "null": None}


def decode_json(body: bytes) -> Any:
    """A JSON body read without UTF-8 checks (undecodable bytes and lone surrogate escapes
    become lone surrogates) and at any nesting depth. Raises ``ValueError`` if it is not JSON."""
    text = body.decode("utf-8", "surrogateescape")
    try:
        return json.loads(text)
    except RecursionError:
        return _json_iterative(text)


def _json_iterative(text: str) -> Any:
    """JSON without recursion; containers nested deeper than JSON_MAX_NESTING are kept as raw text.

    Only reached for bodies the standard library refused for their depth; the
    request still goes through ``json_format``'s schema checks afterwards.
    """
    stack: list[list[Any]] = []  # [container, pending object key]
    pos = 0
    while True:
        match = _JSON_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"not JSON at character {pos}")
        pos = match.end()
        punct, string, number, literal = match.groups()
        value: Any
        if punct in ("[", "{"):
            if len(stack) < JSON_MAX_NESTING:
                stack.append([[] if punct == "[" else {}, None])
                continue
            start = match.start(1)
            pos = _skip_json(text, pos)
            value = text[start : min(pos, start + MAX_DEEP_TEXT)]
        elif punct in ("]", "}"):
            if not stack:
                raise ValueError(f"unbalanced {punct!r} at character {pos}")
            value = stack.pop()[0]
        elif punct is not None:  # ":" and ","
            continue
        elif string is not None:
            value = json.loads(string, strict=False)
            if stack and isinstance(stack[-1][0], dict) and stack[-1][1] is None:
                stack[-1][1] = value  # an object member's key
                continue
        elif number is not None:
            value = json.loads(number)
        else:
            value = _LITERALS[literal] if literal in _LITERALS else float(literal)
        if not stack:
            if text[pos:].strip(" \t\n\r"):
                raise ValueError(f"extra data at character {pos}")
            return value
        top = stack[-1]
        if isinstance(top[0], dict):
            if top[1] is None:
                raise ValueError(f"an object member without a key at character {pos}")
            top[0][top[1]] = value
            top[1] = None
        else:
            top[0].append(value)


def _skip_json(text: str, pos: int) -> int:
    """The position after the container opened just before ``pos``."""
    depth = 1
    while depth:
        match = _JSON_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"not JSON at character {pos}")
        pos = match.end()
        punct = match.group(1)
        if punct in ("[", "{"):
            depth += 1
        elif punct in ("]", "}"):
            depth -= 1
    return pos


# ---------------------------------------------------------------------- repair
def repair(data: Any) -> bool:
    """Make every log record in an OTLP/JSON-mapping request storable, noting each change per record.

    Returns whether anything had to change (if not, the strict decoder refused the
    body for another reason, and so should the caller).
    """
    if not isinstance(data, dict):
        return False
    changed = False
    for resource_logs in _items(data, "resourceLogs"):
        resource_notes: list[str] = []
        resource = resource_logs.get("resource")
        if isinstance(resource, dict):
            _fix_kvs(resource.get("attributes"), "resource", resource_notes, 1, prefix="resource.")
        for scope_logs in _items(resource_logs, "scopeLogs"):
            scope_notes = list(resource_notes)
            scope = scope_logs.get("scope")
            if isinstance(scope, dict):
                _fix_field(scope, "name", "scope", scope_notes)
            for record in _items(scope_logs, "logRecords"):
                notes = list(scope_notes)
                _fix_field(record, "severityText", "severity_text", notes)
                _fix_field(record, "eventName", "event_name", notes)
                body = record.get("body")
                if isinstance(body, dict):
                    _fix_any(body, "message" if "stringValue" in body else "body", 1, notes)
                attributes = record.get("attributes")
                _fix_kvs(attributes, "attributes", notes, 1, prefix="")
                if notes:
                    _add_notes(record, notes)
                    changed = True
    return _replace_surrogates_everywhere(data) or changed


def _items(container: Any, key: str) -> list[dict[str, Any]]:
    value = container.get(key) if isinstance(container, dict) else None
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _fix_field(message: dict[str, Any], key: str, path: str, notes: list[str]) -> None:
    value = message.get(key)
    if isinstance(value, str):
        message[key] = unicode_text(value, path, notes)


def _fix_kvs(kvs: Any, where: str, notes: list[str], level: int, *, prefix: str) -> None:
    """Key-value pairs: the top level of attributes (``prefix``) or the members of a map (``where``)."""
    if not isinstance(kvs, list):
        return
    for kv in kvs:
        if not isinstance(kv, dict):
            continue
        key = kv.get("key")
        if isinstance(key, str):
            key = kv["key"] = unicode_text(key, f"{where}: key", notes)
            path = f"{prefix}{key}" if level == 1 else f"{where}.{key}"
        else:
            path = where
        value = kv.get("value")
        if isinstance(value, dict):
            _fix_any(value, path, level, notes)


def _fix_any(value: dict[str, Any], path: str, level: int, notes: list[str]) -> None:
    """One AnyValue at nesting ``level`` (an attribute's own value is level 1)."""
    if "stringValue" in value:
        text = value["stringValue"]
        if isinstance(text, str):
            value["stringValue"] = unicode_text(text, path, notes)
        return
    is_map = "kvlistValue" in value
    if not is_map and "arrayValue" not in value:
        return
    if level > MAX_DEPTH:
        text = cut_deep(_any_to_python(value), path, notes)
        value.clear()
        value["stringValue"] = text
        return
    inner = value.get("kvlistValue" if is_map else "arrayValue")
    items = inner.get("values") if isinstance(inner, dict) else None
    if not isinstance(items, list):
        return
    if is_map:
        _fix_kvs(items, path, notes, level + 1, prefix="")
    else:
        for index, item in enumerate(items):
            if isinstance(item, dict):
                _fix_any(item, f"{path}[{index}]", level + 1, notes)


def _any_to_python(value: dict[str, Any]) -> Any:
    """An AnyValue (OTLP/JSON mapping) as the Python value the ingest would hold, without recursion."""
    result: list[Any] = []
    # (AnyValue or None, where to put it: (container, key or None))
    todo: list[tuple[Any, Any, Any]] = [(value, result, None)]
    while todo:
        node, container, key = todo.pop()
        converted: Any
        if not isinstance(node, dict):
            converted = node if isinstance(node, str) else None  # raw text kept by the JSON reader
        elif "kvlistValue" in node:
            converted = {}
            inner = node["kvlistValue"]
            members = inner.get("values") if isinstance(inner, dict) else None
            pending = []
            for kv in members if isinstance(members, list) else []:
                if isinstance(kv, dict) and isinstance(kv.get("key"), str):
                    converted.setdefault(kv["key"], None)  # a repeated key keeps its first place ...
                    pending.append((kv.get("value"), converted, kv["key"]))
            todo.extend(reversed(pending))  # ... and its last value, as a dict built in order would
        elif "arrayValue" in node:
            items = (node["arrayValue"] or {}).get("values") if isinstance(node["arrayValue"], dict) else None
            items = items if isinstance(items, list) else []
            converted = [None] * len(items)
            todo.extend((item, converted, i) for i, item in reversed(list(enumerate(items))))
        elif "stringValue" in node:
            converted = node["stringValue"]
        elif "boolValue" in node:
            converted = bool(node["boolValue"])
        elif "intValue" in node:
            converted = _int(node["intValue"])
        elif "doubleValue" in node:
            converted = _float(node["doubleValue"])
        elif "bytesValue" in node:
            converted = _bytes(node["bytesValue"])
        else:
            converted = None
        if key is None and container is result:
            result.append(converted)
        else:
            container[key] = converted
    return result[0] if result else None


def _int(raw: Any) -> Any:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return raw


def _float(raw: Any) -> Any:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return raw


def _bytes(raw: Any) -> Any:
    try:
        return base64.b64decode(raw)
    except (TypeError, ValueError):
        return raw


def _add_notes(record: dict[str, Any], notes: list[str]) -> None:
    """Put the notes in the record's ``otel_audit.input.problems`` attribute (after any it had)."""
    attributes = record.get("attributes")
    if not isinstance(attributes, list):
        attributes = record["attributes"] = []
    earlier: list[str] = []
    for kv in list(attributes):
        if isinstance(kv, dict) and kv.get("key") == A.INPUT_PROBLEMS:
            values = ((kv.get("value") or {}).get("arrayValue") or {}).get("values")
            texts = [v.get("stringValue") for v in values] if isinstance(values, list) else None
            if texts is not None and all(isinstance(t, str) for t in texts):
                earlier.extend(texts)
                attributes.remove(kv)
    attributes.append(
        {"key": A.INPUT_PROBLEMS, "value": {"arrayValue": {"values": [{"stringValue": n} for n in earlier + notes]}}}
    )


def _replace_surrogates_everywhere(data: Any) -> bool:
    """Fields no record stores (schema URLs, scope versions, ...) only need to be valid UTF-8."""
    changed = False
    todo = [data]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, str):
                if not value.isascii():
                    fixed = unicode_text(value, "", [])
                    if fixed is not value:
                        node[key] = fixed
                        changed = True
            elif isinstance(value, dict | list):
                todo.append(value)
    return changed
