"""Request auditing for web applications: one sealed audit record per request.

Pick the adapter of your framework; each is an optional extra that pulls in
nothing but that framework (``pip install 'otel-audit[asgi]'``, ``[wsgi]``,
``[flask]``, ``[django]``), and none is imported by ``import otel_audit``:

* :mod:`otel_audit.web.asgi` — ``AuditMiddleware`` for Starlette, FastAPI, any ASGI app;
* :mod:`otel_audit.web.wsgi` — ``AuditMiddleware`` for any WSGI app;
* :mod:`otel_audit.web.flask` — ``FlaskAudit`` (the WSGI middleware plus Flask's routes and users);
* :mod:`otel_audit.web.django` — ``AuditMiddleware`` for ``settings.MIDDLEWARE``.

All share :class:`WebAuditConfig` (which requests, actor, resources, trusted
proxies, sessions, hook, fail-closed) and the route marks :func:`audited` and
:func:`not_audited`. While a request is handled, an audit context
(:func:`otel_audit.audit_context`) is open: explicit audit calls in the
handler inherit its actor, session, client address and user agent.
"""

from otel_audit.web._core import (
    ANONYMOUS,
    RequestView,
    RouteAudit,
    WebAuditConfig,
    audited,
    current_request,
    not_audited,
)

__all__ = [
    "ANONYMOUS",
    "RequestView",
    "RouteAudit",
    "WebAuditConfig",
    "audited",
    "current_request",
    "not_audited",
]
