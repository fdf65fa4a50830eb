"""An application under test: its own LoggerProvider, exporter and logger, wired by configure().

``configure()`` normally uses the process-global LoggerProvider and root logger;
tests pass their own so that each one starts clean inside one pytest process.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import psycopg
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

import otel_audit
from otel_audit.verify import VerificationReport, verify_database

VALID = {
    "audit.action": "read",
    "audit.actor.id": "user-123",
    "audit.resource.type": "patient_record",
    "audit.resource.id": "patient-456",
    "audit.result": "success",
    "client.address": "10.1.2.3",
}


class App:
    def __init__(self, dsn: str, spool_dir: Path, *, service: str = "billing", **options: Any) -> None:
        self.dsn = dsn
        self.exporter = InMemoryLogRecordExporter()
        self.provider = LoggerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
        # An exporter registered *before* configure(): the audit processor must still run first.
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))
        options.setdefault("metrics", False)
        self.audit = otel_audit.configure(
            dsn, logger_provider=self.provider, install_handler=False, spool_dir=spool_dir, **options
        )
        self.logger = logging.Logger(f"app.{uuid.uuid4().hex[:6]}", level=logging.DEBUG)
        # A handler the application creates itself, protected as the docs say.
        self.handler = self.audit.protect(LoggingHandler(logger_provider=self.provider))
        self.logger.addHandler(self.handler)

    def log(self, message: str = "patient record viewed", level: int = logging.INFO, **attrs: Any) -> None:
        self.logger.log(level, message, extra={**VALID, **attrs} if attrs.pop("_audit", True) else attrs)

    def close(self) -> bool:
        return self.audit.shutdown(timeout=30)


def fork_logging(app: App, records: int) -> int:
    """Fork; the child logs ``records`` records through the inherited configuration, closes it and
    exits without pytest's cleanup (exit code 0 when everything was committed). Returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for _ in range(records):
                app.log()
            code = 0 if app.close() else 2
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def verify(dsn: str) -> VerificationReport:
    with psycopg.connect(dsn) as conn:
        return verify_database(conn)


def rows(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()
