"""Secret redaction before sealing (issue 12, part 1).

Unit tests for each rule wherever a secret can sit (top-level attribute, nested
``old_values``, lists, the message), a property test with generated data for
false positives on ordinary identifiers and for secrets embedded in arbitrary
text, and end-to-end tests that look for the secret's bytes in the spool, in
PostgreSQL, in the OTLP export and in otel-audit's own log output.
"""

from __future__ import annotations

import logging
import string
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

from otel_audit.errors import AuditConfigurationError
from otel_audit.privacy import REDACTED, REDACTIONS, Redactor, privacy_policy
from otel_audit.privacy.redact import luhn_valid, mask_pan
from tests.harness import VALID, App, verify
from tests.ingest_harness import AUDIT, Ingest, record, request

PASSWORD = "hunter2-Sup3r-S3cret"
BEARER = "Bearer mF_9.B5f-4.1JqM8xZ3kP0q"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
PAN = "4111111111111111"
PAN_SPACED = "5555 5555 5555 4444"
API_KEY = "ak_live_51HxYz0123456789"

# The secret parts that must appear nowhere (the PAN's middle digits: first 6 / last 4 may stay).
SECRETS = [
    PASSWORD,
    "mF_9.B5f-4.1JqM8xZ3kP0q",
    JWT.split(".")[1],
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    PAN,
    "5555 5555 5555 4444",
    "5555555555554444",
    API_KEY,
]


def redact(attrs: dict, body: object = None) -> tuple[dict, object, list[str]]:
    changes, new_body = Redactor().redact_attributes(attrs, body)
    merged = {**attrs, **(changes or {})}
    return merged, new_body, list(merged.get(REDACTIONS, ()))


# ---------------------------------------------------------------- each rule, each place
@pytest.mark.parametrize(
    ("value", "rule", "replacement"),
    [
        (f"Authorization: {BEARER}", "bearer", "Authorization: [REDACTED:bearer]"),
        ("basic dXNlcjpwYXNzd29yZA==", "bearer", "[REDACTED:bearer]"),
        (f"token was {JWT} here", "jwt", "token was [REDACTED:jwt] here"),
        (f"key:\n{PEM}\nend", "private_key", "key:\n[REDACTED:private_key]\nend"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEcut off", "private_key", "[REDACTED:private_key]"),
        (f"card {PAN} charged", "pan", "card 411111******1111 charged"),
        (f"card {PAN_SPACED}.", "pan", "card 555555******4444."),
        ("amex 3782-822463-10005", "pan", "amex 378282*****0005"),
    ],
)
@pytest.mark.parametrize("place", ["attribute", "old_values", "list", "message"])
def test_each_value_rule_is_applied_wherever_the_text_is(value: str, rule: str, replacement: str, place: str) -> None:
    if place == "attribute":
        attrs, body, notes = redact({"note": value})
        assert attrs["note"] == replacement
        assert notes == [f"note: {rule}"]
    elif place == "old_values":
        attrs, body, notes = redact({"audit.old_values": {"profile": {"remark": value}}})
        assert attrs["audit.old_values"] == {"profile": {"remark": replacement}}
        assert notes == [f"audit.old_values.profile.remark: {rule}"]
    elif place == "list":
        attrs, body, notes = redact({"items": ["plain", value]})
        assert attrs["items"] == ["plain", replacement]
        assert notes == [f"items[1]: {rule}"]
    else:
        attrs, body, notes = redact({"x": 1}, body=value)
        assert body == replacement
        assert notes == [f"message: {rule}"]


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "user.password",
        "db_passwd",
        "client_secret",
        "X-Api-Key",
        "api_key",
        "authorization",
        "session_token",
        "refreshToken",
        "aws.access_key",
        "private-key",
        "Cookie",
        "credentials",
    ],
)
def test_name_rules_replace_any_value_top_level_and_nested(name: str) -> None:
    attrs, _, notes = redact({name: PASSWORD, "audit.old_values": {name: {"nested": 1}, "email": "a@example.com"}})
    assert attrs[name] == REDACTED
    assert attrs["audit.old_values"] == {name: REDACTED, "email": "a@example.com"}
    assert notes == [f"{name}: name", f"audit.old_values.{name}: name"]


def test_configured_names_add_to_the_built_in_ones_and_audit_fields_are_exempt() -> None:
    redactor = Redactor(extra_names=["ssn", "date_of_birth"])
    changes, _ = redactor.redact_attributes({"patient.ssn": "078-05-1120", "DateOfBirth": "1970-01-01", **VALID}, None)
    assert changes == {
        "patient.ssn": REDACTED,
        "DateOfBirth": REDACTED,
        REDACTIONS: ("patient.ssn: name", "DateOfBirth: name"),
    }
    # otel-audit's own attributes are never redacted by name, only by value.
    assert Redactor().redact_attributes({"audit.record.token": "x", "otel_audit.secret": "y"}, None) == (None, None)


