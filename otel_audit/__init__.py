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

from typing import TYPE_CHECKING, Any

# Every public exception (otel_audit.errors imports nothing, so this stays light).
from otel_audit.errors import (
    ArchiveError,
    ArchiveIntegrityError,
    AuditConfigurationError,
    AuditError,
    AuditNotCommitted,
    AuditRecordInvalid,
    CanonicalEncodingError,
    ChainClosed,
    CheckpointFormatError,
    CollectorConfigError,
    DatabaseNotReady,
    DatabaseUnavailable,
    InvalidInput,
    KeyErased,
    KeyStoreUnavailable,
    ManifestError,
    MissingTablesError,
    NotAnchoredError,
    NotFound,
    ProofUnavailable,
    RetentionFormatError,
    SpoolFull,
    StoreConflict,
    StoreError,
    WitnessError,
)

if TYPE_CHECKING:
    from otel_audit.configuration import AuditHandle, configure
    from otel_audit.context import audit_context, update_audit_context
    from otel_audit.inputs import AuditInputFilter
    from otel_audit.processor import AuditLogRecordProcessor

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ArchiveIntegrityError",
    "AuditConfigurationError",
    "AuditError",
    "AuditHandle",
    "AuditInputFilter",
    "AuditLogRecordProcessor",
    "AuditNotCommitted",
    "AuditRecordInvalid",
    "CanonicalEncodingError",
    "ChainClosed",
    "CheckpointFormatError",
    "CollectorConfigError",
    "DatabaseNotReady",
    "DatabaseUnavailable",
    "InvalidInput",
    "KeyErased",
    "KeyStoreUnavailable",
    "ManifestError",
    "MissingTablesError",
    "NotAnchoredError",
    "NotFound",
    "ProofUnavailable",
    "RetentionFormatError",
    "SpoolFull",
    "StoreConflict",
    "StoreError",
    "WitnessError",
    "__version__",
    "audit_context",
    "configure",
    "update_audit_context",
]

# Imported on first use (PEP 562): `import otel_audit` stays cheap for code that only needs a
# submodule or the errors (the CLI's light commands, the opentelemetry-instrument entry point when
# otel-audit is not enabled, the web middleware's import), instead of pulling in the OpenTelemetry
# SDK, psycopg and the pipeline (about 200 ms) up front.
_LAZY = {
    "configure": "otel_audit.configuration",
    "AuditHandle": "otel_audit.configuration",
    "AuditLogRecordProcessor": "otel_audit.processor",
    "AuditInputFilter": "otel_audit.inputs",
    "audit_context": "otel_audit.context",
    "update_audit_context": "otel_audit.context",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'otel_audit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
