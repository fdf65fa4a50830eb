"""The web core's rules, without a server: client address, actor, route templates, selection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otel_audit.web._core import (
    WebAuditConfig,
    _Trusted,
    actor_of,
    client_address,
    default_resource,
    django_template,
    flask_template,
    result_of,
)


@pytest.mark.parametrize(
    ("peer", "xff", "forwarded", "expected"),
    [
        ("203.0.113.5", None, None, ("203.0.113.5", None)),
        # Untrusted peer: the header is ignored, and noted.
        ("203.0.113.5", "1.2.3.4", None, ("203.0.113.5", "x-forwarded-for: 1.2.3.4")),
        ("203.0.113.5", None, "for=1.2.3.4", ("203.0.113.5", "forwarded: for=1.2.3.4")),
        # Trusted proxy: walk from the right, skip trusted hops; what a client prepended is not believed.
        ("10.0.0.2", "6.6.6.6, 198.51.100.4", None, ("198.51.100.4", None)),
        ("10.0.0.2", "198.51.100.4, 10.0.0.9", None, ("198.51.100.4", None)),
        ("10.0.0.2", "198.51.100.4:5555", None, ("198.51.100.4", None)),
        ("10.0.0.2", "[2001:db8::1]:443", None, ("2001:db8::1", None)),
        ("10.0.0.2", None, 'for="[2001:db8:cafe::17]:4711";proto=http, for=10.0.0.7', ("2001:db8:cafe::17", None)),
        ("10.0.0.2", "unknown", None, ("10.0.0.2", None)),
        ("10.0.0.2", "10.0.0.3, 10.0.0.4", None, ("10.0.0.3", None)),
        ("::ffff:10.0.0.2", "198.51.100.4", None, ("198.51.100.4", None)),
        (None, "198.51.100.4", None, ("198.51.100.4", None)),  # a Unix-socket peer, trusted as "unix"
    ],
)
def test_client_address(peer: str | None, xff: str | None, forwarded: str | None, expected: tuple) -> None:
    assert client_address(peer, xff, forwarded, _Trusted(["10.0.0.0/24", "unix"])) == expected


def test_no_trusted_proxies_means_no_header_is_believed() -> None:
    assert client_address("127.0.0.1", "1.2.3.4", None, _Trusted([])) == ("127.0.0.1", "x-forwarded-for: 1.2.3.4")
    with pytest.raises(ValueError, match="not an IP address"):
        _Trusted(["proxy.internal"])


class DjangoLikeUser:
    is_authenticated = True
    is_superuser = True
    pk = 7


class AnonymousUser:
    is_authenticated = False
    id = None
    pk = None


class LoginUser:
    is_authenticated = True

    def get_id(self) -> str:
        return "u-9"


class StarletteUser:
    is_authenticated = True

    def __init__(self) -> None:
        self.username = "alice"

    @property
    def identity(self) -> str:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("bob", ("bob", "user")),
        (("svc-1", "service"), ("svc-1", "service")),
        ({"id": 5, "type": "admin"}, ("5", "admin")),
        ({"sub": "oidc|1"}, ("oidc|1", "user")),
        (DjangoLikeUser(), ("7", "admin")),
        (AnonymousUser(), None),
        (LoginUser(), ("u-9", "user")),
        (StarletteUser(), ("alice", "user")),
    ],
)
def test_actor_of(value: object, expected: tuple | None) -> None:
    assert actor_of(value) == expected


def test_templates_and_default_resources() -> None:
    assert flask_template("/patients/<int:patient_id>/notes/<note_id>") == "/patients/{patient_id}/notes/{note_id}"
    assert django_template("patients/<int:pk>/") == "/patients/{pk}/"
    assert django_template(r"^patients/(?P<pk>[0-9]+)/notes/(?P<n>\d{2})/$") == "/patients/{pk}/notes/{n}/"
    assert default_resource("/patients/{id}", {"id": 4}) == ("patients", 4)
    assert default_resource("/patients/{pid}/notes/{nid}", {"pid": 1, "nid": 2}) == ("notes", 2)
    assert default_resource("/{tenant}", {"tenant": "t"}) == ("tenant", "t")
    assert default_resource("/reports", {}) == ("http.route", "/reports")
    assert default_resource(None, {}) == ("http.route", "(unmatched)")


def test_marks_are_found_through_wrappers_and_class_based_views() -> None:
    import functools

    from otel_audit.web._core import audited, mark_of, not_audited

    @audited(action="export")
    def view() -> None: ...

    @functools.wraps(view)
    def wrapper() -> None: ...

    @audited(resource_type="report")
    class ReportView: ...

    def as_view() -> None: ...

    as_view.view_class = ReportView  # what Django's View.as_view() and Flask's MethodView.as_view() set
    assert mark_of(wrapper).action == "export"
    assert mark_of(as_view).resource_type == "report"
    assert mark_of(not_audited(lambda: None)).audit is False
    assert mark_of(lambda: None) is None


def test_results() -> None:
    assert [result_of(s, None, False, True) for s in (200, 204, 302, 401, 403, 404, 500)] == [
        "success",
        "success",
        "success",
        "denied",
        "denied",
        "failure",
        "failure",
    ]
    assert result_of(200, RuntimeError(), False, False) == "failure"
    assert result_of(403, RuntimeError(), False, False) == "denied"
    assert result_of(200, None, True, False) == "failure"  # cut short
    assert result_of(200, None, True, True) == "success"  # complete, the client left afterwards


def test_selection() -> None:
    config = WebAuditConfig(requests="state-changing", exclude=["/health", "/static/*"])
    assert config.selected("POST", "/x", "/x", None)
    assert not config.selected("GET", "/x", "/x", None)
    assert not config.selected("POST", "/health", "/health", None)
    assert not config.selected("POST", None, "/static/app.js", None)
    with pytest.raises(ValueError, match="requests="):
        WebAuditConfig(requests="some")  # type: ignore[arg-type]


def test_importing_otel_audit_imports_no_framework() -> None:
    code = (
        "import sys, otel_audit, otel_audit.web, otel_audit.web.asgi, otel_audit.web.wsgi\n"
        "bad = [m for m in ('flask', 'django', 'starlette', 'fastapi', 'werkzeug') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import otel_audit.web.flask\n"
        "assert 'django' not in sys.modules and 'starlette' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
