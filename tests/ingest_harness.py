"""An OTLP ingest under test (in this process, on an ephemeral port) and OTLP request builders."""

from __future__ import annotations

import gzip
import http.client
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes, _encode_value
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otel_audit.ingest import IngestConfig, IngestServer, IngestService, TokenSet
from otel_audit.pipeline import AuditPipeline, PipelineConfig
from otel_audit.spool.spool import SpoolConfig

TOKEN = "test-token-0123456789abcdef"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

AUDIT = {
    "audit.action": "read",
    "audit.actor.id": "user-123",
    "audit.resource.type": "patient_record",
    "audit.resource.id": "patient-456",
    "audit.result": "success",
}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def export_response(self) -> ExportLogsServiceResponse:
        return ExportLogsServiceResponse.FromString(self.body)


class Ingest:
    """``otel-audit serve`` in-process: a real pipeline to the test database, a real HTTP server."""

    def __init__(
        self,
        dsn: str,
        spool_dir: Path,
        *,
        tokens: tuple[str, ...] | TokenSet | None = (TOKEN,),
        ssl_context: ssl.SSLContext | None = None,
        pipeline: dict[str, Any] | None = None,
        **config: Any,
    ) -> None:
        self.pipeline = AuditPipeline(
            PipelineConfig(
                dsn=dsn,
                spool=SpoolConfig(directory=spool_dir, block_timeout=1.0),
                application_name="otel-audit-ingest",
                **(pipeline or {}),
            ),
            emitter={"service_name": "otel-audit-ingest"},
            emitter_kind="ingest",
        )
        self.service = IngestService(self.pipeline, IngestConfig(**config))
        self.server = IngestServer(
            self.service,
            tokens if isinstance(tokens, TokenSet) else TokenSet(tokens) if tokens else None,
            host="127.0.0.1",
            port=0,
            ssl_context=ssl_context,
        ).start()
        self.host, self.port = self.server.address
        self.tls = ssl_context is not None

    @property
    def chain_id(self) -> str:
        return self.pipeline.chain_id

    def connection(self, timeout: float = 60.0, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def post(
        self,
        body: bytes,
        *,
        content_type: str | None = PROTOBUF,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        path: str = "/v1/logs",
        method: str = "POST",
        gzip_body: bool = False,
        context: ssl.SSLContext | None = None,
    ) -> Response:
        sent = dict(headers or {})
        if content_type is not None:
            sent.setdefault("Content-Type", content_type)
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if gzip_body:
            body = gzip.compress(body)
            sent["Content-Encoding"] = "gzip"
        conn = self.connection(context=context)
        try:
            conn.request(method, path, body=body, headers=sent)
            reply = conn.getresponse()
            return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
        finally:
            conn.close()

    def export(self, request: ExportLogsServiceRequest, **kwargs: Any) -> Response:
        return self.post(request.SerializeToString(), **kwargs)

    def close(self) -> bool:
        return self.server.shutdown(timeout=30.0)


def record(
    attrs: dict[str, Any] | None = None,
    *,
    body: Any = "patient record viewed",
    time_ns: int | None = None,
    trace_id: bytes = b"",
    span_id: bytes = b"",
    flags: int = 0,
    event_name: str = "",
    severity_number: int = 9,
    severity_text: str = "INFO",
) -> LogRecord:
    return LogRecord(
        time_unix_nano=time_ns if time_ns is not None else time.time_ns(),
        observed_time_unix_nano=time.time_ns(),
        severity_number=severity_number,
        severity_text=severity_text,
        body=_encode_value(body),
        attributes=_encode_attributes(attrs or {}),
        trace_id=trace_id,
        span_id=span_id,
        flags=flags,
        event_name=event_name,
    )


def request(
    records: list[LogRecord],
    *,
    service: str = "billing-go",
    scope: str = "app",
    resource: dict[str, Any] | None = None,
) -> ExportLogsServiceRequest:
    attrs = {"service.name": service, **(resource or {})}
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=_encode_attributes(attrs)),
                scope_logs=[ScopeLogs(scope=InstrumentationScope(name=scope), log_records=records)],
            )
        ]
    )


def audit_request(n: int, *, tag: str = "r", **kwargs: Any) -> ExportLogsServiceRequest:
    """``n`` distinct audit records, each with a unique ``test.id`` attribute ``{tag}-{i}``."""
    base = time.time_ns()
    return request(
        [record({**AUDIT, "test.id": f"{tag}-{i}"}, time_ns=base + i) for i in range(n)],
        **kwargs,
    )
