"""OTLP log records -> the inputs of :class:`~otel_audit.core.record.RecordBuilder`.

The in-process processor builds a record from an SDK ``LogRecord``; this
module reads the same information from its OTLP encoding, field by field, so
that a record logged in any language is built exactly as the processor would
have built it:

=================================  =============================================
RecordBuilder input                OTLP source
=================================  =============================================
attributes                         ``log_record.attributes`` (AnyValue -> str,
                                   bool, int, float, bytes, list, dict; an
                                   empty AnyValue -> None)
time_unix_nano                     ``time_unix_nano``, else ``observed_time_unix_nano``,
                                   else the time of arrival
body                               ``body`` (absent -> None)
severity_text / severity_number    ``severity_text`` / ``severity_number``
                                   (empty / 0 = unset -> None)
event_name                         ``event_name`` (empty -> None)
scope                              ``scope.name`` (empty -> None)
trace_id, span_id, trace_flags     ``trace_id``, ``span_id`` (big-endian), ``flags & 0xFF``
service_name, service_instance_id, resource attributes ``service.name``,
host_name                          ``service.instance.id``, ``host.name``
resource                           every other resource attribute, kept in
                                   ``attributes`` as ``resource.<key>``
                                   (``resource.service.version``)
problems                           ``dropped_attributes_count`` (as the processor notes
                                   the SDK's attribute limits)
=================================  =============================================

Two things the processor knows are not in OTLP: baggage (its fallback for
``session.id`` / ``user.id``) and the emitting host's name when the Resource
has none. The ingest leaves those fields unset rather than inventing them.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otel_audit.core import attributes as A
from otel_audit.core.record import resource_attributes

__all__ = ["any_value", "attribute_map", "builder_context", "resource_extra", "resource_fields"]

_INPUT_FIELDS = A.INPUT_FIELDS


def any_value(value: AnyValue) -> Any:
    """The Python value an OTel SDK would hold for an OTLP ``AnyValue``."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return value.string_value
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def attribute_map(record: LogRecord, max_attributes: int, problems: list[str]) -> dict[str, Any]:
    """The record's attributes as a dict (the last value wins for a repeated key).

    More than ``max_attributes`` top-level attributes: the audit input
    attributes are all kept, of the others only as many as fit; the number
    dropped is noted (as the SDK's own attribute limits are). The limit bounds
    the work of shrinking an oversized record, which grows with the square of
    the number of attributes.
    """
    kvs = record.attributes
    if len(kvs) <= max_attributes:
        out = {kv.key: any_value(kv.value) for kv in kvs}
        if len(out) != len(kvs):
            _note_repeated(kvs, problems)
        return out
    out = {}
    others = 0
    dropped = 0
    budget = max_attributes - sum(1 for kv in kvs if kv.key in _INPUT_FIELDS)
    for kv in kvs:
        key = kv.key
        if key not in _INPUT_FIELDS and key not in out:
            if others >= budget:
                dropped += 1
                continue
            others += 1
        out[key] = any_value(kv.value)
    problems.append(
        f"{dropped} attribute(s) beyond the ingest's limit of {max_attributes} attributes per record were "
        "dropped before sealing"
    )
    return out


def _note_repeated(kvs: Any, problems: list[str]) -> None:
    seen: dict[str, int] = {}
    for kv in kvs:
        seen[kv.key] = seen.get(kv.key, 0) + 1
    for key, count in seen.items():
        if count > 1:
            problems.append(f"attribute {key!r} appeared {count} times in the OTLP record; the last value was kept")


def resource_fields(resource_attributes: Any) -> tuple[Any, Any, Any]:
    """(service.name, service.instance.id, host.name) of an OTLP resource, None when absent."""
    wanted = {A.SERVICE_NAME: None, A.SERVICE_INSTANCE_ID: None, A.HOST_NAME: None}
    for kv in resource_attributes:
        if kv.key in wanted:
            wanted[kv.key] = any_value(kv.value)
    return wanted[A.SERVICE_NAME], wanted[A.SERVICE_INSTANCE_ID], wanted[A.HOST_NAME]


def resource_extra(attributes: Any) -> dict[str, Any]:
    """The other resource attributes, prefixed ``resource.``, as the processor keeps them
    (:func:`otel_audit.core.record.resource_attributes`); the last value wins for a repeated key."""
    return resource_attributes({kv.key: any_value(kv.value) for kv in attributes})


def builder_context(record: LogRecord, arrival_ns: int) -> dict[str, Any]:
    """Keyword arguments for ``RecordBuilder.build`` taken from the record itself."""
    trace_id = int.from_bytes(record.trace_id, "big") if record.trace_id else 0
    return {
        "time_unix_nano": record.time_unix_nano or record.observed_time_unix_nano or arrival_ns,
        "body": any_value(record.body) if record.HasField("body") else None,
        "severity_text": record.severity_text or None,
        "severity_number": record.severity_number or None,
        "event_name": record.event_name or None,
        "trace_id": trace_id,
        "span_id": int.from_bytes(record.span_id, "big") if record.span_id else 0,
        "trace_flags": record.flags & 0xFF if trace_id else None,
    }
