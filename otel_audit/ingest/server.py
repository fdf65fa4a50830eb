"""The OTLP/HTTP endpoint: ``POST /v1/logs`` on a standard-library threading HTTP server.

=====  ===========================================================  ============
code   when                                                         retried by
                                                                    a collector
=====  ===========================================================  ============
200    records committed (OTLP ``partial_success`` names rejected   -
       pre-sealed records)
400    malformed body, bad ids, bad chunked/gzip framing            no (dropped)
401    no or wrong bearer token (``WWW-Authenticate: Bearer``;     no (dropped)
       the body is read and dropped first, then the connection
       closes, so a client still sending gets the answer)
404    any path but ``/v1/logs`` (and ``/health``, ``/stats``)      no
405    a method other than POST on ``/v1/logs``                     no
411    neither Content-Length nor chunked transfer encoding         no
413    body, decompressed body or record count over the limits      no (dropped)
415    Content-Type other than protobuf/JSON, unknown encoding      no (dropped)
429    backlog too high, too many connections or bytes in flight;   yes
       ``Retry-After``
503    PostgreSQL down, commit not confirmed in time, shutting      yes
       down, spool full, unexpected internal error; ``Retry-After``
=====  ===========================================================  ============

Bad input never yields a 500 (the OpenTelemetry Collector treats 500 as
permanent and drops the batch): an unexpected error is logged with its
traceback and answered 503, which the sender retries.

Error bodies are a ``google.rpc.Status`` in the request's encoding (protobuf or
JSON), as OTLP/HTTP specifies; a success body is an
``ExportLogsServiceResponse``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from otel_audit.errors import InvalidInput
from otel_audit.ingest.auth import ANONYMOUS, TokenIdentity, TokenSet
from otel_audit.ingest.decode import JSON, PROTOBUF, RequestError, decode_request, encoding_of
from otel_audit.ingest.service import ExportResult, IngestConfig, IngestService

__all__ = ["IngestServer", "tls_context"]

_log = logging.getLogger("otel_audit.ingest")

LOGS_PATH = "/v1/logs"
_READ_CHUNK = 256 * 1024
#: A refused connection is drained after its answer until the client is silent this long
#: (see ``_Handler._lingering_close``).
_LINGER_SECONDS = 2.0

_GRPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    411: code_pb2.INVALID_ARGUMENT,
    413: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+) from a PEM certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], ingest: IngestServer) -> None:
        self.ingest = ingest
        self._slots = threading.BoundedSemaphore(ingest.config.max_connections)
        # Connections over the limit get a 429 from a thread of their own, up to as
        # many again; beyond that they are closed at once (the sender retries either way).
        self._refusals = threading.BoundedSemaphore(ingest.config.max_connections)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        context = self.ingest.ssl_context
        if context is not None:
            # The handshake happens on the connection's own thread (with its
            # timeout), so a slow client cannot stall the accept loop.
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.ingest.service.count("refused_busy")
            if self.ingest.ssl_context is None and self._refusals.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
            else:  # a plaintext answer means nothing to a TLS client; closing is the answer
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, sock: Any) -> None:
        try:
            self.ingest.refuse_connection(sock)
        finally:
            self.shutdown_request(sock)
            self._refusals.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("otel-audit serve: connection from %s ended with an error", client_address, exc_info=True)


class IngestServer:
    """``otel-audit serve``: the HTTP front of an :class:`IngestService`."""

    def __init__(
        self,
        service: IngestService,
        tokens: TokenSet | None,
        *,
        host: str = "0.0.0.0",
        port: int = 4318,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if tokens is None:
            _log.warning(
                "otel-audit serve: authentication is OFF (--insecure-no-auth): anyone who can reach "
                "this port can write audit records"
            )
        elif not len(tokens):
            raise InvalidInput("no ingest tokens: pass a TokenSet with at least one token, or None to disable auth")
        self.service = service
        self.config: IngestConfig = service.config
        self.tokens = tokens
        self.ssl_context = ssl_context
        self._inflight_lock = threading.Lock()
        self._inflight_bytes = 0
        self._active = 0
        self._idle = threading.Condition(threading.Lock())
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.ssl_context is not None else "http"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}{LOGS_PATH}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.25)

    def start(self) -> IngestServer:
        """Serve on a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="otel-audit-serve", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop accepting, let requests in progress finish, flush and stop the pipeline.

        Returns whether every sealed record was committed.
        """
        deadline = time.monotonic() + timeout
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, max(0.0, deadline - time.monotonic()))
        return self.service.close(max(1.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ helpers for the handler
    def reserve(self, size: int) -> bool:
        with self._inflight_lock:
            if self._inflight_bytes + size > self.config.max_inflight_bytes:
                return False
            self._inflight_bytes += size
            return True

    def release(self, size: int) -> None:
        with self._inflight_lock:
            self._inflight_bytes -= size

    def enter(self) -> None:
        with self._idle:
            self._active += 1

    def leave(self) -> None:
        with self._idle:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()

    def refuse_connection(self, sock: Any) -> None:
        """Over the connection limit: answer 429, then let the client finish sending before closing.

        Closing at once while the request is still arriving would make the kernel
        reset the connection, and the client might never read the answer.
        """
        body = orjson.dumps(
            {"code": code_pb2.RESOURCE_EXHAUSTED, "message": "too many connections to otel-audit serve; retry later"}
        )
        head = (
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            f"Retry-After: {self.config.retry_after_busy}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            sock.sendall(head.encode("ascii") + body)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 2.0
            drained = 0
            while time.monotonic() < deadline and drained < self.config.max_body_bytes:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Also the version assumed while the request line is still unparsed: an error
    # in the request line then gets a status line (HTTP/0.9 answers have none).
    default_request_version = "HTTP/1.1"
    server: _HTTPServer

    # ------------------------------------------------------------------ connection
    def setup(self) -> None:
        ingest = self.server.ingest
        self.ingest = ingest
        self._linger = False
        self._identity: TokenIdentity | None = None
        self.timeout = ingest.config.idle_timeout  # type: ignore[misc]  # per connection: socketserver reads it in setup()
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(ingest.config.read_timeout)
            self.connection.do_handshake()  # errors end the connection (handle_error logs at debug)
            self.connection.settimeout(self.timeout)

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._lingering_close()

    def _lingering_close(self) -> None:
        """After an answer sent without reading the whole body: stop sending, then read and drop
        what the client still sends before the socket is closed, until it stops (end of stream,
        or nothing for ``_LINGER_SECONDS``) or the read timeout has passed.

        Closing a socket with unread data makes the kernel reset the connection, and a client
        that is still sending then never reads the answer (it sees EPIPE or ECONNRESET).
        """
        sock = self.connection
        with contextlib.suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + self.ingest.config.read_timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(min(remaining, _LINGER_SECONDS))
                if not sock.recv(_READ_CHUNK):
                    break

    def handle_one_request(self) -> None:
        self._identity = None
        self.connection.settimeout(self.ingest.config.idle_timeout)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        # From the request line on, a slow client is measured against the read timeout.
        self.connection.settimeout(self.ingest.config.read_timeout)
        return ok

    def version_string(self) -> str:
        return "otel-audit"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        _log.debug("otel-audit serve: %s %s", self.address_string(), format % args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        identity = self._identity
        _log.debug(
            "otel-audit serve: %s token %s %r -> %s",
            self.address_string(),
            "-" if identity is None else identity.name,  # the token's name, never the token
            self.requestline,
            code,
        )

    # ------------------------------------------------------------------ methods
    def handle_expect_100(self) -> bool:
        """Refuse before the client sends its body when the headers already tell."""
        path = urlsplit(self.path).path
        try:
            if path != LOGS_PATH:
                raise RequestError(404, f"no such endpoint {path[:200]!r}: send OTLP logs to POST {LOGS_PATH}")
            if self.command != "POST":
                raise RequestError(
                    405,
                    f"{self.command} is not allowed on {LOGS_PATH}: send OTLP logs with POST",
                    headers={"Allow": "POST"},
                )
            self._authenticate()
            encoding_of(self.headers.get("Content-Type"))
            self._declared_length()
        except RequestError as exc:
            exc.close = True  # the body will not be read (a client that sends it anyway is drained)
            self._linger = True
            self._reply_error(exc, _answer_encoding(self.headers.get("Content-Type")))
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:  # BaseHTTPRequestHandler's naming
        path = urlsplit(self.path).path
        if path != LOGS_PATH:
            self._not_found(path)
            return
        self.ingest.enter()
        encoding = _answer_encoding(self.headers.get("Content-Type"))
        reserved = 0
        body_read = False
        try:
            try:
                try:
                    identity = self._authenticate()
                except RequestError:
                    # Read the (bounded) body before answering: a client still sending it when the
                    # connection closes sees a broken pipe instead of the 401, and retries.
                    if not self._discard_body():
                        self._linger = True
                    raise
                encoding = encoding_of(self.headers.get("Content-Type"))
                body, reserved = self._read_body()
                body_read = True
                request, encoding = decode_request(
                    body,
                    content_type=self.headers.get("Content-Type"),
                    content_encoding=self.headers.get("Content-Encoding"),
                    max_body_bytes=self.ingest.config.max_body_bytes,
                    max_records=self.ingest.config.max_records,
                )
                del body
                result = self.ingest.service.export(request, peer=self.client_address[0], token=identity)
            except RequestError as exc:
                self.ingest.service.count("unauthorized" if exc.status == 401 else "bad_requests")
                if not body_read:
                    exc.close = True  # the unread body must not be taken for the next request
                    if exc.status != 401:
                        self._linger = True
                self._reply_error(exc, encoding)
                return
            except Exception:
                self.ingest.service.count("internal_errors")
                self.close_connection = True
                _log.exception("otel-audit serve: unexpected error while handling a request; answered 503")
                self._reply_error(
                    RequestError(
                        503,
                        "internal error in otel-audit serve (logged with its traceback); retry later",
                        headers={"Retry-After": str(self.ingest.config.retry_after_unavailable)},
                    ),
                    encoding,
                )
                return
            if self._reply_result(result, encoding) and result.status == 200:
                self.ingest.service.delivered(result)
        finally:
            if reserved:
                self.ingest.release(reserved)
            self.ingest.leave()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            ready, reason = self.ingest.service.health()
            body = orjson.dumps({"status": "ok" if ready else "unavailable", "reason": reason})
            self._send(200 if ready else 503, JSON, body, close=False)
        elif path == "/stats":
            try:
                self._authenticate()
            except RequestError as exc:
                self._reply_error(exc, JSON)
                return
            body = orjson.dumps(self.ingest.service.snapshot(), default=str, option=orjson.OPT_INDENT_2)
            self._send(200, JSON, body, close=False)
        elif path == LOGS_PATH:
            self._method_not_allowed()
        else:
            self._not_found(path)

    def _other_method(self) -> None:
        if urlsplit(self.path).path == LOGS_PATH:
            self._method_not_allowed()
        else:
            self._not_found(urlsplit(self.path).path)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _other_method

    # ------------------------------------------------------------------ request parts
    def _authenticate(self) -> TokenIdentity:
        """The identity of the request's bearer token (:data:`ANONYMOUS` when authentication is off)."""
        tokens = self.ingest.tokens
        if tokens is None:
            self._identity = ANONYMOUS
            return ANONYMOUS
        identity = tokens.identify(self.headers.get("Authorization"))
        self._identity = identity
        if identity is None:
            raise RequestError(
                401,
                "missing or invalid bearer token: send `Authorization: Bearer <token>` with one of the tokens "
                "configured for otel-audit serve (--token-file / OTEL_AUDIT_INGEST_TOKENS)",
                close=True,
                headers={"WWW-Authenticate": 'Bearer realm="otel-audit"'},
            )
        return identity

    def _declared_length(self) -> int | None:
        """Content-Length as an int (None for a chunked body); refuses what cannot be read safely."""
        transfer = self.headers.get("Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if transfer is not None:
            if transfer.strip().lower() != "chunked" or length is not None:
                raise RequestError(
                    400,
                    f"unsupported Transfer-Encoding {transfer!r} (only chunked, and not with Content-Length)",
                    close=True,
                )
            return None
        if length is None:
            raise RequestError(411, "a Content-Length header (or chunked transfer encoding) is required", close=True)
        length = length.strip()
        if not length.isdigit() or len(length) > 15:
            raise RequestError(400, f"invalid Content-Length {length[:20]!r}", close=True)
        size = int(length)
        limit = self.ingest.config.max_body_bytes
        if size > limit:
            raise RequestError(
                413,
                f"the body of {size} bytes exceeds the limit of {limit} bytes: send smaller batches, or raise "
                "`otel-audit serve --max-body-bytes`",
                close=True,
            )
        return size

    def _read_body(self) -> tuple[bytes, int]:
        """The request body, within the size limit and the read timeout; returns (body, bytes reserved)."""
        size = self._declared_length()
        limit = self.ingest.config.max_body_bytes
        reserve = size if size is not None else limit
        if not self.ingest.reserve(reserve):
            raise RequestError(
                429,
                "otel-audit serve is holding as many request bytes as it may (--max-inflight-bytes); retry later",
                close=True,
                headers={"Retry-After": str(self.ingest.config.retry_after_busy)},
            )
        try:
            deadline = time.monotonic() + self.ingest.config.read_timeout
            body = self._read_exact(size, deadline) if size is not None else self._read_chunked(limit, deadline)
        except OSError as exc:  # socket timeout, reset: the sender may still be there, so answer retryable
            self.ingest.release(reserve)
            raise RequestError(
                503,
                f"the request body did not arrive within {self.ingest.config.read_timeout:g}s ({type(exc).__name__}); "
                "retry",
                close=True,
                headers={"Retry-After": str(self.ingest.config.retry_after_unavailable)},
            ) from None
        except BaseException:
            self.ingest.release(reserve)
            raise
        return body, reserve

    def _discard_body(self) -> bool:
        """Read and drop the body of a request that is refused (no token): at most
        ``max_body_bytes``, within the read timeout, nothing kept in memory.

        Returns whether the whole body was read (the connection is closed after the
        answer either way; when it was not, :meth:`_lingering_close` drains the rest).
        """
        limit = self.ingest.config.max_body_bytes
        deadline = time.monotonic() + self.ingest.config.read_timeout
        transfer = self.headers.get("Transfer-Encoding")
        length = self.headers.get("Content-Length")
        try:
            if transfer is not None:
                if transfer.strip().lower() != "chunked" or length is not None:
                    return False
                total = 0
                while True:
                    self._check_deadline(deadline)
                    line = self.rfile.readline(1026)
                    size = int(line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        break
                    total += size
                    if total > limit or not self._skip(size + 2, deadline):
                        return False
                for _ in range(100):
                    line = self.rfile.readline(8192)
                    if line in (b"\r\n", b"\n"):
                        return True
                    if not line.endswith(b"\n"):
                        return False
                return False
            if length is None or not length.strip().isdigit() or len(length.strip()) > 15:
                return length is None  # no body declared: nothing to read
            size = int(length)
            return size <= limit and self._skip(size, deadline)
        except (OSError, ValueError):
            return False

    def _skip(self, size: int, deadline: float) -> bool:
        remaining = size
        while remaining:
            self._check_deadline(deadline)
            chunk = (
                self.rfile.read1(min(remaining, _READ_CHUNK))
                if hasattr(self.rfile, "read1")
                else (self.rfile.read(min(remaining, _READ_CHUNK)))
            )
            if not chunk:
                return False
            remaining -= len(chunk)
        return True

    def _read_exact(self, size: int, deadline: float) -> bytes:
        parts = []
        remaining = size
        while remaining:
            self._check_deadline(deadline)
            chunk = (
                self.rfile.read1(min(remaining, _READ_CHUNK))
                if hasattr(self.rfile, "read1")
                else (self.rfile.read(min(remaining, _READ_CHUNK)))
            )
            if not chunk:
                raise RequestError(400, f"the body ended after {size - remaining} of {size} bytes", close=True)
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)

    def _read_chunked(self, limit: int, deadline: float) -> bytes:
        parts = []
        total = 0
        while True:
            self._check_deadline(deadline)
            line = self.rfile.readline(1026)
            if not line.endswith(b"\n"):
                raise RequestError(400, "malformed chunked body (chunk size line)", close=True)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise RequestError(400, "malformed chunked body (chunk size is not hexadecimal)", close=True) from None
            if size < 0:
                raise RequestError(400, "malformed chunked body (negative chunk size)", close=True)
            if size == 0:
                break
            total += size
            if total > limit:
                raise RequestError(
                    413, f"the chunked body exceeds the limit of {limit} bytes: send smaller batches", close=True
                )
            parts.append(self._read_exact(size, deadline))
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise RequestError(400, "malformed chunked body (missing CRLF after a chunk)", close=True)
        for _ in range(100):  # trailer fields, ignored, up to the empty line
            self._check_deadline(deadline)
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)
            if not line.endswith(b"\n"):
                break
        raise RequestError(400, "malformed chunked body (trailer)", close=True)

    @staticmethod
    def _check_deadline(deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("read deadline passed")

    # ------------------------------------------------------------------ answers
    def _reply_result(self, result: ExportResult, encoding: str) -> bool:
        if result.status != 200:
            headers = {"Retry-After": str(result.retry_after)} if result.retry_after else {}
            return self._reply_error(RequestError(result.status, result.message, headers=headers), encoding)
        response = ExportLogsServiceResponse()
        if result.rejected:
            response.partial_success.rejected_log_records = result.rejected
            response.partial_success.error_message = result.message
        if encoding == PROTOBUF:
            body = response.SerializeToString()
        else:
            body = json_format.MessageToJson(response, indent=None).encode("utf-8")
        return self._send(200, encoding, body, close=False)

    def _reply_error(self, error: RequestError, encoding: str) -> bool:
        status = error.status
        code = _GRPC_CODES.get(status, code_pb2.UNKNOWN)
        if encoding == PROTOBUF:
            body = status_pb2.Status(code=code, message=error.message).SerializeToString()
        else:
            encoding = JSON
            body = orjson.dumps({"code": code, "message": error.message})
        return self._send(status, encoding, body, close=error.close, headers=error.headers)

    def _send(
        self, status: int, content_type: str, body: bytes, *, close: bool, headers: dict[str, str] | None = None
    ) -> bool:
        """Write one response; False if the connection broke while writing it."""
        if close:
            self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def _not_found(self, path: str) -> None:
        self._reply_error(
            RequestError(
                404,
                f"no such endpoint {path[:200]!r}: otel-audit serve receives OTLP logs at "
                f"POST {LOGS_PATH} (traces and metrics are not audit records)",
                close=True,
            ),
            JSON,
        )

    def _method_not_allowed(self) -> None:
        self._reply_error(
            RequestError(
                405,
                f"{self.command} is not allowed on {LOGS_PATH}: send OTLP logs with POST",
                close=True,
                headers={"Allow": "POST"},
            ),
            JSON,
        )


def _answer_encoding(content_type: str | None) -> str:
    """The encoding errors are answered in: the request's, when it names one we know, else JSON."""
    try:
        return encoding_of(content_type)
    except RequestError:
        return JSON
