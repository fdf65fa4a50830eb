"""OpenTelemetry metrics about the audit pipeline itself.

Instruments are observable (read from :class:`~otel_audit.stats.PipelineStats`
at collection time), so they cost nothing on the logging hot path. They are
registered on the global MeterProvider; without a configured SDK they are
no-ops, and they start reporting once a MeterProvider is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from otel_audit.processor import AuditLogRecordProcessor

__all__ = ["METRICS", "register_pipeline_metrics"]

#: name -> (instrument kind, unit, description, stats key)
METRICS: dict[str, tuple[str, str, str, str]] = {
    "otel_audit.records.accepted": ("counter", "{record}", "Audit records sealed and spooled", "accepted"),
    "otel_audit.records.invalid": ("counter", "{record}", "Audit records stored flagged as invalid", "invalid"),
    "otel_audit.records.committed": ("counter", "{record}", "Audit records committed to PostgreSQL", "committed"),
    "otel_audit.records.quarantined": (
        "counter",
        "{record}",
        "Audit records PostgreSQL refused permanently (kept in audit_quarantine)",
        "quarantined",
    ),
    "otel_audit.records.dropped": (
        "counter",
        "{record}",
        "Audit records lost (spool full with when_full=drop)",
        "dropped",
    ),
    "otel_audit.checkpoints": ("counter", "{checkpoint}", "Signed checkpoints written to the spool", "checkpoints"),
    "otel_audit.witness.failures": (
        "counter",
        "{checkpoint}",
        "Checkpoints a witness could not store (retried with the next checkpoint)",
        "witness_failures",
    ),
    "otel_audit.spool.bytes": ("gauge", "By", "Bytes in the spool not yet committed", "spool_bytes"),
    "otel_audit.spool.oldest_uncommitted_age": (
        "gauge",
        "s",
        "Age of the oldest audit record not yet committed",
        "oldest_uncommitted_age_seconds",
    ),
    "otel_audit.sink.last_commit_age": ("gauge", "s", "Seconds since the last successful commit", "last_commit_age"),
}


def register_pipeline_metrics(processor: AuditLogRecordProcessor, meter_provider: Any = None) -> None:
    meter = metrics.get_meter("otel_audit", meter_provider=meter_provider)
    for name, (kind, unit, description, key) in METRICS.items():
        callback = _callback(processor, key)
        if kind == "counter":
            meter.create_observable_counter(name, callbacks=[callback], unit=unit, description=description)
        else:
            meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)


def _callback(processor: AuditLogRecordProcessor, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        snapshot = processor.pipeline.snapshot()
        if key == "last_commit_age":
            last = snapshot.get("last_commit_unix")
            value = None if last is None else max(0.0, time.time() - last)
        else:
            value = snapshot.get(key)
        if value is None:
            return []
        return [Observation(value, {"audit.chain.id": snapshot["chain_id"]})]

    return observe
