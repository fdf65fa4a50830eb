"""The PostgreSQL sink: schema migrations, row projection, the background writer."""

from otel_audit.sink.schema import SCHEMA_VERSION, current_version, grant_reader, grant_writer, migrate
from otel_audit.sink.writer import PostgresSink, connect, target_fingerprint

__all__ = [
    "SCHEMA_VERSION",
    "PostgresSink",
    "connect",
    "current_version",
    "grant_reader",
    "grant_writer",
    "migrate",
    "target_fingerprint",
]
