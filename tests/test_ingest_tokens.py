"""Ingest tokens have identities and are bound to the services they may deliver for.

A token holder must not be able to create a chain claiming to be another
service: pre-sealed chains a token may not deliver are refused (OTLP partial
success and a WARNING naming the token and the service), records the ingest
seals itself are stored flagged, never dropped. The registry records which
token delivered each relayed chain, the ingest attests it in its own chain,
and the verifier holds the column to the attestation. Tamper tests act as a
database superuser would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

import otel_audit
from otel_audit.cli.main import main
from otel_audit.core import attributes as A
from otel_audit.core.chain import genesis_hash
from otel_audit.errors import AuditConfigurationError
from otel_audit.ingest import TokenSet
from otel_audit.ingest.auth import TOKENS_ENV, TokenIdentity, default_name
from otel_audit.verify import VerificationReport
from tests.harness import VALID, rows, verify
from tests.ingest_harness import AUDIT, Ingest, record, request
from tests.pgproxy import PgProxy
from tests.serve_harness import verify_cli

PAYROLL_TOKEN = "payroll-token-0123456789abcdef"
WIDE_TOKEN = "wide-open-token-0123456789abcdef"
TOKEN_FILE = f"""\
# collectors, with the services each may deliver for
{PAYROLL_TOKEN}  name=collector-eu services=payroll,payroll-*   # the EU collector
{WIDE_TOKEN}
"""


# ---------------------------------------------------------------------- the token file format
def test_token_file_entries_bare_named_and_bound(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    path.chmod(0o600)
    tokens = TokenSet.load(path)
    eu = tokens.identify(f"Bearer {PAYROLL_TOKEN}")
    assert eu == TokenIdentity("collector-eu", ("payroll", "payroll-*"))
    bare = tokens.identify(f"bearer  {WIDE_TOKEN} ")
    assert bare == TokenIdentity(default_name(WIDE_TOKEN), None) and bare.name.startswith("token-")
    assert tokens.identify("Bearer payroll-token-0123456789abcdeX") is None
    assert [i.name for i in tokens.identities] == ["collector-eu", bare.name]


def test_binding_is_exact_or_glob_and_case_sensitive() -> None:
    eu = TokenIdentity("collector-eu", ("payroll", "billing-*"))
    assert eu.may_deliver("payroll") and eu.may_deliver("billing-eu") and eu.may_deliver("billing-")
    assert not eu.may_deliver("Payroll") and not eu.may_deliver("payroll2") and not eu.may_deliver("billing")
    assert not eu.may_deliver(None) and not eu.may_deliver(7)
    assert TokenIdentity("any", ("*",)).may_deliver(None)
    assert TokenIdentity("unbound").may_deliver(None) and TokenIdentity("unbound").may_deliver("anything")


def test_environment_entries_separated_by_semicolons_and_the_old_comma_list() -> None:
    tokens = TokenSet.load(None, f"{PAYROLL_TOKEN} name=collector-eu services=payroll; {WIDE_TOKEN} name=ops")
    assert tokens.identify(f"Bearer {PAYROLL_TOKEN}") == TokenIdentity("collector-eu", ("payroll",))
    assert tokens.identify(f"Bearer {WIDE_TOKEN}") == TokenIdentity("ops", None)
    old = TokenSet.load(None, "first-token-aaaaaaaaaaaa, second-token-bbbbbbbbbbbb,")
    assert len(old) == 2 and all(
        old.identify(f"Bearer {t}").services is None for t in ("first-token-aaaaaaaaaaaa", "second-token-bbbbbbbbbbbb")
    )


def test_a_rotation_shares_a_name_and_a_token_listed_twice_alike_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "old-rotated-token-aaaaaaaa name=collector-eu services=payroll\n"
        "new-rotated-token-bbbbbbbb name=collector-eu services=payroll\n"
    )
    path.chmod(0o600)
    tokens = TokenSet.load(path, "new-rotated-token-bbbbbbbb name=collector-eu services=payroll")
    assert len(tokens) == 2 and [i.name for i in tokens.identities] == ["collector-eu"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "payroll-token-0123456789abcdef service=payroll",
            "line 1: unknown setting service= (known: name=, services=)",
        ),
        ("payroll-token-0123456789abcdef name=a name=b", "line 1: name= is given twice"),
        ("payroll-token-0123456789abcdef name=-eu", "name='-eu' is not a token name"),
        ("payroll-token-0123456789abcdef name=has/slash", "is not a token name"),
        ("payroll-token-0123456789abcdef name=unauthenticated", "reserved"),
        ("payroll-token-0123456789abcdef services=", "services= needs a comma-separated list"),
        ("payroll-token-0123456789abcdef services=a,,b", "without empty items"),
        ("short name=x", "line 1: the token has 5 characters; use at least 16"),
        ('"quoted-token-from-a-yaml-file" name=x', "characters a bearer token cannot carry"),
        (
            "# fine\npayroll-token-0123456789abcdef name=a\npayroll-token-0123456789abcdef name=b",
            "line 3: the same token is configured at token file",
        ),
        (
            "aaaa-token-0123456789abcdef name=eu services=a\nbbbb-token-0123456789abcdef name=eu services=b",
            "line 2: the name 'eu' is used at token file",
        ),
    ],
)
def test_a_bad_token_file_is_refused_with_the_line_and_never_the_token(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(text + "\n")
    path.chmod(0o600)
    with pytest.raises(AuditConfigurationError) as caught:
        TokenSet.load(path)
    message = str(caught.value)
    assert fragment in message and str(path) in message, message
    assert "0123456789abcdef" not in message and "quoted-token" not in message


def test_settings_in_the_old_comma_list_say_to_separate_entries_with_semicolons() -> None:
    with pytest.raises(AuditConfigurationError, match="separate entries in OTEL_AUDIT_INGEST_TOKENS with ';'"):
        TokenSet.load(None, f"{PAYROLL_TOKEN},{WIDE_TOKEN} name=x")


@pytest.mark.storage
def test_serve_reports_a_bad_token_file_at_start(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    path = tmp_path / "tokens"
    path.write_text(f"{PAYROLL_TOKEN} name=collector-eu\n{WIDE_TOKEN} servces=payroll\n")
    path.chmod(0o600)
    assert main(["serve", "--dsn", db, "--port", "0", "--token-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"token file {path} line 2: unknown setting servces=" in err, err
    assert WIDE_TOKEN not in err


# ---------------------------------------------------------------------- against PostgreSQL
def presealed(dsn: str, spool: Path, service: str, n: int) -> tuple[Any, Any, str]:
    """``n`` records sealed by an otel-audit application of ``service``, as its OTLP exporter sends them."""
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handle = otel_audit.configure(dsn, logger_provider=provider, install_handler=False, spool_dir=spool, metrics=False)
    log = logging.Logger(f"{service}.web", level=logging.DEBUG)
    log.addHandler(LoggingHandler(logger_provider=provider))
    for i in range(n):
        log.info("step %d", i, extra={**VALID, "test.id": f"{service}-{i}"})
    exported = exporter.get_finished_logs()
    return encode_logs(exported), handle, exported[0].log_record.attributes[A.CHAIN_ID]


@pytest.fixture
def cut_app_sink(db: str) -> Iterator[PgProxy]:
    """The application's own sink cannot reach PostgreSQL: only the ingest registers its chain."""
    proxy = PgProxy(db)
    proxy.cut()
    yield proxy
    proxy.close()


