"""WSGI middleware: any WSGI application (Flask has its own adapter on top, :mod:`.flask`).

::

    from otel_audit.web.wsgi import AuditMiddleware
    application = AuditMiddleware(application, route=lambda environ: environ.get("myframework.route"))

When the record is sealed:

* a body the application returns as a list or tuple is complete when the
  application returns: the record is sealed before the server sends a byte;
* a body with a ``Content-Length`` is read one chunk ahead, so the record is
  sealed before its last chunk is handed to the server;
* any other (streamed) body is sealed when the application's iterator ends,
  before the server writes the end of the response (the last chunk of a
  chunked response, or the close);
* a server that closes the body before its end (the client went away) seals
  it then, noted as a client disconnect; an exception in the application or
  while iterating seals it with the exception's type.

Without a ``route=`` resolver, the route comes from ``environ["otel_audit.route"]``
(framework adapters set it) and is ``(unmatched)`` otherwise: never the raw path.
The default actor is ``REMOTE_USER``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from otel_audit.web._core import RequestAudit, WebAuditConfig, audited, not_audited

__all__ = ["AuditMiddleware", "audited", "not_audited"]

_log = logging.getLogger("otel_audit")

#: Where adapters and applications put what the middleware cannot know by itself.
ENVIRON_REQUEST = "otel_audit.request"  # the RequestAudit of this request
ENVIRON_ROUTE = "otel_audit.route"  # the route template
ENVIRON_PARAMS = "otel_audit.path_params"  # the route parameters

_REPLACED_BODY = b"audit record could not be committed; the request was not completed as a success\n"


def environ_header(environ: dict[str, Any], name: str) -> str | None:
    if name == "content-type":
        return environ.get("CONTENT_TYPE")
    if name == "content-length":
        return environ.get("CONTENT_LENGTH")
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


class AuditMiddleware:
    """Audit every (selected) request of a WSGI application.

    Keyword options are those of :class:`~otel_audit.web._core.WebAuditConfig`,
    plus ``route``: ``f(environ) -> template | None`` and ``path_params``:
    ``f(environ) -> mapping``.
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        route: Callable[[dict[str, Any]], str | None] | None = None,
        path_params: Callable[[dict[str, Any]], Any] | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.config = options.pop("_config", None) or WebAuditConfig(**options)
        self.route = route
        self.path_params = path_params

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        state = RequestAudit(
            self.config,
            environ,
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
            peer=environ.get("REMOTE_ADDR") or None,
            headers=lambda name: environ_header(environ, name),
            actor=lambda: environ.get("REMOTE_USER") or None,
        )
        environ[ENVIRON_REQUEST] = state
        state.open()
        state.capture_trace()
        body = _Body(state, self, environ)

        def audited_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            state.status = int(status[:3])
            body.sized = any(k.lower() == "content-length" for k, _ in headers)
            self.learn_route(state, environ)
            timeout = state.fail_closed_timeout()
            if timeout is not None and not state.sealed and not state.finish_fail_closed(timeout):
                body.replaced = True
                state.follow_up("audit record not committed in time: response replaced by 503", status=503)
                return start_response(
                    "503 Service Unavailable",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(_REPLACED_BODY))),
                        ("Retry-After", "5"),
                    ],
                    exc_info,
                )
            return start_response(status, headers, exc_info)

        try:
            result = self.app(environ, audited_start_response)
        except BaseException as exc:
            state.error = exc
            body.seal(raising=True)
            state.close()
            raise
        body.inner = result
        if body.replaced:
            body.close_inner()
            state.close()
            return [_REPLACED_BODY]
        if isinstance(result, (list, tuple)) and state.status is not None:
            state.complete = True  # the whole body is here: seal before the server sends any of it
            body.seal(raising=False)
            state.close()
            return result
        return body

    def learn_route(self, state: RequestAudit, environ: dict[str, Any]) -> None:
        if state.route is None:
            state.route = self.route(environ) if self.route is not None else environ.get(ENVIRON_ROUTE)
        if not state.params:
            params = self.path_params(environ) if self.path_params is not None else environ.get(ENVIRON_PARAMS)
            if params:
                state.params = params


_NOTHING = object()


class _Body:
    """The response body as the server sees it: iterates the application's, seals at its end."""

    def __init__(self, state: RequestAudit, middleware: AuditMiddleware, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.state = state
        self.middleware = middleware
        self.inner: Any = None
        self.iterator: Iterator[bytes] | None = None
        self.sized = False
        self.replaced = False
        self.ahead: Any = _NOTHING
        self.closed = False

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        if self.replaced:
            if self.ahead is _NOTHING:
                self.ahead = None
                return _REPLACED_BODY
            raise StopIteration
        if self.iterator is None:
            self.iterator = iter(self.inner)
        if not self.sized:
            return self._next()
        # One chunk ahead: the last chunk is known as such before it is handed over.
        if self.ahead is _NOTHING:
            self.ahead = self._next()  # StopIteration: empty body, sealed by _next
        chunk: bytes | None = self.ahead
        if chunk is None:
            raise StopIteration
        try:
            self.ahead = self._next()
        except StopIteration:
            self.ahead = None
        return chunk

    def _next(self) -> bytes:
        try:
            return next(self.iterator)  # type: ignore[arg-type]
        except StopIteration:
            if self.state.status is not None:
                self.state.complete = True
            self.seal(raising=False)
            raise
        except BaseException as exc:
            self.state.error = exc
            self.seal(raising=True)
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.close_inner()
        finally:
            state = self.state
            try:
                if not state.sealed and not state.complete and state.error is None:
                    state.disconnected = True  # the server stopped before the end of the body
                if self.replaced:
                    pass
                elif not state.sealed:
                    self.seal(raising=False)
                elif state.record_id is not None and not state.complete:
                    state.follow_up(
                        "response failed after its fail-closed record was committed"
                        + (" (client disconnected)" if state.disconnected else "")
                    )
            finally:
                state.close()

    def close_inner(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def seal(self, *, raising: bool) -> None:
        state = self.state
        if state.sealed:
            return
        self.middleware.learn_route(state, self.environ)
        try:
            state.finish()
        except Exception:
            if not raising:
                raise
            _log.exception("otel-audit: sealing the record of a failed request failed")
