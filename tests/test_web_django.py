"""Django under waitress, in a child process of its own, against real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("django")
pytest.importorskip("waitress")

from tests import web_scenario
from tests.harness import rows, verify
from tests.web_harness import request

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parent.parent


class DjangoServer:
    def __init__(self, dsn: str, spool_dir: Path, trace: str | None = None, server: str = "waitress") -> None:
        env = {**os.environ, "OTEL_AUDIT_DSN": dsn, "OTEL_AUDIT_SPOOL_DIR": str(spool_dir), "WEB_SERVER": server}
        if trace:
            env["WEB_TRACE"] = trace
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.web_django_app"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the Django app did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> int:
        if self.process.stdin:
            self.process.stdin.close()
        return self.process.wait(60)


@pytest.fixture(params=["waitress", "uvicorn"])
def server(db: str, spool_dir: Path, request: pytest.FixtureRequest) -> Iterator[DjangoServer]:
    """Django as WSGI under waitress, and as ASGI under uvicorn (the middleware adapted by Django)."""
    app = DjangoServer(db, spool_dir, server=request.param)
    yield app
    if app.process.poll() is None:
        app.process.kill()


def test_django_under_a_real_server_one_record_per_request(db: str, server: DjangoServer) -> None:
    traffic = web_scenario.drive(server.port)
    rid = web_scenario.disconnect(server.port)
    status, _ = request(server.port, "POST", "/exports/r-7", {"Authorization": "Bearer user-9"})
    assert status == 200
    # Fail-closed: committed before the response, visible from here without waiting.
    assert rows(db, "SELECT actor_id, resource_type, result FROM audit_logs WHERE action = 'report.export'") == [
        ("user-9", "report", "success")
    ]
    web_scenario.wait_stored(db, lambda found: rid in found)
    assert server.stop() == 0  # the child flushed everything at shutdown
    web_scenario.check(db, traffic, rid)
    assert verify(db).ok


@pytest.mark.parametrize("trace", ["manual", "django"])
def test_django_trace_correlation(db: str, spool_dir: Path, trace: str) -> None:
    if trace == "django":
        pytest.importorskip("opentelemetry.instrumentation.django")  # in the test extra
    app = DjangoServer(db, spool_dir, trace)
    try:
        spans = {}
        for path, method in (("/patients/p1", "GET"), ("/patients/p2/notes", "POST")):
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
            conn.request(method, path, headers={"Authorization": "Bearer user-1"})
            response = conn.getresponse()
            response.read()
            spans[path] = tuple(response.getheader("X-Span").split("-"))
            conn.close()
    finally:
        assert app.stop() == 0
    stored = {a: (t, s) for a, t, s in rows(db, "SELECT action, trace_id, span_id FROM audit_logs")}
    assert stored["GET /patients/{patient_id}"] == spans["/patients/p1"]
    assert stored["POST /patients/{patient_id}/notes"] == spans["/patients/p2/notes"]
    assert stored["note.create"] == spans["/patients/p2/notes"]
