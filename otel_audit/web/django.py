"""Django middleware.

::

    # settings.py
    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        ...,
        "otel_audit.web.django.AuditMiddleware",   # after authentication
    ]
    OTEL_AUDIT_WEB = {"exclude": ["/health"], "resources": {"pk": "patient_record"}}

Options (``settings.OTEL_AUDIT_WEB``) are those of
:class:`~otel_audit.web._core.WebAuditConfig`. The route is the URL pattern
(``request.resolver_match.route``, ``<int:pk>`` written ``{pk}``), the actor
``request.user`` (``pk``; superusers are ``admin``), the session id
``request.session.session_key`` (hashed). A view exception reaches the record
through ``process_exception``. A plain response is sealed before it is
returned to the server; a streaming response when its content ends, or when
the server closes it early (client disconnect). Under ASGI, Django consumes a
*synchronous* streaming iterator in full before sending it, so only an
asynchronous one can be cut short by a disconnect there.

With ``opentelemetry-instrumentation-django`` (its middleware goes first), the
record carries the server span's trace and span id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from otel_audit.web._core import RequestAudit, WebAuditConfig, audited, django_template, mark_of, not_audited

__all__ = ["AuditMiddleware", "audited", "not_audited"]

_log = logging.getLogger("otel_audit")
_ATTR = "_otel_audit_request"
_REPLACED_BODY = b"audit record could not be committed; the request was not completed as a success\n"


class AuditMiddleware:
    """New-style Django middleware (synchronous; Django adapts it under ASGI)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.config = WebAuditConfig(**getattr(settings, "OTEL_AUDIT_WEB", {}))

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        meta = request.META
        state = RequestAudit(
            self.config,
            request,
            method=request.method or "GET",
            path=request.path,
            peer=meta.get("REMOTE_ADDR") or None,
            headers=lambda name: _header(meta, name),
            actor=lambda: getattr(request, "user", None),
            session=lambda: _session_key(request),
        )
        setattr(request, _ATTR, state)
        state.open()
        state.capture_trace()
        try:
            response = self.get_response(request)
        except BaseException as exc:
            state.error = exc
            try:
                _learn_route(state, request)
                state.finish()
            except Exception:
                _log.exception("otel-audit: sealing the record of a failed request failed")
            state.close()
            raise
        state.status = response.status_code
        _learn_route(state, request)
        state.capture_trace()
        timeout = state.fail_closed_timeout()
        if timeout is not None and not state.finish_fail_closed(timeout):
            state.follow_up("audit record not committed in time: response replaced by 503", status=503)
            response.close()
            state.close()
            replaced = HttpResponse(_REPLACED_BODY, status=503, content_type="text/plain; charset=utf-8")
            replaced["Retry-After"] = "5"
            return replaced
        if getattr(response, "streaming", False):
            _watch_stream(response, state)
            return response
        state.complete = True
        try:
            state.finish()  # the body is complete: sealed before the server sends any of it
        finally:
            state.close()
        return response

    def process_view(self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        state = getattr(request, _ATTR, None)
        if state is not None and state.mark is None:
            state.mark = mark_of(view_func)
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        state = getattr(request, _ATTR, None)
        if state is not None and state.error is None:
            state.error = exception
        return None


def _learn_route(state: RequestAudit, request: HttpRequest) -> None:
    match = getattr(request, "resolver_match", None)
    if match is None or state.route is not None:
        return
    route = getattr(match, "route", None)
    if route is not None:
        state.route = django_template(route)
    params = dict(match.kwargs)
    for index, value in enumerate(match.args):
        params.setdefault(f"arg{index}", value)
    state.params = params
    if state.mark is None:
        state.mark = mark_of(match.func)


def _watch_stream(response: Any, state: RequestAudit) -> None:
    """Seal a streaming response at its end, or when the server closes it before the end."""
    content = response.streaming_content
    is_async = hasattr(content, "__aiter__")

    def finish_stream() -> None:
        if not state.sealed:
            state.finish()

    if is_async:

        async def audited_async() -> Any:
            try:
                async for chunk in content:
                    yield chunk
            except asyncio.CancelledError:
                # Django's ASGI handler cancels the response when the client disconnects.
                state.disconnected = True
                _guarded(finish_stream)
                raise
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit):
                    state.error = exc
                    _guarded(finish_stream)
                raise
            state.complete = True
            finish_stream()

        response.streaming_content = audited_async()
    else:

        def audited() -> Iterator[bytes]:
            try:
                yield from content
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit):
                    state.error = exc
                    _guarded(finish_stream)
                raise
            state.complete = True
            finish_stream()

        response.streaming_content = audited()

    original_close = response.close

    def close() -> None:
        try:
            original_close()
        finally:
            try:
                if not state.sealed and not state.complete and state.error is None:
                    state.disconnected = True  # the server closed the response before its end
                if not state.sealed:
                    _guarded(finish_stream)
                elif state.record_id is not None and not state.complete:
                    state.follow_up(
                        "response failed after its fail-closed record was committed"
                        + (" (client disconnected)" if state.disconnected else "")
                    )
            finally:
                state.close()

    response.close = close


def _guarded(fn: Any) -> None:
    try:
        fn()
    except Exception:
        _log.exception("otel-audit: sealing the record of a request failed")


def _header(meta: Any, name: str) -> str | None:
    if name == "content-type":
        key = "CONTENT_TYPE"
    elif name == "content-length":
        key = "CONTENT_LENGTH"
    else:
        key = "HTTP_" + name.upper().replace("-", "_")
    value: str | None = meta.get(key)
    return value


def _session_key(request: HttpRequest) -> str | None:
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None) if session is not None else None
    return str(key) if key else None
