"""Hostile input through the real path: a ``logging`` call -> OpenTelemetry's LoggingHandler ->
the audit processor -> spool -> PostgreSQL, then verification.

Every case: the logging call returns normally, exactly one record is stored, its actor,
action, resource and result are intact, a problem note names the field and the
conversion, and the trail verifies.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.logging.handler import LoggingHandler

from otel_audit.core.normalize import MAX_DEPTH
from otel_audit.errors import AuditRecordInvalid
from tests.harness import VALID, App, rows, verify

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SURROGATE_NOTE = "invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD"


class RaisingStr:
    def __str__(self) -> str:
        raise ValueError("no text for you")

    def __repr__(self) -> str:
        raise ValueError("nor a repr")


class Opaque:
    """No __str__ or __repr__ of its own: OpenTelemetry would store None for it."""


def nested(depth: int) -> dict:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def stored(dsn: str) -> list[dict]:
    return [orjson.loads(bytes(c)) for (c,) in rows(dsn, "SELECT canonical FROM audit_logs ORDER BY seq")]


def columns(dsn: str) -> list[tuple]:
    return rows(dsn, "SELECT actor_id, action, resource_type, resource_id, result, problems FROM audit_logs")


INTACT = ("user-123", "read", "patient_record", "patient-456", "success")

CASES = {
    "surrogate in a value": (
        {"note": "bad \udcff byte"},
        "patient record viewed",
        [f"note: {SURROGATE_NOTE}"],
        {"note": "bad \ufffd byte"},
    ),
    "surrogate in a key": ({"k\udc80": 1}, "patient record viewed", [f"extra: key: {SURROGATE_NOTE}"], {"k\ufffd": 1}),
    "surrogate in old_values": (
        {"audit.old_values": {"name": "a\ud800b", "k\udfff": 1}},
        "patient record viewed",
        [f"audit.old_values.name: {SURROGATE_NOTE}", f"audit.old_values: key: {SURROGATE_NOTE}"],
        None,
    ),
    "surrogate in the message": ({}, "viewed \udcff", [f"message: {SURROGATE_NOTE}"], None),
    "3000-deep dict": (
        {"payload": nested(3000)},
        "patient record viewed",
        [f"payload{'.a' * MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels; this part stored as JSON text"],
        None,
    ),
    "str() raises": (
        {"obj": RaisingStr()},
        "patient record viewed",
        [
            "obj: value of type tests.test_input_pipeline.RaisingStr stored as its text form (str() raised ValueError: "
            "no text for you and repr() failed too)"
        ],
        {"obj": "<unprintable tests.test_input_pipeline.RaisingStr>"},
    ),
    "non-text keys in old_values": (
        {"audit.old_values": {0: "zero", None: "none", Opaque(): "opaque", "": "empty"}},
        "patient record viewed",
        [
            "audit.old_values: key of type int stored as text '0'",
            "audit.old_values: key of type NoneType stored as text 'None'",
            "audit.old_values: empty key stored as '(empty key)' (OpenTelemetry drops empty keys)",
        ],
        None,
    ),
    "sets, datetimes, objects": (
        {"tags": {"b", "a"}, "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "o": Opaque()},
        "patient record viewed",
        [
            "tags: set stored as a list (sorted)",
            "when: datetime.datetime stored as ISO 8601 text",
            "o: value of type tests.test_input_pipeline.Opaque stored as its text form",
        ],
        {"tags": ["a", "b"], "when": "2026-01-02T03:04:05+00:00"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_extra_is_stored_once_with_a_note(db: str, spool_dir: Path, case: str) -> None:
    extra, message, notes, attributes = CASES[case]
    app = App(db, spool_dir)
    app.log(message, **extra)  # returns normally
    assert app.close()
    ((*fields, problems),) = columns(db)
    assert tuple(fields) == INTACT
    for note in notes:
        assert note in problems, (note, problems)
    (doc,) = stored(db)
    for key, value in (attributes or {}).items():
        assert doc["attributes"][key] == value
    assert not any("internal error" in p for p in problems)
    report = verify(db)
    assert report.ok, report.findings
    # The exported OTLP copy carries the seal and what was stored, nothing OTLP cannot encode.
    (exported,) = app.exporter.get_finished_logs()
    assert exported.log_record.attributes["audit.integrity.value"] == rows(db, "SELECT hash FROM audit_logs")[0][0]


def test_format_arguments_that_do_not_match_the_message(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    app.logger.info("record %s viewed by %s", "patient-456", extra=dict(VALID))  # TypeError in plain logging
    app.logger.info("record %(id)s viewed", {"other": 1}, extra=dict(VALID))  # KeyError
    assert app.close()
    docs = stored(db)
    assert [d["message"] for d in docs] == [
        "record %s viewed by %s (arguments: patient-456)",
        "record %(id)s viewed (arguments: {'other': 1})",
    ]
    assert [d["problems"][0].split(" (")[0] for d in docs] == [
        "message: formatting the message with its arguments failed"
    ] * 2
    assert "TypeError: not enough arguments for format string" in docs[0]["problems"][0]
    assert "KeyError" in docs[1]["problems"][0]
    assert all((d["actor_id"], d["action"], d["resource_id"]) == ("user-123", "read", "patient-456") for d in docs)
    assert verify(db).ok


def test_an_exception_whose_argument_str_raises(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    try:
        raise RuntimeError(RaisingStr())
    except RuntimeError:
        app.logger.exception("export failed", extra={**VALID, "audit.result": "failure"})
    assert app.close()
    (doc,) = stored(db)
    assert (doc["actor_id"], doc["action"], doc["result"]) == ("user-123", "read", "failure")
    assert doc["attributes"]["exception.type"] == "RuntimeError"
    assert doc["attributes"]["exception.message"] == "<unprintable tests.test_input_pipeline.RaisingStr>"
    assert "RuntimeError: <unprintable" in doc["attributes"]["exception.stacktrace"]
    assert doc["problems"] == [
        "exception.message: str() of the exception's first argument raised ValueError: no "
        "text for you; stored its text form"
    ]
    assert verify(db).ok


def test_a_lone_surrogate_is_stored_intact_even_without_the_filter(db: str, spool_dir: Path) -> None:
    """A handler the application did not protect: OpenTelemetry passes the text through and the
    processor replaces and notes it (it used to store the record with NULL actor and action)."""
    app = App(db, spool_dir)
    bare = logging.Logger("bare", level=logging.INFO)
    bare.addHandler(LoggingHandler(logger_provider=app.provider))
    bare.info("viewed \udcff", extra={**VALID, "note": "x\ud800", "audit.old_values": {"k\udc00": "v\udfff"}})
    assert app.close()
    ((*fields, problems),) = columns(db)
    assert tuple(fields) == INTACT
    assert set(problems) == {
        f"message: {SURROGATE_NOTE}",
        f"attributes.note: {SURROGATE_NOTE}",
        f"old_values: key {SURROGATE_NOTE}",
        f"old_values.k\ufffd: {SURROGATE_NOTE}",
    }
    assert verify(db).ok


def test_strict_mode_refuses_a_record_that_needed_conversion(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir, strict=True)
    with pytest.raises(AuditRecordInvalid, match="tags: set stored as a list"):
        app.log(tags={1, 2})
    app.log()
    assert app.close()
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(1,)]


def test_fail_closed_waits_for_a_converted_record(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    with app.audit.fail_closed(timeout=10) as sealed:
        app.log(payload=nested(3000), obj=RaisingStr())
    assert len(sealed) == 1
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(1,)]
    assert app.close()


@pytest.mark.parametrize("address", ["::ffff:10.1.2.3", "::FFFF:10.1.2.3", "::ffff:a01:203"])
def test_ipv4_mapped_client_addresses_are_stored_as_ipv4(
    db: str, spool_dir: Path, address: str, verify_mode: str
) -> None:
    app = App(db, spool_dir)
    app.log(**{"client.address": address})
    assert app.close()
    assert rows(db, "SELECT ip_address::text, host(ip_address), family(ip_address), problems FROM audit_logs") == [
        ("10.1.2.3/32", "10.1.2.3", 4, [])
    ]
    (doc,) = stored(db)
    assert doc["ip_address"] == "10.1.2.3"
    assert verify(db).ok


# ---------------------------------------------------------------------------- property test
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=8)
    | st.text(st.characters(codec=None), max_size=12)  # includes lone surrogates
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
    | st.datetimes()
    | st.uuids()
    | st.decimals(allow_nan=False)
    | st.builds(RaisingStr)
    | st.builds(Opaque)
    | st.sampled_from([float("nan"), 2**80, "\x00"])
)
_KEYS = (
    st.text(st.characters(codec=None), max_size=6)
    | st.integers(-3, 3)
    | st.none()
    | st.booleans()
    | st.tuples(st.integers(0, 2))
    | st.builds(RaisingStr)
    | st.builds(Opaque)
    | st.just("")
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.sets(st.integers(0, 9) | st.text(max_size=3), max_size=3)
        | st.dictionaries(_KEYS, children, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def hostile_extra(draw: st.DrawFn) -> dict:
    extra: dict[Any, Any] = dict(VALID)
    for key, value in draw(st.dictionaries(_KEYS, _VALUES, max_size=4)).items():
        if isinstance(key, str) and key in extra:
            continue  # the audit fields stay valid so that the test can check they are intact
        extra[key] = value
    if draw(st.booleans()):
        extra["audit.old_values"] = draw(st.dictionaries(_KEYS, _VALUES, max_size=4))
    depth = draw(st.sampled_from([0, 0, 0, MAX_DEPTH, MAX_DEPTH + 1, 1500]))
    if depth:
        extra["deep"] = nested(depth)
    if draw(st.booleans()):
        loop: list[Any] = [1]
        loop.append(loop)
        extra["loop"] = loop
    return extra


def test_arbitrary_extra_never_raises_and_always_yields_one_verifiable_record(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    calls = 0

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        extra=hostile_extra(),
        args=st.sampled_from([(), ("one",), ("one", "two", "three")]),
        message=st.sampled_from(["plain", "with %s", "bad \udcff %s"]),
    )
    def log_one(extra: dict, args: tuple, message: str) -> None:
        nonlocal calls
        app.logger.info(message, *args, extra=extra)
        calls += 1

    log_one()
    assert app.close()
    assert rows(db, "SELECT count(*), count(DISTINCT seq), max(seq) FROM audit_logs") == [(calls, calls, calls)]
    assert rows(
        db,
        "SELECT count(*) FROM audit_logs WHERE actor_id = 'user-123' AND action = 'read' AND "
        "resource_type = 'patient_record' AND resource_id = 'patient-456' AND result = 'success'",
    ) == [(calls,)]
    assert not rows(db, "SELECT problems FROM audit_logs WHERE array_to_string(problems, ' ') LIKE '%internal error%'")
    report = verify(db)
    assert report.ok, report.findings


# ---------------------------------------------------------------------------- configure() and zero-code
HOSTILE_CALLS = """
    import logging
    class RaisingStr:
        def __str__(self): raise ValueError("no")
        def __repr__(self): raise ValueError("no")
    deep = "leaf"
    for _ in range(3000):
        deep = {"a": deep}
    extra = {"audit.action": "refund", "audit.actor.id": "clerk-7", "audit.resource.type": "order",
             "audit.resource.id": "o-1", "audit.result": "success"}
    log = logging.getLogger("shop")
    log.warning("refund %s of %s", "o-1", extra={**extra, "deep": deep})
    log.warning("refund", extra={**extra, "obj": RaisingStr(), "tags": {2, 1}, "audit.old_values": {0: "x"}})
    log.warning("refund \\udcff", extra={**extra, "note": "\\ud800"})
    print("returned")
