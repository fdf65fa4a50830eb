"""ASGI middleware: Starlette, FastAPI, any ASGI application.

::

    from fastapi import FastAPI
    from otel_audit.web.asgi import AuditMiddleware, audited, audit_route

    app = FastAPI()
    app.add_middleware(AuditMiddleware, requests="all", exclude=["/health"],
                       resources={"patient_id": "patient_record"})

One record per audited HTTP request, sealed when the last body message is
about to be sent (or when the application returns or raises without
finishing the response); WebSocket and lifespan scopes pass through. The route
template comes from Starlette's routing (``scope["route"]``); for other ASGI
frameworks pass ``route=lambda scope: ...``. No framework is imported here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from otel_audit.web._core import (
    RequestAudit,
    RouteAudit,
    WebAuditConfig,
    audited,
    mark_of,
    mark_request,
    not_audited,
)

__all__ = ["AuditMiddleware", "audit_route", "audited", "not_audited"]

Scope = dict[str, Any]
Message = dict[str, Any]


def audit_route(
    *,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | Callable[..., Any] | None = None,
    fail_closed: bool | float = False,
) -> Callable[[], None]:
    """A FastAPI dependency marking the routes it is attached to as audited.

    For example::

        @app.post("/exports", dependencies=[Depends(audit_route(action="export", fail_closed=True))])
        router = APIRouter(dependencies=[Depends(audit_route())])
    """
    mark = RouteAudit(True, action, resource_type, resource_id, fail_closed)

    def otel_audit_route() -> None:
        mark_request(mark)

    return otel_audit_route


class AuditMiddleware:
    """Audit every (selected) HTTP request of an ASGI application.

    Keyword options are those of :class:`~otel_audit.web._core.WebAuditConfig`,
    plus ``route``: ``f(scope) -> template | None`` for frameworks that do not
    put a Starlette route in the scope.
    """

    def __init__(self, app: Any, *, route: Callable[[Scope], str | None] | None = None, **options: Any) -> None:
        self.app = app
        self.config = WebAuditConfig(**options)
        self.route = route

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        headers = _Headers(scope.get("headers") or ())
        state = RequestAudit(
            self.config,
            scope,
            method=scope.get("method", "GET"),
            path=scope.get("path", ""),
            peer=client[0] if client else None,
            headers=headers.get,
            actor=lambda: _default_actor(scope),
            session=lambda: _default_session(scope),
        )
        state.open()
        replaced = False

        async def audited_receive() -> Message:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                state.disconnected = True
            return message

        async def audited_send(message: Message) -> None:
            nonlocal replaced
            kind = message["type"]
            if kind == "http.response.start":
                state.status = message["status"]
                self._learn_route(state, scope)
                timeout = state.fail_closed_timeout()
                if timeout is not None and not state.sealed:
                    if not await asyncio.to_thread(state.finish_fail_closed, timeout):
                        replaced = True
                        state.follow_up("audit record not committed in time: response replaced by 503", status=503)
                        await _send_503(send)
                        return
            elif replaced:
                return  # the application's response was withheld
            elif (
                kind == "http.response.body"
                and not message.get("more_body", False)
                or (kind == "http.response.pathsend")
            ):
                state.complete = True
                if not state.sealed:
                    self._learn_route(state, scope)
                    state.finish()  # sealed before the last byte leaves
            try:
                await send(message)
            except OSError:
                state.disconnected = True
                raise

        try:
            await self.app(scope, audited_receive, audited_send)
        except BaseException as exc:
            state.error = exc
            self._finish(state, scope, raising=True)
            raise
        else:
            self._finish(state, scope, raising=False)
        finally:
            state.close()

    def _finish(self, state: RequestAudit, scope: Scope, *, raising: bool) -> None:
        """The application returned or raised: seal what is not sealed yet."""
        try:
            if not state.sealed:
                self._learn_route(state, scope)
                state.finish()
            elif state.record_id is not None and not state.complete and (state.error or state.disconnected):
                state.follow_up(
                    "response failed after its fail-closed record was committed"
                    + (" (client disconnected)" if state.disconnected else "")
                )
        except Exception:
            if not raising:
                raise
            # Do not mask the application's exception with ours.
            logging.getLogger("otel_audit").exception("otel-audit: sealing the record of a failed request failed")

    def _learn_route(self, state: RequestAudit, scope: Scope) -> None:
        if state.route is None:
            state.route = self.route(scope) if self.route is not None else _starlette_route(scope)
            state.params = scope.get("path_params") or {}
        if state.mark is None:
            state.mark = mark_of(scope.get("endpoint"))


def _starlette_route(scope: Scope) -> str | None:
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    # Inside a Mount the route's path is relative: prefix what the mount matched.
    root: str = scope.get("root_path", "")
    app_root: str = scope.get("app_root_path", root)
    if root != app_root and root.startswith(app_root):
        template = root[len(app_root) :] + template
    return template


def _default_actor(scope: Scope) -> Any:
    state = scope.get("state")
    if isinstance(state, Mapping):
        user = state.get("user")
        if user is not None:
            return user
    user = scope.get("user")  # Starlette's AuthenticationMiddleware
    return user


def _default_session(scope: Scope) -> str | None:
    session = scope.get("session")  # Starlette's SessionMiddleware (a signed cookie: no id unless the app sets one)
    if isinstance(session, Mapping):
        value = session.get("session_id") or session.get("sid")
        return str(value) if value else None
    return None


class _Headers:
    __slots__ = ("_map", "_raw")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        headers = self._map
        if headers is None:
            headers = {}
            for key, value in self._raw:
                k = key.decode("latin-1").lower()
                v = value.decode("latin-1")
                if k in headers:
                    headers[k] = headers[k] + ("; " if k == "cookie" else ", ") + v
                else:
                    headers[k] = v
            self._map = headers
        return headers.get(name)


async def _send_503(send: Callable[..., Any]) -> None:
    body = b"audit record could not be committed; the request was not completed as a success\n"
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"5"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
