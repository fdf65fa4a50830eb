"""The scenario's Django application, served by waitress in a child process.

``python -m tests.web_django_app`` with ``OTEL_AUDIT_DSN`` and ``OTEL_AUDIT_SPOOL_DIR``
set; prints ``PORT <n>`` once listening and stops (flushing the audit trail)
when its standard input closes. ``WEB_TRACE=manual`` wraps the application in
a SERVER span as opentelemetry-instrumentation-wsgi would; ``WEB_TRACE=django``
uses opentelemetry-instrumentation-django. Every response carries the span
current in the view as ``X-Span: <trace id>-<span id>``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import django
from django.conf import settings

from tests import web_scenario


class User:
    is_authenticated = True
    is_superuser = False

    def __init__(self, pk: str) -> None:
        self.pk = pk


class Anonymous:
    is_authenticated = False
    pk = None


def authentication(get_response: Any) -> Any:
    """Stands in for django.contrib.auth's middleware: sets request.user, never answers itself."""

    def middleware(request: Any) -> Any:
        auth = request.headers.get("Authorization", "")
        request.user = User(auth[7:]) if auth.startswith("Bearer ") else Anonymous()
        return get_response(request)

    return middleware


def span_header(get_response: Any) -> Any:
    def middleware(request: Any) -> Any:
        from opentelemetry import trace

        response = get_response(request)
        ctx = trace.get_current_span().get_span_context()
        response["X-Span"] = f"{ctx.trace_id:032x}-{ctx.span_id:016x}" if ctx.is_valid else "-"
        return response

    return middleware


settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="test",
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        f"{__name__}.span_header",
        f"{__name__}.authentication",
        "otel_audit.web.django.AuditMiddleware",
    ],
    INSTALLED_APPS=[],
    LOGGING_CONFIG=None,
    OTEL_AUDIT_WEB={**web_scenario.OPTIONS, "hook": web_scenario.hook},
)
django.setup()

from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from otel_audit.web.django import audited, not_audited

log = logging.getLogger("clinic")


def require_user(request: Any) -> Any:
    if not request.user.is_authenticated:
        return HttpResponse(status=401)
    if request.user.pk.startswith("guest"):
        raise PermissionDenied
    return None


def read_patient(request: Any, patient_id: str) -> Any:
    return require_user(request) or JsonResponse({"id": patient_id})


@csrf_exempt
def add_note(request: Any, patient_id: str) -> Any:
    denied = require_user(request)
    if denied:
        return denied
    log.info(
        "note added",
        extra={
            "audit.action": "note.create",
            "audit.resource.type": "note",
            "audit.resource.id": f"{patient_id}-n",
            "audit.result": "success",
        },
    )
    return JsonResponse({"ok": "yes"}, status=201)


def boom(request: Any) -> Any:
    raise RuntimeError("boom")


def stream(request: Any) -> Any:
    def chunks() -> Any:
        for i in range(40):
            yield f"chunk {i}\n".encode()
            time.sleep(0.05)

    async def async_chunks() -> Any:
        import asyncio

        for i in range(40):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0.05)

    # Under ASGI Django consumes a synchronous iterator before sending it: stream asynchronously there.
    content = async_chunks() if os.environ.get("WEB_SERVER") == "uvicorn" else chunks()
    return StreamingHttpResponse(content, content_type="text/plain")


@not_audited
def metrics(request: Any) -> Any:
    return HttpResponse("m")


def health(request: Any) -> Any:
    return HttpResponse("ok")


@csrf_exempt
@audited(action="report.export", resource_type="report", resource_id="report_id", fail_closed=True)
def export(request: Any, report_id: str) -> Any:
    return require_user(request) or JsonResponse({"report": report_id})


urlpatterns = [
    path("patients/<str:patient_id>", read_patient),
    path("patients/<str:patient_id>/notes", add_note),
    path("boom", boom),
    path("stream", stream),
    path("health", health),
    path("metrics", metrics),
    path("exports/<str:report_id>", export),
]


def main() -> None:
    import otel_audit

    logging.getLogger("django").setLevel(logging.CRITICAL)
    audit = otel_audit.configure(service_name="django-app", metrics=False)
    from django.core.wsgi import get_wsgi_application
    from waitress import create_server

    application: Any = get_wsgi_application()
    mode = os.environ.get("WEB_TRACE")
    if mode == "django":
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        DjangoInstrumentor().instrument(tracer_provider=TracerProvider())
        application = get_wsgi_application()
    elif mode == "manual":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("manual")
        inner = application

        def application(environ: Any, start_response: Any) -> Any:
            with tracer.start_as_current_span("HTTP", kind=trace.SpanKind.SERVER):
                return list(inner(environ, start_response))

    if os.environ.get("WEB_SERVER") == "uvicorn":
        import socket

        import uvicorn
        from django.core.asgi import get_asgi_application

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(get_asgi_application(), lifespan="off", log_level="critical", proxy_headers=False)
        asgi_server = uvicorn.Server(config)
        thread = threading.Thread(target=asgi_server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not asgi_server.started:
            time.sleep(0.01)
        print("PORT", sock.getsockname()[1], flush=True)
        sys.stdin.read()
        asgi_server.should_exit = True
        thread.join(20)
    else:
        # Waitress would drop X-Forwarded-* from untrusted peers itself; let them through to be judged (and noted).
        server = create_server(application, host="127.0.0.1", port=0, threads=8, clear_untrusted_proxy_headers=False)
        print("PORT", server.socket.getsockname()[1], flush=True)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        sys.stdin.read()
        server.task_dispatcher.shutdown()
        server.close()
    ok = audit.shutdown(timeout=30)
    sys.exit(0 if ok else 3)


if __name__ == "__main__":
    main()
