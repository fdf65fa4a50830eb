"""Flask: the WSGI middleware plus what only Flask knows (route rule, view, user).

::

    from flask import Flask
    from otel_audit.web.flask import FlaskAudit, audited

    app = Flask(__name__)
    FlaskAudit(app, exclude=["/health"], resources={"patient_id": "patient_record"})

It wraps ``app.wsgi_app`` in :class:`otel_audit.web.wsgi.AuditMiddleware` and
connects to Flask's ``request_started`` signal (the URL rule is matched by
then, and no ``before_request`` function can skip it) and ``teardown_request``
(which runs even when the view raised). The route is the URL rule with
``<int:id>`` written ``{id}``; the actor defaults to ``flask.g.user``, then
Flask-Login's ``current_user``; the session id to ``session.sid`` (server-side
sessions such as Flask-Session) or the configured cookie/header.

Instrumented with ``opentelemetry-instrumentation-flask``? Either order works:
the server span is picked up at ``request_started``, ``after_request`` and
``teardown_request``, whichever sees it current.
"""

from __future__ import annotations

from typing import Any

import flask

from otel_audit.web._core import RequestAudit, audited, flask_template, mark_of, not_audited
from otel_audit.web.wsgi import ENVIRON_REQUEST, AuditMiddleware

__all__ = ["FlaskAudit", "audited", "not_audited"]


class FlaskAudit:
    """The Flask extension (``FlaskAudit(app, **options)`` or ``ext = FlaskAudit(**options); ext.init_app(app)``).

    Options are those of :class:`~otel_audit.web._core.WebAuditConfig`.
    """

    def __init__(self, app: flask.Flask | None = None, **options: Any) -> None:
        self.options = options
        self.middleware: AuditMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        self.middleware = AuditMiddleware(app.wsgi_app, **self.options)
        app.wsgi_app = self.middleware  # type: ignore[method-assign]
        flask.request_started.connect(self._started, app, weak=False)
        app.after_request(self._after)
        app.teardown_request(self._teardown)
        app.extensions["otel_audit"] = self

    @staticmethod
    def _state() -> RequestAudit | None:
        state = flask.request.environ.get(ENVIRON_REQUEST)
        return state if isinstance(state, RequestAudit) else None

    def _started(self, sender: flask.Flask, **_: Any) -> None:
        state = self._state()
        if state is None:
            return
        request = flask.request
        rule = request.url_rule
        if rule is not None:
            state.route = flask_template(rule.rule)
            state.params = request.view_args or {}
            if state.mark is None:
                state.mark = mark_of(sender.view_functions.get(request.endpoint or ""))
        state.request = request._get_current_object()  # type: ignore[attr-defined]
        state.actor_resolver = _flask_actor
        state.session_resolver = _flask_session
        state.capture_trace()

    def _after(self, response: flask.Response) -> flask.Response:
        state = self._state()
        if state is not None:
            state.capture_trace()  # opentelemetry-instrumentation-flask's span is current from before_request on
        return response

    def _teardown(self, exc: BaseException | None) -> None:
        state = self._state()
        if state is None:
            return
        if exc is not None and state.error is None:
            state.error = exc
        state.capture_trace()
        state.freeze()  # g, Flask-Login and the session are gone once the request context is popped


def _flask_actor() -> Any:
    if not flask.has_request_context():
        return None
    user = flask.g.get("user")
    if user is not None:
        return user
    app = flask.current_app
    if getattr(app, "login_manager", None) is not None or "login_manager" in app.extensions:
        from flask_login import current_user

        if current_user and current_user.is_authenticated:
            return current_user._get_current_object()
    return None


def _flask_session() -> str | None:
    if not flask.has_request_context():
        return None
    session = flask.session
    value = getattr(session, "sid", None) or getattr(session, "session_id", None)
    return str(value) if value else None
