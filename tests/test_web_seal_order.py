"""The request record is sealed before the response is complete: checked at the moment the
server receives the last piece of the response, through a real audit pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from otel_audit.web.asgi import AuditMiddleware as AsgiAudit
from otel_audit.web.wsgi import AuditMiddleware as WsgiAudit
from tests.harness import rows
from tests.web_harness import Audited

pytestmark = pytest.mark.storage


@pytest.fixture
def audited_app(db: str, spool_dir: Path) -> Any:
    audited = Audited(db, spool_dir)
    yield audited
    audited.close()


def test_asgi_record_sealed_before_the_last_body_message(db: str, audited_app: Audited) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"x", "more_body": i < 2})

    sealed_when: list[tuple[bool, int]] = []

    async def server_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sealed_when.append((message["more_body"], audited_app.audit.stats()["accepted"]))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "client": ("10.0.0.1", 1)}
    asyncio.run(AsgiAudit(app)(scope, receive, server_send))
    # Not sealed while the body streams; sealed when the last message reaches the server.
    assert sealed_when == [(True, 0), (True, 0), (False, 1)]
    assert audited_app.close()
    assert rows(db, "SELECT action, result FROM audit_logs") == [("GET (unmatched)", "success")]


@pytest.mark.parametrize("kind", ["list", "sized", "stream"])
def test_wsgi_record_sealed_before_the_server_has_the_whole_body(db: str, audited_app: Audited, kind: str) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        headers = [("Content-Length", "3")] if kind == "sized" else []
        start_response("200 OK", headers)
        if kind == "list":
            return [b"a", b"b", b"c"]
        return iter([b"a", b"b", b"c"])

    seen: list[int] = []
    body = WsgiAudit(app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "REMOTE_ADDR": "10.0.0.1"},
        lambda status, headers, exc_info=None: None,
    )
    for _chunk in body:
        seen.append(audited_app.audit.stats()["accepted"])
    # The end of a streamed body (no length) is only known when the iterator stops, before the
    # server writes the end of the response; with a length or a list it is known before the last chunk.
    after_iteration = audited_app.audit.stats()["accepted"]
    getattr(body, "close", lambda: None)()
    expected = {"list": [1, 1, 1], "sized": [0, 0, 1], "stream": [0, 0, 0]}[kind]
    assert seen == expected and after_iteration == 1
    assert audited_app.close()
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(1,)]


def test_request_records_do_not_depend_on_the_otel_audit_logger(db: str, audited_app: Audited) -> None:
    """Quieting otel-audit's own messages (a level, propagate=False) must not silence request records."""
    import logging

    own = logging.getLogger("otel_audit")
    saved = own.propagate, own.level
    own.propagate, own.level = False, logging.CRITICAL
    try:

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def noop(message: Any = None) -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "DELETE", "path": "/x", "headers": [], "client": ("10.0.0.1", 1)}
        asyncio.run(AsgiAudit(app)(scope, noop, noop))
    finally:
        own.propagate, own.level = saved
    assert audited_app.close()
    assert rows(db, "SELECT action, scope FROM audit_logs") == [("DELETE (unmatched)", "audit.http")]
