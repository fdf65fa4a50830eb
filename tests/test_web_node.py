"""The Express example (OpenTelemetry JS SDK, OTLP/HTTP) against ``otel-audit serve``, for real.

Skipped only when ``node`` or ``npm`` is not installed. ``node_modules`` is
installed once with ``npm ci`` from the committed lock file and kept under the
example directory (re-installed when the lock file changes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import web_scenario
from tests.harness import rows, verify
from tests.ingest_harness import TOKEN, Ingest

pytestmark = pytest.mark.storage

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "express-audit"
STAMP = EXAMPLE / "node_modules" / ".otel-audit-lock-sha256"


def _node_modules() -> None:
    lock = hashlib.sha256((EXAMPLE / "package-lock.json").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == lock:
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"npm ci failed in {EXAMPLE}:\n{result.stdout}\n{result.stderr}"
    STAMP.write_text(lock)


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the Express example cannot run (install Node.js 20+)")
    _node_modules()
    return node


class ExpressApp:
    def __init__(self, node: str, endpoint: str, **env: str) -> None:
        environment = {
            **os.environ,
            "PORT": "0",
            "HOST": "::",  # dual-stack: Node reports IPv4 peers as ::ffff:127.0.0.1
            "OTEL_SERVICE_NAME": "clinic-js",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS": f"Authorization=Bearer {TOKEN}",
            "OTEL_METRICS_EXPORTER": "none",
            "AUDIT_TRUSTED_PROXIES": web_scenario.TRUSTED_PROXY,
            "AUDIT_SCHEDULE_DELAY_MILLIS": "200",
            **env,
        }
        self.process = subprocess.Popen(
            [node, "app.js"], cwd=EXAMPLE, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the Express app did not start: {line!r} {self.process.stderr.read()}")
        self.port = int(line.split()[1])

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=60)
        return self.process.returncode, err


def test_express_app_through_serve_one_record_per_request(node: str, db: str, spool_dir: Path) -> None:
    ingest = Ingest(db, spool_dir)
    app = ExpressApp(node, f"http://127.0.0.1:{ingest.port}/v1/logs")
    try:
        traffic = web_scenario.drive(app.port, patients=300)
        rid = web_scenario.disconnect(app.port)
        web_scenario.wait_stored(db, lambda found: rid in found)  # the app has seen the disconnect
    finally:
        code, stderr = app.stop()  # SIGTERM: the app shuts its LoggerProvider down, which exports the rest
    assert code == 0, stderr
    assert ingest.close()
    found = web_scenario.check(db, traffic, rid)
    # Every record of a request carries the trace and span of its server span (instrumentation-http).
    stored = [r for rs in found.values() for r in rs]
    assert len(stored) == len(traffic.expected) + len(traffic.notes) + 1
    assert all(r["trace_id"] and len(r["trace_id"]) == 32 and r["span_id"] and len(r["span_id"]) == 16 for r in stored)
    note_spans = {r["trace_id"] for r in stored if r["action"] == "note.create"}
    post_spans = {r["trace_id"] for r in stored if r["action"] == "POST /patients/{patient_id}/notes"}
    assert note_spans == post_spans and len(note_spans) == len(traffic.notes)
    assert rows(db, "SELECT DISTINCT service_name FROM audit_logs") == [("clinic-js",)]
    assert verify(db).ok
