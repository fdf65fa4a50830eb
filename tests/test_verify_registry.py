"""Every stored copy of sealed data is checked (issue 9, items 2 and 3), acting as a superuser would
(triggers off) on real PostgreSQL:

* the registry's projections of the sealed genesis (``audit_chains.emitter``, ``created_at``), which
  ``verify --json``, ``status`` and the README's queries show: an edit is ``registry_mismatch``;
* a record moved from ``audit_logs`` into ``audit_quarantine``, where queries on ``audit_logs`` do not
  see it: ``record_hidden``, an error without ``--strict``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_audit.verify.report import Kind, Severity
from tests.harness import App, rows, verify
from tests.test_cli import cli
from tests.test_verify_tamper import tamper

pytestmark = [pytest.mark.storage, pytest.mark.usefixtures("verify_mode")]

N = 12


@pytest.fixture
def trail(db: str, spool_dir: Path) -> str:
    app = App(db, spool_dir)
    for i in range(N):
        app.log(**{"audit.resource.id": f"patient-{i}"})
    assert app.close()
    report = verify(db)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    return db


def errors(dsn: str) -> list[tuple[Kind, int | None]]:
    return [(f.kind, f.seq) for f in verify(dsn).errors]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("emitter", """jsonb_set(emitter, '{service_name}', '"payroll"')"""),
        ("emitter", """emitter - 'host_name'"""),
        ("emitter", """jsonb_set(emitter, '{pid}', ((emitter->>'pid') || '.00000000000000001')::jsonb)"""),
        ("emitter", """jsonb_set(emitter, '{forged}', 'true')"""),
        ("created_at", "created_at - interval '1 day'"),
        ("created_at", "created_at + interval '1 microsecond'"),
    ],
)
def test_an_edited_registry_column_is_a_registry_mismatch(trail: str, column: str, value: str) -> None:
    sealed_emitter = verify(trail).to_dict()["chains"][0]["emitter"]
    tamper(trail, f"UPDATE audit_chains SET {column} = {value}")
    report = verify(trail)
    assert [(f.kind, f.seq) for f in report.errors] == [(Kind.REGISTRY_MISMATCH, 0)], [str(f) for f in report.findings]
    assert f"audit_chains.{column} was changed" in report.errors[0].detail
    # What verify --json shows is the sealed emitter, not the edited column.
    assert report.to_dict()["chains"][0]["emitter"] == sealed_emitter


def test_the_cli_exits_1_on_a_registry_edit_and_shows_the_sealed_emitter(trail: str) -> None:
    tamper(trail, """UPDATE audit_chains SET emitter = jsonb_set(emitter, '{service_name}', '"payroll"')""")
    result = cli("verify", "--dsn", trail, "--json")
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert [f["kind"] for f in out["findings"]] == ["registry_mismatch"]
    assert out["chains"][0]["emitter"]["service_name"] == "billing"


def _hide(dsn: str, where: str) -> None:
    """The issue's attack: copy valid records into audit_quarantine, delete them from audit_logs."""
    tamper(
        dsn,
        "INSERT INTO audit_quarantine (chain_id, seq, hash, canonical, reason) "
        f"SELECT chain_id, seq, hash, canonical, 'moved by hand' FROM audit_logs WHERE {where}",
        f"DELETE FROM audit_logs WHERE {where}",
    )


def test_a_record_hidden_in_quarantine_is_an_error_without_strict(trail: str) -> None:
    _hide(trail, "seq = 5")
    report = verify(trail)
    assert [(f.kind, f.seq) for f in report.errors] == [(Kind.RECORD_HIDDEN, 5)], [str(f) for f in report.findings]
    assert "moved by hand" in report.errors[0].detail
    assert report.exit_code() == 1
    result = cli("verify", "--dsn", trail)
    assert result.returncode == 1 and "record_hidden" in result.stdout


@pytest.mark.parametrize("where", ["seq = 1", f"seq = {N}", "seq BETWEEN 3 AND 6", "true"])
def test_records_hidden_anywhere_in_the_chain_are_each_an_error(trail: str, where: str) -> None:
    hidden = [s for (s,) in rows(trail, f"SELECT seq FROM audit_logs WHERE {where} ORDER BY seq")]
    _hide(trail, where)
    report = verify(trail)
    assert [(f.kind, f.seq) for f in report.errors] == [(Kind.RECORD_HIDDEN, s) for s in hidden], [
        str(f) for f in report.findings
    ]


def test_a_hidden_record_filed_under_another_seq_or_chain_is_still_found(trail: str) -> None:
    _hide(trail, "seq = 5")
    tamper(trail, "UPDATE audit_quarantine SET seq = 500")
    assert errors(trail) == [(Kind.REORDERED, 500), (Kind.RECORD_HIDDEN, 5)]
    tamper(trail, "UPDATE audit_quarantine SET seq = 5, chain_id = gen_random_uuid()")
    found = {k for k, _ in errors(trail)}
    # Under an invented chain: the record is missing from its own chain, the quarantined row belongs to none.
    assert {Kind.MISSING, Kind.UNREGISTERED_CHAIN, Kind.REORDERED} <= found, found


def test_a_quarantined_contender_at_a_stored_position_stays_a_warning(trail: str) -> None:
    """What the sink quarantines on its own (a different record for a taken position) is not hiding."""
    tamper(
        trail,
        "INSERT INTO audit_quarantine (chain_id, seq, hash, canonical, reason) SELECT chain_id, seq, "
        "encode(sha256(convert_to('otel-audit.record.v1', 'UTF8') || '\\x00'::bytea || c), 'hex'), c, 'conflict' "
        "FROM (SELECT chain_id, seq, convert_to(replace(convert_from(canonical, 'UTF8'), 'user-123', 'intruder'), "
        "'UTF8') AS c FROM audit_logs WHERE seq = 4) s",
    )
    report = verify(trail)
    assert report.ok and [(f.kind, f.severity, f.seq) for f in report.findings] == [
        (Kind.INSERTED, Severity.WARNING, 4)
    ], [str(f) for f in report.findings]