"""


def _check_hostile_calls(db: str, stdout: str) -> None:
    assert stdout.strip().endswith("returned")
    docs = stored(db)
    assert len(docs) == 3
    assert all(
        (d["actor_id"], d["action"], d["resource_id"], d["result"]) == ("clerk-7", "refund", "o-1", "success")
        for d in docs
    )
    first, second, third = (" | ".join(d["problems"]) for d in docs)
    assert "message: formatting the message with its arguments failed" in first
    assert f"deep{'.a' * MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels" in first
    assert "obj: value of type __main__.RaisingStr stored as its text form" in second
    assert "tags: set stored as a list (sorted)" in second
    assert "audit.old_values: key of type int stored as text '0'" in second
    assert f"message: {SURROGATE_NOTE}" in third and f"note: {SURROGATE_NOTE}" in third
    assert verify(db).ok


def test_the_handler_configure_installs_is_protected(db: str, tmp_path: Path) -> None:
    code = "import otel_audit\naudit = otel_audit.configure()\n" + textwrap.dedent(HOSTILE_CALLS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_AUDIT_DSN": db, "OTEL_AUDIT_SPOOL_DIR": str(tmp_path / "s")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_hostile_calls(db, result.stdout)


def test_a_handler_on_the_root_logger_before_configure_is_protected(db: str, tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import logging, otel_audit
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        provider = LoggerProvider()
        _logs.set_logger_provider(provider)
        logging.getLogger().addHandler(LoggingHandler(logger_provider=provider))
        audit = otel_audit.configure()
        assert audit.handler is None
    """) + textwrap.dedent(HOSTILE_CALLS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_AUDIT_DSN": db, "OTEL_AUDIT_SPOOL_DIR": str(tmp_path / "s")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_hostile_calls(db, result.stdout)


def test_opentelemetry_instrument_path_is_protected(db: str, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(HOSTILE_CALLS))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_DSN": db,
        "OTEL_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    result = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(app)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    _check_hostile_calls(db, result.stdout)


def test_protect_is_idempotent_and_shutdown_removes_the_filter(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir)
    assert app.audit.protect(app.handler) is app.handler
    assert len(app.handler.filters) == 1
    assert app.close()
    assert app.handler.filters == []