def test_a_chain_for_a_service_the_token_may_not_deliver_is_refused_and_logged(
    db: str, tmp_path: Path, cut_app_sink: PgProxy, caplog: pytest.LogCaptureFixture
) -> None:
    otlp, handle, chain_id = presealed(cut_app_sink.dsn, tmp_path / "app", "billing", 5)
    ingest = bound_ingest(db, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_audit.ingest"):
            reply = ingest.export(otlp, token=PAYROLL_TOKEN)
        assert reply.status == 200
        partial = reply.export_response().partial_success
        assert partial.rejected_log_records == 5
        assert "ingest token 'collector-eu' may not deliver records of service 'billing'" in partial.error_message
        stats = ingest.service.snapshot()
        assert (stats["ingest"]["rejected"], stats["ingest"]["refused_service"], stats["ingest"]["relayed"]) == (
            5,
            5,
            0,
        )
        assert stats["tokens"]["collector-eu"]["refused_service"] == 5
        assert PAYROLL_TOKEN not in orjson.dumps(stats).decode()
    finally:
        assert ingest.close()
        handle.shutdown(timeout=1)
    (line,) = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "may not deliver" in r.getMessage()
    ]
    assert "'collector-eu'" in line and "'billing'" in line and chain_id in line and PAYROLL_TOKEN not in line
    assert rows(db, "SELECT count(*) FROM audit_chains WHERE chain_id = %s", (chain_id,)) == [(0,)]
    assert rows(db, "SELECT count(*) FROM audit_logs WHERE chain_id = %s", (chain_id,)) == [(0,)]
    # The refusal is sealed in the ingest's own chain, naming the token.
    (attrs,) = [
        a
        for (a,) in rows(
            db, "SELECT attributes FROM audit_logs WHERE action = 'otel_audit.ingest.sealed_record_rejected'"
        )
    ]
    assert attrs[A.ATTESTED_TOKEN] == "collector-eu"
    assert verify(db).ok