def test_card_numbers_as_integers_are_masked_and_non_luhn_numbers_are_not() -> None:
    attrs, _, notes = redact({"card": 4111111111111111, "order": 4111111111111112, "small": 12345})
    assert attrs == {"card": "411111******1111", "order": 4111111111111112, "small": 12345, REDACTIONS: ("card: pan",)}
    assert mask_pan("378282246310005") == "378282*****0005"
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_notes_name_field_and_rule_never_the_value() -> None:
    attrs, body, notes = redact({"password": PASSWORD, "h": BEARER}, body=f"{JWT} {PAN}")
    text = repr(notes)
    for secret in SECRETS:
        assert secret not in text
    assert notes == ["password: name", "h: bearer", "message: jwt", "message: pan"]


def test_nothing_to_redact_costs_no_copy() -> None:
    attrs = dict(VALID)
    changes, body = Redactor().redact_attributes(attrs, "patient record viewed")
    assert changes is None and body == "patient record viewed"


def test_policy_switches_and_bad_values() -> None:
    assert privacy_policy(env={}).redactor is not None  # on by default
    assert privacy_policy(env={"OTEL_AUDIT_REDACT": "off"}).redactor is None
    named = privacy_policy(env={"OTEL_AUDIT_REDACT_NAMES": "ssn, iban"}).redactor
    assert named is not None and "ssn" in named.names
    valued = privacy_policy(env={"OTEL_AUDIT_REDACT_VALUES": "jwt"}).redactor
    assert valued is not None and valued.values == ("jwt",)
    with pytest.raises(AuditConfigurationError, match="OTEL_AUDIT_REDACT"):
        privacy_policy(env={"OTEL_AUDIT_REDACT": "maybe"})
    with pytest.raises(AuditConfigurationError, match="unknown redaction value rule"):
        privacy_policy(env={"OTEL_AUDIT_REDACT_VALUES": "ssn"})


# ---------------------------------------------------------------- generated data
def _fails_luhn(digits: str) -> str:
    return digits if not luhn_valid(digits) else digits[:-1] + str((int(digits[-1]) + 1) % 10)


ordinary = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),  # a 32-hex trace id
    st.binary(min_size=8, max_size=8).map(bytes.hex),  # a span id
    st.text(string.digits, min_size=13, max_size=19).map(lambda d: "4" + d[1:]).map(_fails_luhn),  # order numbers
    st.integers(min_value=10**12, max_value=10**18).filter(lambda n: not luhn_valid(str(n))),
    st.integers(min_value=1_600_000_000_000, max_value=1_999_999_999_999),  # epoch milliseconds
    st.emails(),
    st.from_regex(r"\A(ORD|INV|usr)-[0-9]{4,12}\Z"),
    st.text(alphabet=string.ascii_letters + " .,:;-_/", max_size=40),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.from_regex(r"\A[a-z]{1,8}(\.[a-z]{1,8}){0,2}\Z").filter(lambda k: not Redactor().sensitive_name(k)),
        ordinary,
        max_size=6,
    ),
    ordinary.map(str),
)
def test_property_no_false_positive_on_ordinary_ids(attrs: dict, message: str) -> None:
    changes, body = Redactor().redact_attributes(attrs, message)
    assert changes is None
    assert body == message


secret = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9\-._~+/]{8,40}\Z").map(lambda t: ("bearer", f"Bearer {t}", t)),
    st.tuples(
        st.from_regex(r"\A[A-Za-z0-9_-]{4,30}\Z"),
        st.from_regex(r"\A[A-Za-z0-9_-]{2,30}\Z"),
        st.from_regex(r"\A[A-Za-z0-9_-]{10,40}\Z"),
    ).map(lambda p: ("jwt", f"eyJ{p[0]}.{p[1]}.{p[2]}", f"eyJ{p[0]}.{p[1]}.{p[2]}")),
    st.from_regex(r"\A[A-Za-z0-9+/=\n]{10,80}\Z").map(
        lambda b: ("private_key", f"-----BEGIN EC PRIVATE KEY-----\n{b}\n-----END EC PRIVATE KEY-----", b)
    ),
    st.tuples(st.sampled_from("23456"), st.text(string.digits, min_size=11, max_size=17))
    .map(lambda p: _luhn_complete(p[0] + p[1]))
    .map(lambda d: ("pan", d, d)),
)


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        if luhn_valid(prefix + check):
            return prefix + check
    raise AssertionError


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret,
    st.text(alphabet=string.ascii_letters + " ,;()", max_size=20),
    st.text(alphabet=string.ascii_letters + " ,;()", max_size=20),
    st.sampled_from(["attr", "nested", "message"]),
)
def test_property_a_secret_embedded_anywhere_is_gone(
    item: tuple[str, str, str], before: str, after: str, where: str
) -> None:
    rule, text, core = item
    value = f"{before} {text} {after}"
    attrs = {"note": value} if where == "attr" else {"audit.old_values": {"a": [value]}} if where == "nested" else {}
    merged, body, notes = redact(attrs, value if where == "message" else "ok")
    stored = repr((merged, body))
    assert core not in stored.replace("\\n", "\n")
    if rule == "pan":
        assert mask_pan(core) in stored
    assert any(n.endswith(f": {rule}") for n in notes)


