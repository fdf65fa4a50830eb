"""How many audit records the OpenTelemetry JS SDK loses while ``otel-audit serve`` is down.

Runs the Express example (``examples/express-audit``) against a real
``otel-audit serve`` process, sends a steady stream of audited requests
(default 50/s for 14 s, 700 requests), stops serve for ``--outage`` seconds in
the middle (SIGKILL: a crash, not a drain) and starts it again on the same
port, lets the app flush, and counts which requests have their record in
PostgreSQL. Once with the SDK's defaults, once with the exporter's
``timeoutMillis`` raised to 30 s (``AUDIT_EXPORT_TIMEOUT_MILLIS=30000``).

    python benchmarks/node_outage.py [--outage 10] [--rate 50] [--seconds 14]

Needs node and npm (``npm ci`` in examples/express-audit first). Database:
``OTEL_AUDIT_BENCH_DSN`` or an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fresh_schema, report, where
from tests.web_harness import request

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "express-audit"
TOKEN = "outage-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(dsn: str, port: int, spool: Path, tokens: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_audit",
            "serve",
            "--dsn",
            dsn,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token-file",
            str(tokens),
            "--spool-dir",
            str(spool),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"otel-audit serve did not start: {process.stderr.read() if process.stderr else ''}")


def run(dsn: str, *, outage: float, rate: float, seconds: float, env: dict[str, str]) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="otel-audit-outage-"))
    tokens = work / "tokens"
    tokens.write_text(TOKEN + "\n")
    port = free_port()
    serve = start_serve(dsn, port, work / "spool", tokens)
    app = subprocess.Popen(
        ["node", "app.js"],
        cwd=EXAMPLE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PORT": "0",
            "OTEL_SERVICE_NAME": "outage-js",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"http://127.0.0.1:{port}/v1/logs",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS": f"Authorization=Bearer {TOKEN}",
            **env,
        },
    )
    line = app.stdout.readline() if app.stdout else ""
    app_port = int(line.split()[1])
    sent: list[str] = []
    errors = 0
    total = int(rate * seconds)
    start = time.monotonic()
    outage_from = (seconds - outage) / 2  # the outage sits in the middle of the sending phase

    def outage_control() -> None:
        nonlocal serve
        time.sleep(outage_from)
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        time.sleep(outage)
        serve = start_serve(dsn, port, work / "spool", tokens)

    control = threading.Thread(target=outage_control)
    control.start()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        rid = uuid.uuid4().hex
        try:
            status, _ = request(
                app_port, "GET", f"/patients/p{i}", {"Authorization": "Bearer user-1", "X-Request-Id": rid}, timeout=10
            )
            if status == 200:
                sent.append(rid)
        except OSError:
            errors += 1
    control.join()
    time.sleep(2)
    app.send_signal(signal.SIGTERM)  # flushes what the SDK still holds
    _, app_err = app.communicate(timeout=120)
    serve.send_signal(signal.SIGTERM)
    serve.wait(60)
    with psycopg.connect(dsn) as conn:
        stored = {r for (r,) in conn.execute("SELECT attributes->>'request.id' FROM audit_logs")}
        count = conn.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
    lost = [r for r in sent if r not in stored]
    return {
        "sent": len(sent),
        "stored": len(stored & set(sent)),
        "lost": len(lost),
        "rows": count,
        "client_errors": errors,
        "diag_lines": sum(1 for ln in app_err.splitlines() if ln.strip()),
        "diag_first": next((ln.strip()[:160] for ln in app_err.splitlines() if ln.strip()), ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds serve is down")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=14.0, help="length of the sending phase")
    args = parser.parse_args()
    if not (EXAMPLE / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True)
    for label, env in (
        ("JS SDK defaults (exporter timeoutMillis 10 s)", {}),
        ("exporter timeoutMillis 30 s", {"AUDIT_EXPORT_TIMEOUT_MILLIS": "30000"}),
    ):
        result = run(fresh_schema(), outage=args.outage, rate=args.rate, seconds=args.seconds, env=env)
        report(
            f"{label}; serve down {args.outage:g} s of {args.seconds:g} s at {args.rate:g} req/s ({where()})",
            [(k, str(v)) for k, v in result.items()],
        )


if __name__ == "__main__":
    main()
