"""The sealing core: record model, canonical bytes, hash chain.

Deliberately free of OpenTelemetry and PostgreSQL: the in-process processor,
the OTLP ingest service and the verifier all build on it.
"""

from otel_audit.core.canonical import CanonicalEncodingError, canonical_json, reference_canonical_json
from otel_audit.core.chain import KIND_CHECKPOINT, KIND_GENESIS, KIND_RECORD, Chain, SealedRecord, genesis_hash
from otel_audit.core.record import (
    GENESIS_DOMAIN,
    HASH_ALGORITHM,
    RECORD_DOMAIN,
    RECORD_FIELDS,
    RECORD_FORMAT,
    RecordBuilder,
    record_hash,
)

__all__ = [
    "GENESIS_DOMAIN",
    "HASH_ALGORITHM",
    "KIND_CHECKPOINT",
    "KIND_GENESIS",
    "KIND_RECORD",
    "RECORD_DOMAIN",
    "RECORD_FIELDS",
    "RECORD_FORMAT",
    "CanonicalEncodingError",
    "Chain",
    "RecordBuilder",
    "SealedRecord",
    "canonical_json",
    "genesis_hash",
    "record_hash",
    "reference_canonical_json",
]
