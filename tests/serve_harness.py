"""``otel-audit serve`` as a real process: start it, talk to it, stop it with SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from tests.ingest_harness import PROTOBUF, Response

ROOT = Path(__file__).resolve().parents[1]


class ServeProcess:
    """One ``python -m otel_audit serve`` process on an ephemeral port; its stderr is collected."""

    def __init__(self, dsn: str, spool: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
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
                "0",
                "--spool-dir",
                str(spool),
                *args,
            ],
            env=full_env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        while True:  # warnings may come before the start line
            line = self.proc.stderr.readline()
            if not line:
                self.proc.wait(timeout=30)
                raise AssertionError(
                    f"otel-audit serve did not start (exit {self.proc.returncode}): {''.join(self.lines)}"
                )
            self.lines.append(line)
            if "listening on " in line:
                break
        self.started = line
        self.url = line.split("listening on ", 1)[1].split(" ", 1)[0]
        self.chain_id = line.split("(chain ", 1)[1].split(";", 1)[0]
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)  # type: ignore[arg-type]
        self._reader.start()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def post(
        self,
        body: bytes,
        *,
        token: str | None,
        content_type: str = PROTOBUF,
        headers: dict[str, str] | None = None,
        path: str = "/v1/logs",
        method: str = "POST",
    ) -> Response:
        sent = {"Content-Type": content_type, **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=sent)
            reply = conn.getresponse()
            return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
        finally:
            conn.close()

    def export(self, request: ExportLogsServiceRequest, *, token: str | None) -> Response:
        return self.post(request.SerializeToString(), token=token)

    def stats(self, token: str | None) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", "/stats", headers={"Authorization": f"Bearer {token}"} if token else {})
            reply = conn.getresponse()
            body = reply.read()
        finally:
            conn.close()
        assert reply.status == 200, body
        return orjson.loads(body)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def wait_until(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m otel_audit ARGS`` as an auditor runs it."""
    return subprocess.run(
        [sys.executable, "-m", "otel_audit", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def verify_cli(
    dsn: str, keys: Sequence[Path] = (), witnesses: Sequence[Path] = (), *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["verify", "--dsn", dsn, "--no-progress"]
    for key in keys:
        args += ["--trusted-key", str(key)]
    for witness in witnesses:
        args += ["--witness", str(witness)]
    return run_cli(*args, *extra)
