"""What an application developer does, in a fresh interpreter each time (configure() is process-global)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.harness import rows, verify

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_python(code: str, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_the_readme_example_works_as_written(db: str, tmp_path: Path) -> None:
    """Default root logger (WARNING), OTEL_AUDIT_DSN from the environment, shutdown at exit."""
    code = """
        import logging, otel_audit
        audit = otel_audit.configure(service_name="billing")
        log = logging.getLogger("billing")
        log.info("patient record viewed", extra={
            "audit.action": "read", "audit.actor.id": "user-123",
            "audit.resource.type": "patient_record", "audit.resource.id": "patient-456",
            "audit.result": "success", "client.address": "10.1.2.3"})
        logging.getLogger("noise").info("this must not reach stderr")
        # no explicit shutdown: the atexit hook flushes
    """
    result = run_python(code, {"OTEL_AUDIT_DSN": db, "OTEL_AUDIT_SPOOL_DIR": str(tmp_path / "spool")})
    assert result.returncode == 0, result.stderr
    assert "must not reach" not in result.stderr
    assert rows(db, "SELECT actor_id, service_name, ip_address::text FROM audit_logs") == [
        ("user-123", "billing", "10.1.2.3/32")
    ]
    assert verify(db).ok


def test_existing_provider_and_exporter_get_the_seal(db: str, tmp_path: Path) -> None:
    """An app that already configured OTel with an exporter: configure() joins it and runs first."""
    code = """
        import logging, sys, otel_audit
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        provider = LoggerProvider()
        exporter = InMemoryLogRecordExporter()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        _logs.set_logger_provider(provider)
        logging.getLogger().addHandler(LoggingHandler(logger_provider=provider))
        audit = otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2])
        assert audit.handler is None, "a second handler would seal every record twice"
        logging.getLogger("x").warning("exported", extra={"audit.action": "read", "audit.actor.id": "u",
            "audit.resource.type": "t", "audit.resource.id": "1", "audit.result": "success"})
        assert audit.shutdown()
        (record,) = [r for r in exporter.get_finished_logs() if "audit.action" in r.log_record.attributes]
        print(record.log_record.attributes["audit.integrity.value"])
    """
    result = run_python(code, {}, db, str(tmp_path / "spool"))
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT hash FROM audit_logs") == [(result.stdout.strip(),)]


def test_otlp_exporter_is_installed_when_the_environment_asks(db: str, tmp_path: Path) -> None:
    code = """
        import sys, otel_audit
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        audit = otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2])
        processors = audit.logger_provider._multi_log_record_processor._log_record_processors
        print([type(p).__name__ for p in processors])
        audit.shutdown(timeout=5)
    """
    with_otlp = run_python(code, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, db, str(tmp_path / "a"))
    assert with_otlp.returncode == 0, with_otlp.stderr
    assert with_otlp.stdout.strip() == "['AuditLogRecordProcessor', 'BatchLogRecordProcessor']"
    without = run_python(code, {}, db, str(tmp_path / "b"))
    assert without.stdout.strip() == "['AuditLogRecordProcessor']"


def test_missing_dsn_is_a_clear_error(tmp_path: Path) -> None:
    result = run_python("import otel_audit; otel_audit.configure()", {})
    assert result.returncode != 0
    assert "OTEL_AUDIT_DSN" in result.stderr


def test_opentelemetry_instrument_wires_it_with_no_code_change(db: str, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
        import logging
        logging.getLogger("shop").warning("order refunded", extra={"audit.action": "refund",
            "audit.actor.id": "clerk-7", "audit.resource.type": "order", "audit.resource.id": "o-1",
            "audit.result": "success"})
        """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_DSN": db,
        "OTEL_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    result = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(app)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT action, actor_id, service_name FROM audit_logs") == [("refund", "clerk-7", "shop")]


def test_configure_twice_is_refused_until_shutdown(db: str, tmp_path: Path) -> None:
    code = """
        import logging, sys, otel_audit
        from otel_audit.errors import AuditConfigurationError
        first = otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2])
        try:
            otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2])
        except AuditConfigurationError as exc:
            print("refused:", "already called" in str(exc))
        first.shutdown()
        second = otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2])
        logging.getLogger("x").warning("once", extra={"audit.action": "read", "audit.actor.id": "u",
            "audit.resource.type": "t", "audit.resource.id": "1", "audit.result": "success"})
        print("stats:", second.stats()["dropped"], second.shutdown())
    """
    result = run_python(code, {}, db, str(tmp_path / "spool"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused: True", "stats: 0 True"]
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(1,)]