def bound_ingest(db: str, tmp_path: Path) -> Ingest:
    path = tmp_path / "tokens"
    path.write_text(TOKEN_FILE)
    path.chmod(0o600)
    return Ingest(db, tmp_path / "ingest-spool", tokens=TokenSet.load(path))


def accepted_payroll_chain(db: str, tmp_path: Path, proxy: PgProxy) -> tuple[str, str]:
    """A payroll chain relayed with the payroll-bound token; returns (its chain id, the ingest's chain id)."""
    otlp, handle, chain_id = presealed(proxy.dsn, tmp_path / "app", "payroll", 6)
    ingest = bound_ingest(db, tmp_path)
    try:
        reply = ingest.export(otlp, token=PAYROLL_TOKEN)
        assert reply.status == 200 and not reply.export_response().HasField("partial_success")
        assert ingest.export(otlp, token=PAYROLL_TOKEN).status == 200  # a redelivery attests nothing twice
        assert ingest.service.stats.attested == 1
    finally:
        assert ingest.close()
        handle.shutdown(timeout=1)
    return chain_id, ingest.chain_id


def test_a_chain_for_an_allowed_service_is_registered_with_the_token_and_attested(
    db: str, tmp_path: Path, cut_app_sink: PgProxy, verify_mode: str
) -> None:
    chain_id, ingest_chain = accepted_payroll_chain(db, tmp_path, cut_app_sink)
    ((delivered_by, genesis),) = rows(
        db, "SELECT delivered_by, genesis FROM audit_chains WHERE chain_id = %s", (chain_id,)
    )
    assert delivered_by == "collector-eu"
    ((doc,),) = rows(
        db, "SELECT canonical FROM audit_logs WHERE chain_id = %s AND action = %s", (ingest_chain, A.CHAIN_ACCEPTED)
    )
    attestation = orjson.loads(bytes(doc))
    assert (attestation["resource_type"], attestation["resource_id"]) == ("audit_chain", chain_id)
    assert attestation["actor_id"] == "collector-eu" and attestation["problems"] == []
    assert attestation["attributes"][A.ATTESTED_TOKEN] == "collector-eu"
    assert attestation["attributes"][A.ATTESTED_GENESIS_HASH] == genesis_hash(bytes(genesis))
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.chains[chain_id].extra["delivered_by"] == "collector-eu"
    assert report.chains[chain_id].extra["delivered_by_attested"] == ["collector-eu"]


