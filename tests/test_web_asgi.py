"""ASGI middleware with FastAPI (and plain Starlette) under uvicorn, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from otel_audit.web.asgi import AuditMiddleware, audit_route, audited, not_audited
from tests import web_scenario
from tests.harness import rows, verify
from tests.web_harness import Audited, Uvicorn, request, wait_for

pytestmark = pytest.mark.storage


class User:
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def current_user(request: Request) -> User:
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        raise HTTPException(401)
    user = User(auth[7:])
    request.state.user = user
    if user.id.startswith("guest"):
        raise HTTPException(403)
    return user


def fastapi_app(**options: Any) -> FastAPI:
    app = FastAPI()
    log = logging.getLogger("clinic")

    @app.get("/patients/{patient_id}")
    async def read_patient(patient_id: str, user: User = Depends(current_user)) -> dict[str, str]:
        return {"id": patient_id}

    @app.post("/patients/{patient_id}/notes", status_code=201)
    def add_note(patient_id: str, user: User = Depends(current_user)) -> dict[str, str]:
        # A sync handler: FastAPI runs it in a worker thread with a copy of the context.
        log.info(
            "note added",
            extra={
                "audit.action": "note.create",
                "audit.resource.type": "note",
                "audit.resource.id": f"{patient_id}-n",
                "audit.result": "success",
            },
        )
        return {"ok": "yes"}

    @app.get("/boom")
    async def boom(user: User = Depends(current_user)) -> None:
        raise RuntimeError("boom")

    @app.get("/stream")
    async def stream(user: User = Depends(current_user)) -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(40):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.05)

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.post("/exports/{report_id}")
    @audited(action="report.export", resource_type="report", resource_id="report_id", fail_closed=True)
    async def export(report_id: str, user: User = Depends(current_user)) -> dict[str, str]:
        return {"report": report_id}

    @app.post(
        "/keys/{key_id}/rotate",
        dependencies=[
            Depends(audit_route(action="key.rotate", resource_type="key", resource_id="key_id", fail_closed=2.0))
        ],
    )
    async def rotate(key_id: str, user: User = Depends(current_user)) -> dict[str, str]:
        return {"rotated": key_id}

    @app.get("/metrics")
    @not_audited
    async def metrics() -> str:
        return "m"

    @app.get("/reports")
    async def reports() -> list[str]:
        return []

    app.add_middleware(AuditMiddleware, hook=web_scenario.hook, **{**web_scenario.OPTIONS, **options})
    return app


@pytest.fixture
def audited_app(db: str, spool_dir: Path) -> Any:
    audited = Audited(db, spool_dir)
    yield audited
    audited.close()


def test_fastapi_under_uvicorn_one_record_per_request(db: str, audited_app: Audited) -> None:
    server = Uvicorn(fastapi_app())
    try:
        traffic = web_scenario.drive(server.port)
        rid = web_scenario.disconnect(server.port)
        # The stream is cut: the server notices, the application stops, the record is sealed.
        assert wait_for(
            lambda: (
                rows(db, "SELECT 1 FROM audit_logs WHERE attributes->>'request.id' = %s", (rid,))
                or (audited_app.audit.flush(1) and False)
            ),
            timeout=20,
        )
    finally:
        server.stop()
    assert audited_app.close()
    web_scenario.check(db, traffic, rid)
    assert verify(db).ok


def test_fail_closed_route_is_committed_before_the_response(db: str, audited_app: Audited) -> None:
    server = Uvicorn(fastapi_app())
    try:
        status, _ = request(server.port, "POST", "/exports/r-7", {"Authorization": "Bearer user-9"})
        assert status == 200
        # Committed before the response: visible from another connection right away, no flush.
        assert rows(db, "SELECT action, actor_id, resource_type, resource_id, result FROM audit_logs") == [
            ("report.export", "user-9", "report", "r-7", "success")
        ]
        status, _ = request(server.port, "POST", "/keys/k-1/rotate", {"Authorization": "Bearer admin-1"})
        assert status == 200
        assert rows(db, "SELECT action, resource_id FROM audit_logs WHERE action = 'key.rotate'") == [
            ("key.rotate", "k-1")
        ]
        # Denied on a fail-closed route: committed too, and the answer stays 403.
        status, _ = request(server.port, "POST", "/exports/r-8", {"Authorization": "Bearer guest-2"})
        assert status == 403
        assert rows(db, "SELECT result FROM audit_logs WHERE resource_id = 'r-8'") == [("denied",)]
    finally:
        server.stop()
    assert audited_app.close()
    assert verify(db).ok


def test_fail_closed_route_answers_503_when_the_database_is_unreachable(spool_dir: Path) -> None:
    audited = Audited("postgresql://otel_audit@127.0.0.1:9/nowhere?connect_timeout=1", spool_dir)
    server = Uvicorn(fastapi_app(fail_closed_timeout=0.5))
    try:
        status, body = request(server.port, "POST", "/exports/r-1", {"Authorization": "Bearer user-1"})
        assert status == 503 and b"audit record could not be committed" in body
        # Not fail-closed: answered normally, the record waits in the spool.
        status, _ = request(server.port, "GET", "/patients/p1", {"Authorization": "Bearer user-1"})
        assert status == 200
    finally:
        server.stop()
    stats = audited.audit.stats()
    # The export's record, the follow-up saying it was answered 503, and the read.
    assert stats["accepted"] == 3 and stats["committed"] == 0
    audited.close()


def test_trace_correlation_with_the_fastapi_instrumentation(db: str, audited_app: Audited) -> None:
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.fastapi")
    app = fastapi_app()
    instrumentation.FastAPIInstrumentor.instrument_app(app, tracer_provider=audited_app.tracer_provider)
    server = Uvicorn(app)
    try:
        assert request(server.port, "GET", "/patients/p1", {"Authorization": "Bearer user-1"})[0] == 200
        assert request(server.port, "POST", "/patients/p2/notes", {"Authorization": "Bearer user-1"})[0] == 201
    finally:
        server.stop()
    assert audited_app.close()
    server_spans = {s.name: s for s in audited_app.spans.get_finished_spans() if s.kind.name == "SERVER"}
    stored = dict(((a, (t, s)) for a, t, s in rows(db, "SELECT action, trace_id, span_id FROM audit_logs")))
    for action, span_name in (
        ("GET /patients/{patient_id}", "GET /patients/{patient_id}"),
        ("POST /patients/{patient_id}/notes", "POST /patients/{patient_id}/notes"),
        ("note.create", "POST /patients/{patient_id}/notes"),
    ):
        ctx = server_spans[span_name].get_span_context()
        assert stored[action] == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"), action
    assert verify(db).ok


def test_without_instrumentation_the_callers_traceparent_correlates(db: str, audited_app: Audited) -> None:
    server = Uvicorn(fastapi_app())
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    try:
        status, _ = request(
            server.port,
            "GET",
            "/patients/p1",
            {"Authorization": "Bearer user-1", "traceparent": f"00-{trace_id}-{parent}-01"},
        )
        assert status == 200
        assert request(server.port, "GET", "/patients/p2", {"Authorization": "Bearer user-1"})[0] == 200
    finally:
        server.stop()
    assert audited_app.close()
    assert sorted(rows(db, "SELECT resource_id, trace_id, span_id FROM audit_logs"), key=str) == [
        ("p1", trace_id, parent),
        ("p2", None, None),
    ]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("state-changing", {"POST /patients/{patient_id}/notes", "note.create", "report.export"}),
        ("marked", {"note.create", "report.export"}),
    ],
)
def test_which_requests_state_changing_and_marked(db: str, audited_app: Audited, mode: str, expected: set) -> None:
    server = Uvicorn(fastapi_app(requests=mode))
    try:
        request(server.port, "GET", "/patients/p1", {"Authorization": "Bearer user-1"})
        request(server.port, "GET", "/metrics")
        request(server.port, "POST", "/patients/p1/notes", {"Authorization": "Bearer user-1"})
        request(server.port, "POST", "/exports/r1", {"Authorization": "Bearer user-1"})
        request(server.port, "GET", "/nope")
    finally:
        server.stop()
    assert audited_app.close()
    assert {a for (a,) in rows(db, "SELECT action FROM audit_logs")} == expected


def test_unmatched_routes_and_routes_without_parameters(db: str, audited_app: Audited) -> None:
    server = Uvicorn(fastapi_app())
    try:
        assert request(server.port, "GET", "/no/such/path/123")[0] == 404
        assert request(server.port, "GET", "/reports")[0] == 200
        assert request(server.port, "DELETE", "/reports")[0] == 405
    finally:
        server.stop()
    assert audited_app.close()
    assert sorted(
        rows(db, "SELECT action, resource_type, resource_id, result, attributes->>'url.path' FROM audit_logs")
    ) == [
        ("DELETE /reports", "http.route", "/reports", "failure", "/reports"),
        ("GET (unmatched)", "http.route", "(unmatched)", "failure", "/no/such/path/123"),
        ("GET /reports", "http.route", "/reports", "success", "/reports"),
    ]


def test_plain_starlette_with_authentication_middleware_and_a_mount(db: str, audited_app: Audited) -> None:
    from starlette.applications import Starlette
    from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    class Basic(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            name = conn.headers.get("x-user")
            return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Mount("/api/v1", routes=[Route("/items/{item_id:int}", item)])],
        middleware=[
            Middleware(AuditMiddleware, resources={"item_id": "item"}),
            Middleware(AuthenticationMiddleware, backend=Basic()),
        ],
    )
    server = Uvicorn(app)
    try:
        assert request(server.port, "GET", "/api/v1/items/42", {"X-User": "alice"})[0] == 200
        assert request(server.port, "GET", "/api/v1/items/43")[0] == 200
    finally:
        server.stop()
    assert audited_app.close()
    assert sorted(rows(db, "SELECT action, actor_id, resource_type, resource_id FROM audit_logs")) == [
        ("GET /api/v1/items/{item_id}", "alice", "item", "42"),
        ("GET /api/v1/items/{item_id}", "anonymous", "item", "43"),
    ]


def test_audit_context_reaches_tasks_and_threads_started_by_the_handler(db: str, audited_app: Audited) -> None:
    app = FastAPI()
    log = logging.getLogger("clinic")

    def audit(resource_id: str) -> None:
        log.info(
            "x",
            extra={
                "audit.action": "child",
                "audit.resource.type": "t",
                "audit.resource.id": resource_id,
                "audit.result": "success",
            },
        )

    @app.post("/jobs")
    async def jobs(request: Request) -> str:
        request.state.user = User("u-42")
        await asyncio.create_task(asyncio.sleep(0, result=None))
        task = asyncio.create_task(_async_audit(audit, "task"))
        await task
        await asyncio.to_thread(audit, "thread")
        return "ok"

    app.add_middleware(AuditMiddleware)
    server = Uvicorn(app)
    try:
        assert request(server.port, "POST", "/jobs", {"Cookie": "a=b"})[0] == 200
    finally:
        server.stop()
    assert audited_app.close()
    assert sorted(rows(db, "SELECT action, resource_id, actor_id, host(ip_address) FROM audit_logs")) == [
        ("POST /jobs", "/jobs", "u-42", "127.0.0.1"),
        ("child", "task", "u-42", "127.0.0.1"),
        ("child", "thread", "u-42", "127.0.0.1"),
    ]


async def _async_audit(fn: Any, resource_id: str) -> None:
    fn(resource_id)


def test_fail_closed_stream_cut_short_gets_a_follow_up_record(db: str, audited_app: Audited) -> None:
    from tests.web_harness import disconnect_mid_stream

    app = FastAPI()

    @app.get("/exports/{report_id}/download")
    @audited(action="report.download", resource_type="report", resource_id="report_id", fail_closed=True)
    async def download(report_id: str) -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(100):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.05)

        return StreamingResponse(chunks())

    app.add_middleware(AuditMiddleware)
    server = Uvicorn(app)
    try:
        disconnect_mid_stream(server.port, "/exports/r-3/download")
        assert wait_for(
            lambda: len(rows(db, "SELECT 1 FROM audit_logs")) == 2 or (audited_app.audit.flush(1) and False), timeout=20
        )
    finally:
        server.stop()
    assert audited_app.close()
    first, second = rows(db, "SELECT id::text, result, reason, attributes FROM audit_logs ORDER BY seq")
    assert first[1] == "success" and first[2] is None  # committed before the first byte
    assert second[1] == "failure" and "client disconnected" in second[2]
    assert second[3]["otel_audit.web.follows"] == first[0]
    assert second[3]["otel_audit.web.client_disconnected"] is True
    assert verify(db).ok


def test_an_actor_who_signs_out_during_the_request_stays_its_actor(db: str, audited_app: Audited) -> None:
    app = FastAPI()
    log = logging.getLogger("clinic")

    @app.post("/logout")
    async def logout(request: Request) -> str:
        request.state.user = User("u-7")
        log.info(
            "signed out",
            extra={
                "audit.action": "logout",
                "audit.resource.type": "session",
                "audit.resource.id": "s",
                "audit.result": "success",
            },
        )
        del request.state.user
        return "bye"

    app.add_middleware(AuditMiddleware)
    server = Uvicorn(app)
    try:
        assert request(server.port, "POST", "/logout")[0] == 200
    finally:
        server.stop()
    assert audited_app.close()
    assert sorted(rows(db, "SELECT action, actor_id FROM audit_logs")) == [("POST /logout", "u-7"), ("logout", "u-7")]
