"""otel-audit: tamper-evident compliance audit logging for OpenTelemetry.

Applications keep using :mod:`logging`; records carrying ``audit.action`` are
sealed into a hash chain and written to an append-only PostgreSQL table, while
normal OTLP export continues::

    import logging, otel_audit
    audit = otel_audit.configure(dsn="postgresql://...", service_name="billing")
    logging.getLogger("billing").info("patient record viewed", extra={
        "audit.action": "read", "audit.actor.id": "user-123",
        "audit.resource.type": "patient_record", "audit.resource.id": "patient-456",
        "audit.result": "success"})
    audit.shutdown()
"""

from otel_audit.configuration import AuditHandle, configure
from otel_audit.context import audit_context, update_audit_context
from otel_audit.errors import (
    AuditConfigurationError,
    AuditError,
    AuditNotCommitted,
    AuditRecordInvalid,
    SpoolFull,
)
from otel_audit.inputs import AuditInputFilter
from otel_audit.processor import AuditLogRecordProcessor

__version__ = "0.1.0"

__all__ = [
    "AuditConfigurationError",
    "AuditError",
    "AuditHandle",
    "AuditInputFilter",
    "AuditLogRecordProcessor",
    "AuditNotCommitted",
    "AuditRecordInvalid",
    "SpoolFull",
    "__version__",
    "audit_context",
    "configure",
    "update_audit_context",
]