def _tamper(dsn: str, statement: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # superuser only: triggers off
        conn.execute(statement, params)


def _unattested(report: VerificationReport) -> list[tuple[str | None, str]]:
    return [(f.chain_id, f.severity.value) for f in report.findings if f.kind.value == "delivery_unattested"]


def test_a_forged_delivered_by_is_detected(db: str, tmp_path: Path, cut_app_sink: PgProxy, verify_mode: str) -> None:
    chain_id, _ = accepted_payroll_chain(db, tmp_path, cut_app_sink)
    _tamper(db, "UPDATE audit_chains SET delivered_by = 'collector-us' WHERE chain_id = %s", (chain_id,))
    report = verify(db)
    assert not report.ok and _unattested(report) == [(chain_id, "error")], [str(f) for f in report.findings]
    result = verify_cli(db)
    assert result.returncode == 1 and "delivery_unattested" in result.stdout, result.stdout


def test_delivered_by_set_on_a_chain_its_own_emitter_registered_is_detected(
    db: str, tmp_path: Path, verify_mode: str
) -> None:
    _, handle, chain_id = presealed(db, tmp_path / "app", "payroll", 3)  # never through the ingest
    assert handle.shutdown(timeout=30)
    assert verify(db).ok
    _tamper(db, "UPDATE audit_chains SET delivered_by = 'collector-eu' WHERE chain_id = %s", (chain_id,))
    assert _unattested(verify(db)) == [(chain_id, "error")]


def test_a_sender_cannot_forge_an_attestation(db: str, tmp_path: Path, verify_mode: str) -> None:
    """A token holder sends a record that looks like the ingest's attestation: it is sealed flagged, and
    a registry column pointing at it is still unattested."""
    _, handle, chain_id = presealed(db, tmp_path / "app", "payroll", 3)
    assert handle.shutdown(timeout=30)
    with psycopg.connect(db) as conn:
        (genesis,) = conn.execute("SELECT genesis FROM audit_chains WHERE chain_id = %s", (chain_id,)).fetchone()
    forged = {
        A.AUDIT_ACTION: A.CHAIN_ACCEPTED,
        A.AUDIT_ACTOR_ID: "collector-us",
        A.AUDIT_ACTOR_TYPE: "service",
        A.AUDIT_RESOURCE_TYPE: "audit_chain",
        A.AUDIT_RESOURCE_ID: chain_id,
        A.AUDIT_RESULT: "success",
        A.ATTESTED_TOKEN: "collector-us",
        A.ATTESTED_GENESIS_HASH: genesis_hash(bytes(genesis)),
    }
    ingest = bound_ingest(db, tmp_path)
    try:
        assert ingest.export(request([record(forged)], service="payroll"), token=PAYROLL_TOKEN).status == 200
        assert ingest.service.stats.flagged_reserved == 1
    finally:
        assert ingest.close()
    ((problems,),) = rows(db, "SELECT problems FROM audit_logs WHERE chain_id = %s", (ingest.chain_id,))
    assert problems and "reserved for records otel-audit writes about itself" in problems[0]
    _tamper(db, "UPDATE audit_chains SET delivered_by = 'collector-us' WHERE chain_id = %s", (chain_id,))
    assert _unattested(verify(db)) == [(chain_id, "error")]


def test_records_the_ingest_seals_for_a_service_the_token_may_not_claim_are_flagged_not_dropped(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = bound_ingest(db, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_audit.ingest"):
            for service in ("payroll", "payroll-eu", "billing"):
                reply = ingest.export(
                    request([record({**AUDIT, "test.id": service})], service=service), token=PAYROLL_TOKEN
                )
                assert reply.status == 200 and not reply.export_response().HasField("partial_success")
        stats = ingest.service.snapshot()
    finally:
        assert ingest.close()
    stored = dict(rows(db, "SELECT service_name, problems FROM audit_logs"))
    assert stored["payroll"] == [] and stored["payroll-eu"] == []
    assert stored["billing"] == [
        (
            "the ingest token 'collector-eu' may not deliver records of service 'billing' (it may deliver for: payroll, "
            "payroll-*); sealed by the ingest as sent"
        )
    ]
    assert stats["ingest"]["flagged_service"] == stats["tokens"]["collector-eu"]["flagged_service"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "may not deliver" in r.getMessage()]
    assert "'collector-eu'" in line and "'billing'" in line
    report = verify(db)
    assert report.ok and [f.kind.value for f in report.findings] == ["invalid_records"]


def test_an_unbound_token_works_as_before(db: str, tmp_path: Path, cut_app_sink: PgProxy) -> None:
    otlp, handle, chain_id = presealed(cut_app_sink.dsn, tmp_path / "app", "billing", 4)
    ingest = bound_ingest(db, tmp_path)
    try:
        reply = ingest.export(otlp, token=WIDE_TOKEN)
        assert reply.status == 200 and not reply.export_response().HasField("partial_success")
        assert ingest.export(request([record(AUDIT)], service="anything"), token=WIDE_TOKEN).status == 200
        unauthorized = ingest.export(request([record(AUDIT)]), token="not-a-token-0123456789abcdef")
        assert unauthorized.status == 401
        assert "invalid bearer token" in status_pb2.Status.FromString(unauthorized.body).message
    finally:
        assert ingest.close()
        handle.shutdown(timeout=1)
    assert rows(db, "SELECT delivered_by FROM audit_chains WHERE chain_id = %s", (chain_id,)) == [
        (default_name(WIDE_TOKEN),)
    ]
    assert rows(db, "SELECT problems FROM audit_logs WHERE service_name = 'anything'") == [([],)]
    report = verify(db)
    assert report.ok and not report.errors, [str(f) for f in report.findings]


def test_without_authentication_the_delivery_is_recorded_as_unauthenticated(
    db: str, tmp_path: Path, cut_app_sink: PgProxy
) -> None:
    otlp, handle, chain_id = presealed(cut_app_sink.dsn, tmp_path / "app", "billing", 2)
    ingest = Ingest(db, tmp_path / "ingest-spool", tokens=None)
    try:
        assert ingest.export(otlp, token=None).status == 200
    finally:
        assert ingest.close()
        handle.shutdown(timeout=1)
    assert rows(db, "SELECT delivered_by FROM audit_chains WHERE chain_id = %s", (chain_id,)) == [("unauthenticated",)]
    assert verify(db).ok


def test_the_request_log_and_stats_name_the_token_never_show_it(
    db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = bound_ingest(db, tmp_path)
    try:
        with caplog.at_level(logging.DEBUG, logger="otel_audit.ingest"):
            assert ingest.export(request([record(AUDIT)], service="payroll"), token=PAYROLL_TOKEN).status == 200
            assert ingest.export(request([record(AUDIT)]), token=f"{PAYROLL_TOKEN}x").status == 401
            stats = ingest.post(b"", method="GET", path="/stats", token=PAYROLL_TOKEN, content_type=None)
    finally:
        assert ingest.close()
    requests_logged = [r.getMessage() for r in caplog.records if "POST /v1/logs" in r.getMessage()]
    assert len(requests_logged) == 2, requests_logged
    assert "token collector-eu " in requests_logged[0] and "-> 200" in requests_logged[0]
    assert "token - " in requests_logged[1] and "-> 401" in requests_logged[1]
    assert stats.status == 200 and orjson.loads(stats.body)["tokens"]["collector-eu"]["sealed"] == 1
    everything = "\n".join(r.getMessage() for r in caplog.records) + stats.body.decode()
    assert PAYROLL_TOKEN not in everything


def test_an_attestation_gone_with_the_oldest_records_of_the_ingest_chain_is_a_warning_not_an_error(
    db: str, tmp_path: Path, cut_app_sink: PgProxy
) -> None:
    """Retention moves the oldest records to the archive; the attestation may be among them."""
    otlp, handle, chain_id = presealed(cut_app_sink.dsn, tmp_path / "app", "payroll", 2)
    ingest = bound_ingest(db, tmp_path)
    try:
        assert ingest.export(otlp, token=PAYROLL_TOKEN).status == 200  # attestation: the ingest chain's seq 1
        assert ingest.export(request([record(AUDIT)], service="payroll"), token=PAYROLL_TOKEN).status == 200
    finally:
        assert ingest.close()
        handle.shutdown(timeout=1)
    _tamper(db, "DELETE FROM audit_logs WHERE chain_id = %s AND seq = 1", (ingest.chain_id,))
    report = verify(db)
    assert _unattested(report) == [(chain_id, "warning")]
    (finding,) = [f for f in report.findings if f.kind.value == "delivery_unattested"]
    assert "look for the attestation in the archive" in finding.detail and ingest.chain_id in finding.detail
    # The removed records themselves are still reported by the walk.
    assert ("missing", ingest.chain_id) in [(f.kind.value, f.chain_id) for f in report.errors]
