"""One scenario, every framework: the same application contract, the same traffic, the same checks.

Each framework's test app implements these routes (with that framework's own
routing, users and errors):

* ``GET /patients/{patient_id}``: ``Authorization: Bearer <user>``; none -> 401,
  a ``guest*`` user -> 403, else 200. The user is where the framework's default
  actor resolver looks (``request.state.user``, ``flask.g.user``, ``request.user``).
* ``POST /patients/{patient_id}/notes``: 201, and an explicit audit call
  inside the handler that names neither actor, session nor client address.
* ``GET /boom``: the handler raises ``RuntimeError``.
* ``GET /stream``: 40 chunks ``chunk N``, 50 ms apart.
* ``GET /health``: excluded.
* ``POST /exports/{report_id}``: ``@audited(action="report.export", resource_type="report",
  resource_id="report_id", fail_closed=True)``.

and is configured with :data:`OPTIONS` (plus the hook from :func:`hook`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from otel_audit.web._core import session_digest
from tests.web_harness import concurrently, disconnect_mid_stream, request, wait_for

TRUSTED_PROXY = "127.0.0.2"
OPTIONS: dict[str, Any] = {
    "exclude": ["/health"],
    "resources": {"patient_id": "patient_record"},
    "trusted_proxies": [TRUSTED_PROXY],
    "session_cookie": "sid",
}


def hook(view: Any, attributes: dict[str, Any]) -> bool | None:
    """Adds the request id; vetoes requests that ask for it."""
    if view.header("x-audit-veto") == "1":
        return False
    rid = view.header("x-request-id")
    if rid:
        attributes["request.id"] = rid
    return None


@dataclass
class Expected:
    action: str
    actor: str
    result: str
    status: int | None
    resource_type: str
    resource_id: str
    ip: str = "127.0.0.1"
    session: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Traffic:
    expected: dict[str, Expected] = field(default_factory=dict)
    vetoed: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # request id -> actor of the inner record
    health: int = 0


def drive(port: int, *, patients: int = 150, notes: int = 30) -> Traffic:
    traffic = Traffic()
    calls = []

    def call(
        rid: str, method: str, path: str, headers: dict[str, str], expected_status: int, source: str = "127.0.0.1"
    ) -> Any:
        def run() -> None:
            status, _ = request(port, method, path, {**headers, "X-Request-Id": rid}, source=source)
            assert status == expected_status, (method, path, headers, status)

        return run

    for i in range(patients):
        rid = uuid.uuid4().hex
        user = f"user-{i % 7}"
        headers = {"Cookie": f"theme=dark; sid=s{i % 5}", "User-Agent": "scenario/1"}
        session = session_digest(f"s{i % 5}")
        if i % 5 == 0:
            status, result, actor = 401, "denied", "anonymous"
        elif i % 7 == 0:
            user, status, result, actor = "guest-1", 403, "denied", "guest-1"
            headers["Authorization"] = f"Bearer {user}"
        else:
            status, result, actor = 200, "success", user
            headers["Authorization"] = f"Bearer {user}"
        traffic.expected[rid] = Expected(
            "GET /patients/{patient_id}", actor, result, status, "patient_record", f"p{i}", session=session
        )
        calls.append(call(rid, "GET", f"/patients/p{i}", headers, status))
    for i in range(notes):
        rid = uuid.uuid4().hex
        user = f"nurse-{i % 3}"
        headers = {"Authorization": f"Bearer {user}", "Cookie": f"sid=n{i}", "Content-Type": "application/json"}
        traffic.expected[rid] = Expected(
            "POST /patients/{patient_id}/notes",
            user,
            "success",
            201,
            "patient_record",
            f"q{i}",
            session=session_digest(f"n{i}"),
        )
        traffic.notes[rid] = user
        calls.append(call(rid, "POST", f"/patients/q{i}/notes", headers, 201))
    # A handler exception.
    rid = uuid.uuid4().hex
    traffic.expected[rid] = Expected(
        "GET /boom", "user-1", "failure", None, "http.route", "/boom", extra={"error.type": "RuntimeError"}
    )
    calls.append(call(rid, "GET", "/boom", {"Authorization": "Bearer user-1"}, 500))
    # A streamed response read to its end.
    rid = uuid.uuid4().hex
    traffic.expected[rid] = Expected("GET /stream", "user-6", "success", 200, "http.route", "/stream")
    calls.append(call(rid, "GET", "/stream", {"Authorization": "Bearer user-6"}, 200))
    # Excluded, vetoed.
    for _ in range(3):
        calls.append(call(uuid.uuid4().hex, "GET", "/health", {}, 200))
        traffic.health += 1
    rid = uuid.uuid4().hex
    traffic.vetoed.append(rid)
    calls.append(call(rid, "GET", "/patients/vetoed", {"Authorization": "Bearer user-1", "X-Audit-Veto": "1"}, 200))
    # A spoofed X-Forwarded-For from an untrusted peer is not believed; from the trusted proxy it is.
    rid = uuid.uuid4().hex
    traffic.expected[rid] = Expected(
        "GET /patients/{patient_id}",
        "user-2",
        "success",
        200,
        "patient_record",
        "spoof",
        ip="127.0.0.1",
        extra={"otel_audit.web.forwarded_ignored": "x-forwarded-for: 203.0.113.9"},
    )
    calls.append(
        call(rid, "GET", "/patients/spoof", {"Authorization": "Bearer user-2", "X-Forwarded-For": "203.0.113.9"}, 200)
    )
    rid = uuid.uuid4().hex
    traffic.expected[rid] = Expected(
        "GET /patients/{patient_id}", "user-3", "success", 200, "patient_record", "proxied", ip="198.51.100.4"
    )
    calls.append(
        call(
            rid,
            "GET",
            "/patients/proxied",
            {"Authorization": "Bearer user-3", "X-Forwarded-For": "6.6.6.6, 198.51.100.4"},
            200,
            source=TRUSTED_PROXY,
        )
    )
    rid = uuid.uuid4().hex
    traffic.expected[rid] = Expected(
        "GET /patients/{patient_id}", "user-4", "success", 200, "patient_record", "forwarded", ip="2001:db8::17"
    )
    calls.append(
        call(
            rid,
            "GET",
            "/patients/forwarded",
            {"Authorization": "Bearer user-4", "Forwarded": 'for="[2001:db8::17]:4711";proto=https'},
            200,
            source=TRUSTED_PROXY,
        )
    )
    concurrently(calls)
    return traffic


def disconnect(port: int) -> str:
    """A client that goes away in the middle of a streamed response."""
    rid = uuid.uuid4().hex
    received = disconnect_mid_stream(port, "/stream", {"Authorization": "Bearer user-5", "X-Request-Id": rid})
    assert b"chunk" in received
    return rid


def rows_by_request(dsn: str) -> dict[str, list[dict[str, Any]]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT attributes->>'request.id', action, actor_id, actor_type, result, resource_type, resource_id, "
            "host(ip_address), session_id, user_agent, attributes, trace_id, span_id, seq FROM audit_logs"
        )
        names = [d.name for d in cur.description]
        found: dict[str, list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            record = dict(zip(names, row, strict=True))
            found.setdefault(row[0] or "", []).append(record)
    return found


def wait_stored(dsn: str, predicate: Any, timeout: float = 20.0) -> dict[str, list[dict[str, Any]]]:
    """The stored records once ``predicate`` holds for them (or as they are after ``timeout``)."""

    def ready() -> dict[str, list[dict[str, Any]]] | None:
        found = rows_by_request(dsn)
        return found if predicate(found) else None

    return wait_for(ready, timeout) or rows_by_request(dsn)


def check(dsn: str, traffic: Traffic, disconnected: str | None) -> dict[str, list[dict[str, Any]]]:
    found = rows_by_request(dsn)
    for rid, exp in traffic.expected.items():
        records = [r for r in found.get(rid, []) if r["action"] == exp.action]
        assert len(records) == 1, (rid, exp, found.get(rid))
        r = records[0]
        attrs = r["attributes"]
        assert (r["actor_id"], r["result"], r["resource_type"], r["resource_id"], r["host"]) == (
            exp.actor,
            exp.result,
            exp.resource_type,
            exp.resource_id,
            exp.ip,
        ), (exp, r)
        assert r["actor_type"] == "user"
        assert attrs["http.request.method"] == exp.action.split(" ")[0]
        assert attrs.get("http.response.status_code") in ((exp.status,) if exp.status else (None, 500)), r
        assert attrs.get("http.route") == exp.action.split(" ", 1)[1]
        assert type(attrs["otel_audit.web.duration_us"]) is int and attrs["otel_audit.web.duration_us"] > 0
        assert attrs["network.peer.address"] in ("127.0.0.1", TRUSTED_PROXY)
        if exp.session is not None:
            assert r["session_id"] == exp.session, r
        for key, value in exp.extra.items():
            assert attrs.get(key) == value, (key, attrs)
        if exp.ip == "127.0.0.1" and "otel_audit.web.forwarded_ignored" not in exp.extra:
            assert "otel_audit.web.forwarded_ignored" not in attrs
        # The raw path never becomes the action (cardinality), only url.path.
        assert exp.resource_type == "http.route" or exp.resource_id not in r["action"]
    for rid in traffic.vetoed:
        assert rid not in found, found[rid]
    assert not any(r["action"].startswith("GET /health") for rs in found.values() for r in rs)
    # Explicit audit calls inside the handler inherited actor, session and client address.
    inner = [r for r in found.get("", []) if r["action"] == "note.create"]
    assert len(inner) == len(traffic.notes)
    assert sorted(r["actor_id"] for r in inner) == sorted(traffic.notes.values())
    assert all(r["host"] == "127.0.0.1" and r["session_id"] and r["session_id"].startswith("sha256:") for r in inner)
    assert {r["resource_id"] for r in inner} == {f"q{i}-n" for i in range(len(traffic.notes))}
    if disconnected is not None:
        (r,) = found[disconnected]
        assert r["action"] == "GET /stream" and r["result"] == "failure", r
        assert r["attributes"]["otel_audit.web.client_disconnected"] is True
        assert r["actor_id"] == "user-5"
    return found