# ---------------------------------------------------------------- end to end
def _secret_extra() -> dict:
    return {
        "password": PASSWORD,
        "upstream.header": BEARER,
        "payment.card": PAN,
        "audit.old_values": {"api_key": API_KEY, "card": PAN_SPACED, "session": JWT, "keys": [PEM]},
    }


def _assert_clean(blob: bytes, where: str) -> None:
    for item in SECRETS:
        assert item.encode() not in blob, f"{item!r} reached {where}"


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="otel_audit")
    yield caplog


@pytest.mark.storage
def test_no_secret_reaches_spool_database_otlp_export_or_own_logs(
    db: str, tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    app = App(db, spool)
    try:
        app.log(f"login with {JWT} and card {PAN}", **_secret_extra())
        app.log("profile updated", **{"audit.old_values": {"password": PASSWORD}, "note": f"header {BEARER}"})
        spooled = b"".join(p.read_bytes() for p in spool.rglob("*") if p.is_file())
        _assert_clean(spooled, "the spool")
        assert b"411111******1111" in spooled
        assert app.audit.flush(30)
        exported = app.exporter.get_finished_logs()
        assert len(exported) == 2
        _assert_clean(encode_logs(exported).SerializeToString(), "the OTLP export")
        first = exported[0].log_record
        assert first.attributes["password"] == REDACTED
        assert first.body == "login with [REDACTED:jwt] and card 411111******1111"
    finally:
        assert app.close()
    with psycopg.connect(db) as conn:
        dump = "\n".join(
            str(row)
            for table in ("audit_logs", "audit_chains")
            for row in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t").fetchall()
        ).encode()
        _assert_clean(dump, "the database")
        notes = conn.execute("SELECT attributes->'otel_audit.redactions' FROM audit_logs ORDER BY seq").fetchall()
    assert notes[0][0] == [
        "password: name",
        "upstream.header: bearer",
        "payment.card: pan",
        "audit.old_values.api_key: name",
        "audit.old_values.card: pan",
        "audit.old_values.session: jwt",
        "audit.old_values.keys[0]: private_key",
        "message: jwt",
        "message: pan",
    ]
    assert notes[1][0] == ["audit.old_values.password: name", "note: bearer"]
    assert verify(db).ok
    _assert_clean("\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog_all.records).encode(), "own logs")


@pytest.mark.storage
def test_redaction_can_be_turned_off_explicitly(db: str, tmp_path: Path) -> None:
    app = App(db, tmp_path / "spool", redact=False)
    try:
        app.log(note=f"card {PAN}")
        assert app.audit.flush(30)
    finally:
        assert app.close()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT attributes->>'note' FROM audit_logs").fetchone() == (f"card {PAN}",)


@pytest.mark.storage
def test_the_ingest_redacts_records_from_other_languages_the_same_way(
    db: str, spool_dir: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    ingest = Ingest(db, spool_dir)
    try:
        reply = ingest.export(
            request([record({**AUDIT, **_secret_extra(), "test.id": str(uuid.uuid4())}, body=f"login with {JWT}")])
        )
        assert reply.status == 200
        spooled = b"".join(p.read_bytes() for p in spool_dir.rglob("*") if p.is_file())
        _assert_clean(spooled, "the ingest's spool")
    finally:
        assert ingest.close()
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT row_to_json(t)::text FROM audit_logs t").fetchone()
        assert row is not None
        _assert_clean(row[0].encode(), "the database (ingest)")
        assert conn.execute("SELECT message FROM audit_logs").fetchone() == ("login with [REDACTED:jwt]",)
    assert verify(db).ok
    _assert_clean("\n".join(r.getMessage() for r in caplog_all.records).encode(), "the ingest's logs")
