"""Flask (and plain WSGI) under waitress, against real PostgreSQL."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")
pytest.importorskip("waitress")

import flask

from otel_audit.web.flask import FlaskAudit, audited, not_audited
from otel_audit.web.wsgi import AuditMiddleware
from tests import web_scenario
from tests.harness import rows, verify
from tests.web_harness import Audited, Waitress, request, wait_for

pytestmark = pytest.mark.storage


class User:
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def flask_app(**options: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    log = logging.getLogger("clinic")

    @app.before_request
    def authenticate() -> Any:
        if flask.request.endpoint in ("health", "metrics"):
            return None
        auth = flask.request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            flask.abort(401)
        flask.g.user = User(auth[7:])
        if flask.g.user.id.startswith("guest"):
            flask.abort(403)
        return None

    @app.get("/patients/<patient_id>")
    def read_patient(patient_id: str) -> Any:
        return {"id": patient_id}

    @app.post("/patients/<patient_id>/notes")
    def add_note(patient_id: str) -> Any:
        log.info(
            "note added",
            extra={
                "audit.action": "note.create",
                "audit.resource.type": "note",
                "audit.resource.id": f"{patient_id}-n",
                "audit.result": "success",
            },
        )
        return {"ok": "yes"}, 201

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("boom")

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Any:
            for i in range(40):
                yield f"chunk {i}\n"
                time.sleep(0.05)

        return flask.Response(chunks(), mimetype="text/plain")

    @app.get("/health")
    def health() -> Any:
        return "ok"

    @app.post("/exports/<report_id>")
    @audited(action="report.export", resource_type="report", resource_id="report_id", fail_closed=True)
    def export(report_id: str) -> Any:
        return {"report": report_id}

    @app.get("/metrics")
    @not_audited
    def metrics() -> Any:
        return "m"

    FlaskAudit(app, hook=web_scenario.hook, **{**web_scenario.OPTIONS, **options})
    return app


@pytest.fixture
def audited_app(db: str, spool_dir: Path) -> Any:
    audited = Audited(db, spool_dir)
    yield audited
    audited.close()


def test_flask_under_waitress_one_record_per_request(db: str, audited_app: Audited) -> None:
    server = Waitress(flask_app())
    try:
        traffic = web_scenario.drive(server.port)
        rid = web_scenario.disconnect(server.port)
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


def test_fail_closed_flask_route(db: str, audited_app: Audited) -> None:
    server = Waitress(flask_app())
    try:
        assert request(server.port, "POST", "/exports/r-7", {"Authorization": "Bearer user-9"})[0] == 200
        assert rows(db, "SELECT action, actor_id, resource_id, result FROM audit_logs") == [
            ("report.export", "user-9", "r-7", "success")
        ]
    finally:
        server.stop()
    assert audited_app.close()


def test_fail_closed_flask_route_answers_503_when_the_database_is_unreachable(spool_dir: Path) -> None:
    audited = Audited("postgresql://otel_audit@127.0.0.1:9/nowhere?connect_timeout=1", spool_dir)
    server = Waitress(flask_app(fail_closed_timeout=0.5))
    try:
        status, body = request(server.port, "POST", "/exports/r-1", {"Authorization": "Bearer user-1"})
        assert status == 503 and b"audit record could not be committed" in body
        assert request(server.port, "GET", "/patients/p1", {"Authorization": "Bearer user-1"})[0] == 200
    finally:
        server.stop()
    assert audited.audit.stats()["accepted"] == 3
    audited.close()


def test_flask_login_current_user_is_the_default_actor(db: str, audited_app: Audited) -> None:
    flask_login = pytest.importorskip("flask_login")
    app = flask.Flask(__name__)
    app.secret_key = "test"
    manager = flask_login.LoginManager(app)

    class LoginUser(flask_login.UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager.request_loader(lambda req: LoginUser(req.headers["X-User"]) if "X-User" in req.headers else None)

    @app.delete("/documents/<int:doc_id>")
    def delete(doc_id: int) -> Any:
        return "", 204

    FlaskAudit(app, resources={"doc_id": "document"})
    server = Waitress(app)
    try:
        assert request(server.port, "DELETE", "/documents/5", {"X-User": "carol"})[0] == 204
        assert request(server.port, "DELETE", "/documents/6")[0] == 204
    finally:
        server.stop()
    assert audited_app.close()
    assert sorted(rows(db, "SELECT action, actor_id, resource_type, resource_id, result FROM audit_logs")) == [
        ("DELETE /documents/{doc_id}", "anonymous", "document", "6", "success"),
        ("DELETE /documents/{doc_id}", "carol", "document", "5", "success"),
    ]


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"part {i}\n".encode() for i in range(3))
    if path == "/sized":
        body = [b"abc", b"def"]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return iter(body)
    if path == "/fail-late":

        def failing() -> Any:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first\n"
            raise ValueError("late")

        return failing()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no"]


def test_plain_wsgi_app_with_remote_user_and_route_resolver(db: str, audited_app: Audited) -> None:
    def route(environ: dict[str, Any]) -> str | None:
        return environ["PATH_INFO"] if environ["PATH_INFO"] in ("/gen", "/sized", "/fail-late") else None

    def with_user(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_USER"] = environ.get("HTTP_X_USER", "")
        return app(environ, start_response)

    app = AuditMiddleware(plain_wsgi, route=route)
    server = Waitress(with_user)
    try:
        assert request(server.port, "GET", "/gen", {"X-User": "dave"}) == (200, b"part 0\npart 1\npart 2\n")
        assert request(server.port, "GET", "/sized", {"X-User": "dave"}) == (200, b"abcdef")
        assert request(server.port, "GET", "/x/1")[0] == 404
        try:
            request(server.port, "GET", "/fail-late")
        except Exception:
            pass  # the server cuts the response
    finally:
        server.stop()
    assert audited_app.close()
    got = sorted(rows(db, "SELECT action, actor_id, result, attributes->>'error.type' FROM audit_logs"))
    assert got == [
        ("GET (unmatched)", "anonymous", "failure", None),
        ("GET /fail-late", "anonymous", "failure", "ValueError"),
        ("GET /gen", "dave", "success", None),
        ("GET /sized", "dave", "success", None),
    ]
    assert verify(db).ok


def test_trace_correlation_with_the_wsgi_instrumentation(db: str, audited_app: Audited) -> None:
    """opentelemetry-instrumentation-wsgi around the audited Flask app: its SERVER span is on the records."""
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    app = flask_app()
    server = Waitress(OpenTelemetryMiddleware(app, tracer_provider=audited_app.tracer_provider))
    try:
        assert request(server.port, "GET", "/patients/p1", {"Authorization": "Bearer user-1"})[0] == 200
        assert request(server.port, "POST", "/patients/p2/notes", {"Authorization": "Bearer user-1"})[0] == 201
    finally:
        server.stop()
    assert audited_app.close()
    spans = {
        s.attributes.get("http.target") or s.attributes.get("url.path"): s.get_span_context()
        for s in audited_app.spans.get_finished_spans()
        if s.kind.name == "SERVER"
    }
    stored = {a: (t, s) for a, t, s in rows(db, "SELECT action, trace_id, span_id FROM audit_logs")}
    for action, path in (
        ("GET /patients/{patient_id}", "/patients/p1"),
        ("note.create", "/patients/p2/notes"),
        ("POST /patients/{patient_id}/notes", "/patients/p2/notes"),
    ):
        ctx = spans[path]
        assert stored[action] == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"), (action, spans)


def test_trace_correlation_with_the_flask_instrumentation(db: str, audited_app: Audited) -> None:
    instrumentation = pytest.importorskip(
        "opentelemetry.instrumentation.flask",
        reason="opentelemetry-instrumentation-flask is not in the test extra: its newest release (0.66b1) pins "
        "opentelemetry-api 1.45.1 and would pull the whole stack down to 0.66b1; install it to run this test",
    )
    app = flask_app()
    instrumentation.FlaskInstrumentor().instrument_app(app, tracer_provider=audited_app.tracer_provider)
    server = Waitress(app)
    try:
        assert request(server.port, "GET", "/patients/p1", {"Authorization": "Bearer user-1"})[0] == 200
        assert request(server.port, "POST", "/patients/p2/notes", {"Authorization": "Bearer user-1"})[0] == 201
    finally:
        server.stop()
    assert audited_app.close()
    server_spans = {
        s.name: s.get_span_context() for s in audited_app.spans.get_finished_spans() if s.kind.name == "SERVER"
    }
    stored = {a: (t, s) for a, t, s in rows(db, "SELECT action, trace_id, span_id FROM audit_logs")}
    for action, span in (
        ("GET /patients/{patient_id}", "GET /patients/<patient_id>"),
        ("note.create", "POST /patients/<patient_id>/notes"),
        ("POST /patients/{patient_id}/notes", "POST /patients/<patient_id>/notes"),
    ):
        ctx = server_spans[span]
        assert stored[action] == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"), (action, server_spans)
