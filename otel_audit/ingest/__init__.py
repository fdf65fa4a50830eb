"""The OTLP/HTTP ingest (``otel-audit serve``): audit records from any language.

Layers, each usable on its own:

* :mod:`~otel_audit.ingest.decode`: request bodies -> ``ExportLogsServiceRequest``
  (compression, protobuf, OTLP/JSON), every limit enforced;
* :mod:`~otel_audit.ingest.otlp`: OTLP records -> the inputs of the sealing core's
  ``RecordBuilder``, field by field as the in-process processor reads them;
* :mod:`~otel_audit.ingest.presealed`: records sealed elsewhere: checked, links
  tracked, stored under their own chain;
* :mod:`~otel_audit.ingest.service`: one request -> committed records, with
  admission control and idempotent retries;
* :mod:`~otel_audit.ingest.auth` and :mod:`~otel_audit.ingest.server`: bearer
  tokens, TLS, HTTP.
"""

from otel_audit.ingest.auth import TokenSet
from otel_audit.ingest.decode import RequestError, decode_request
from otel_audit.ingest.server import IngestServer, tls_context
from otel_audit.ingest.service import ExportResult, IngestConfig, IngestService

__all__ = [
    "ExportResult",
    "IngestConfig",
    "IngestServer",
    "IngestService",
    "RequestError",
    "TokenSet",
    "decode_request",
    "tls_context",
]
