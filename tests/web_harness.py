"""Real servers and a real HTTP client for the web middleware tests.

The audited application runs in a real server (uvicorn, waitress) on a loopback
port, in this process (ASGI, Flask) or in a child process (Django), and is
driven over real sockets, concurrently. Records go through ``logging`` and the
OpenTelemetry LoggingHandler on the root logger, as in an application.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_audit


class Audited:
    """otel-audit configured for one test: its own providers; records reach it through the root logger."""

    def __init__(self, dsn: str, spool_dir: Path, **options: Any) -> None:
        self.provider = LoggerProvider(resource=Resource.create({"service.name": "web"}), shutdown_on_exit=False)
        options.setdefault("metrics", False)
        self.audit = otel_audit.configure(
            dsn, logger_provider=self.provider, install_handler=False, spool_dir=spool_dir, **options
        )
        self.handler = LoggingHandler(logger_provider=self.provider)
        logging.getLogger().addHandler(self.handler)  # removed by the conftest fixture
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))

    def close(self) -> bool:
        logging.getLogger().removeHandler(self.handler)
        return self.audit.shutdown(timeout=30)


# ----------------------------------------------------------------------------- servers
class Uvicorn:
    def __init__(self, app: Any) -> None:
        import uvicorn

        # proxy_headers=False: uvicorn would otherwise rewrite the client address itself from
        # X-Forwarded-For for peers in its own forwarded_allow_ips (127.0.0.1 by default).
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", proxy_headers=False, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


class Waitress:
    def __init__(self, app: Any, threads: int = 8) -> None:
        from waitress import create_server

        self.server = create_server(app, host="127.0.0.1", port=0, threads=threads, clear_untrusted_proxy_headers=False)
        self.port = self.server.socket.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.run()
        except OSError:
            if not self.stopping:  # closing the socket under the poll loop ends it with EBADF
                raise

    def stop(self) -> None:
        self.stopping = True
        self.server.task_dispatcher.shutdown()
        self.server.close()
        self.thread.join(5)


# ----------------------------------------------------------------------------- client
def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    source: str = "127.0.0.1",
    body: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def concurrently(calls: Iterable[Callable[[], Any]], workers: int = 16) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda call: call(), list(calls)))


def disconnect_mid_stream(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """GET a streamed response, read its first bytes, then go away (RST, not a polite close)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = b""
    while b"chunk" not in received:
        data = sock.recv(4096)
        if not data:
            break
        received += data
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    return received


def request_id() -> str:
    return uuid.uuid4().hex


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
