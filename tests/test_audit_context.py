"""otel_audit.audit_context(): what audit records inherit, and what they do not."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from pathlib import Path

import pytest
from opentelemetry import baggage, context

from otel_audit import audit_context, update_audit_context
from otel_audit.context import context_attributes
from tests.harness import App, rows, verify

BARE = {
    "audit.action": "read",
    "audit.resource.type": "patient_record",
    "audit.resource.id": "p-1",
    "audit.result": "success",
}


def test_nesting_resolver_and_forbidden_names() -> None:
    assert context_attributes() == {}
    with audit_context(actor_id="a", session_id="s", attributes={"tenant.id": "t1"}):
        with audit_context(actor_id="b", resolver=lambda: {"user_agent.original": "cli/1", "x": None}):
            assert context_attributes() == {
                "audit.actor.id": "b",
                "session.id": "s",
                "tenant.id": "t1",
                "user_agent.original": "cli/1",
            }
            update_audit_context(client_address="10.0.0.5")
            assert context_attributes()["client.address"] == "10.0.0.5"
        assert context_attributes() == {"audit.actor.id": "a", "session.id": "s", "tenant.id": "t1"}
    assert context_attributes() == {}
    with pytest.raises(ValueError, match="audit.action"):
        with audit_context({"audit.action": "x"}):
            pass
    with pytest.raises(LookupError):
        update_audit_context(actor_id="x")


def test_values_are_what_opentelemetry_can_carry() -> None:
    class Tenant:
        def __str__(self) -> str:
            return "tenant-9"

    with audit_context(
        {"tenant": Tenant(), "ids": (1, 2), "ok": True},
        actor_id=42,  # type: ignore[arg-type]
        resolver=lambda: {"obj": object.__new__(Tenant)},
    ):
        assert context_attributes() == {
            "tenant": "tenant-9",
            "ids": [1, 2],
            "ok": True,
            "audit.actor.id": 42,
            "obj": "tenant-9",
        }


def test_an_inner_context_beats_an_outer_resolver() -> None:
    with audit_context(resolver=lambda: {"audit.actor.id": "request-user"}):
        assert context_attributes()["audit.actor.id"] == "request-user"
        with audit_context(actor_id="system-job", actor_type="system"):
            assert context_attributes()["audit.actor.id"] == "system-job"


def test_a_failing_resolver_is_logged_and_the_fixed_attributes_remain(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict:
        raise RuntimeError("no user store")

    with audit_context(session_id="s", resolver=broken):
        assert context_attributes() == {"session.id": "s"}
    assert "resolver raised" in caplog.text


@pytest.mark.storage
def test_records_inherit_from_the_context_explicit_wins_baggage_comes_after(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    token = context.attach(baggage.set_baggage("session.id", "from-baggage"))
    try:
        with audit_context(
            actor_id="worker-1", actor_type="service", client_address="10.9.8.7", attributes={"job.id": "j-5"}
        ):
            app.logger.info("inherits", extra={**BARE, "audit.resource.id": "r1"})
            app.logger.info(
                "explicit wins",
                extra={**BARE, "audit.resource.id": "r2", "audit.actor.id": "u-2", "session.id": "explicit"},
            )
            app.logger.info("not an audit record", extra={"k": 1})
            seen: list[str] = []
            # A thread run in a copy of the context sees it; a bare thread does not.
            ctx = contextvars.copy_context()
            t = threading.Thread(
                target=ctx.run,
                args=(
                    app.logger.info,
                    "thread",
                ),
                kwargs={"extra": {**BARE, "audit.resource.id": "r3"}},
            )
            t.start()
            t.join()
            bare = threading.Thread(target=lambda: seen.append(str(context_attributes())))
            bare.start()
            bare.join()

            async def task() -> None:
                app.logger.info("task", extra={**BARE, "audit.resource.id": "r4"})

            asyncio.run(task())  # asyncio.run copies the current context
        app.logger.info("outside", extra={**BARE, "audit.resource.id": "r5", "audit.actor.id": "u-5"})
    finally:
        context.detach(token)
    assert app.close()
    assert seen == ["{}"]
    # (resource.* attributes, the Resource's, are left out: they are not the context's)
    got = rows(
        db,
        "SELECT resource_id, actor_id, actor_type, host(ip_address), session_id, "
        "(SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM jsonb_each(attributes) "
        "WHERE key NOT LIKE 'resource.%') FROM audit_logs ORDER BY seq",
    )
    assert got == [
        ("r1", "worker-1", "service", "10.9.8.7", "from-baggage", {"job.id": "j-5"}),
        ("r2", "u-2", "service", "10.9.8.7", "explicit", {"job.id": "j-5"}),
        ("r3", "worker-1", "service", "10.9.8.7", "from-baggage", {"job.id": "j-5"}),
        ("r4", "worker-1", "service", "10.9.8.7", "from-baggage", {"job.id": "j-5"}),
        ("r5", "u-5", "user", None, "from-baggage", {}),
    ]
    # The OTLP export carries what was sealed; the plain record got nothing.
    exported = {r.log_record.body: dict(r.log_record.attributes) for r in app.exporter.get_finished_logs()}
    assert exported["inherits"]["audit.actor.id"] == "worker-1"
    assert exported["not an audit record"] == {"k": 1}
    assert verify(db).ok
