"""An independent verifier written from docs/specification.md alone (tests/stranger_verifier.py) agrees
with ``otel-audit verify``: on a clean, realistic trail (processes with threads and spans, a forked child
that ends with ``os._exit``, an idle period, a restart, a chain sealed by ``otel-audit serve``) both find
nothing in every mode; on tampered trails both fail, on the same records.

The trail is built once per module. Each attack runs as a superuser inside a transaction that is rolled
back afterwards (triggers off with ``session_replication_role = replica``); both verifiers read that
transaction, so the attacks do not disturb each other.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
import pytest

from otel_audit.core.keys import generate_signing_key, load_trusted_keys, write_keypair
from otel_audit.verify import VerifyOptions, verify_database
from otel_audit.verify.report import VerificationReport
from otel_audit.witness import DirectoryWitness
from tests import stranger_verifier as stranger
from tests.ingest_harness import audit_request
from tests.serve_harness import ROOT, ServeProcess, verify_cli
from tests.test_verify_tamper import DROP_POSITION_INDEXES

pytestmark = pytest.mark.storage

TOKEN = "stranger-token-0123456789abcdef"
THREADS, PER_THREAD = 3, 30

APP = (
    textwrap.dedent(
        """
    import logging, os, sys, threading, time
    import psycopg
    import otel_audit
    from opentelemetry.sdk.trace import TracerProvider

    dsn, spool, service, fork, idle = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1"
    audit = otel_audit.configure(dsn=dsn, service_name=service, spool_dir=spool, checkpoint_records=25,
                                 checkpoint_interval=1.0)
    log = logging.getLogger("app")
    tracer = TracerProvider().get_tracer("stranger")
    ADDRESSES = ["10.1.2.3", "2001:db8::1", "::ffff:192.0.2.7"]

    def one(who, i):
        log.info("record %s", i, extra={
            "audit.action": "update", "audit.actor.id": who, "audit.resource.type": "doc",
            "audit.resource.id": f"{who}-{i}", "audit.result": "success" if i % 5 else "failure",
            "audit.changed_fields": ["dose", "unit"],
            "audit.old_values": {"dose": 1.5 + i, "approved": i % 2 == 0, "note": None, "ratio": 0.1},
            "client.address": ADDRESSES[i % 3], "n": i, "flag": True, "tiny": 1.5e-7, "big": 1e21,
        })

    def work(t):
        for i in range(@PER_THREAD@):
            if i % 2:
                with tracer.start_as_current_span("request"):
                    one(f"user-{t}", i)
            else:
                one(f"user-{t}", i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(@THREADS@)]
    [t.start() for t in threads]; [t.join() for t in threads]
    if fork:
        pid = os.fork()
        if pid == 0:  # a pre-fork worker that dies without shutting down
            for i in range(5):
                one("child", i)
            os._exit(0)
        os.waitpid(pid, 0)
    if idle:  # idle until the checkpointer has signed the head without new records
        chain, total = audit.chain_id, @THREADS@ * @PER_THREAD@
        deadline = time.monotonic() + 120
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT max(seq) FROM audit_checkpoints WHERE chain_id = %s", (chain,)).fetchone()
                if row[0] == total:
                    break
                time.sleep(0.1)
            else:
                sys.exit(4)
    sys.exit(0 if audit.shutdown(timeout=120) else 3)
    """
    )
    .replace("@THREADS@", str(THREADS))
    .replace("@PER_THREAD@", str(PER_THREAD))
)


@dataclass
class Trail:
    dsn: str
    keys: list[Path]
    witness: Path


@pytest.fixture(scope="module")
def trail(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trail]:
    schema, dsn = postgres.new_schema()
    base = tmp_path_factory.mktemp("stranger")
    witness = base / "witness"
    app_private, app_public = write_keypair(generate_signing_key(), base / "keys" / "apps")
    ingest_private, ingest_public = write_keypair(generate_signing_key(), base / "keys" / "ingest")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_SIGNING_KEY": str(app_private),
        "OTEL_AUDIT_WITNESS_DIR": str(witness),
    }

    def run_app(spool: str, service: str, fork: bool, idle: bool) -> None:
        result = subprocess.run(
            [sys.executable, "-c", APP, dsn, str(base / spool), service, "1" if fork else "0", "1" if idle else "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr

    run_app("spool-a", "billing", fork=True, idle=True)
    run_app("spool-a", "billing", fork=False, idle=False)  # the restart: replays what the child left
    run_app("spool-b", "pharmacy", fork=False, idle=False)
    serve = ServeProcess(
        dsn,
        base / "ingest-spool",
        "--signing-key",
        str(ingest_private),
        "--witness-dir",
        str(witness),
        "--checkpoint-records",
        "7",
        env={"OTEL_AUDIT_INGEST_TOKENS": TOKEN},
    )
    try:
        for batch in range(2):
            assert serve.export(audit_request(10, tag=f"go-{batch}"), token=TOKEN).status == 200
    finally:
        assert serve.stop() == 0, serve.log
    yield Trail(dsn, [app_public, ingest_public], witness)
    postgres.drop_schema(schema)


MODES = {
    "plain": lambda t: ([], []),
    "trusted-key": lambda t: (t.keys, []),
    "trusted-key+witness": lambda t: (t.keys, [t.witness]),
}


def tool(conn: psycopg.Connection, keys: list[Path], witnesses: list[Path]) -> VerificationReport:
    options = VerifyOptions(
        workers=1,
        trusted_keys=load_trusted_keys(keys) if keys else None,
        witnesses=[DirectoryWitness(w, create=False) for w in witnesses],
    )
    return verify_database(conn, options)


def bad_records(findings: list[tuple[str, str, str | None, int | None]]) -> set[tuple[str | None, int | None]]:
    return {
        (chain, seq) for kind, severity, chain, seq in findings if severity == "error" and kind in stranger.RECORD_KINDS
    }


def both(trail: Trail, mode: str, attack: Callable[[psycopg.Connection], None] | None = None) -> tuple:
    """Run ``attack`` as a superuser in a transaction, verify with both verifiers inside it, roll back."""
    keys, witnesses = MODES[mode](trail)
    with psycopg.connect(trail.dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        if attack is not None:
            attack(conn)
        report = tool(conn, keys, witnesses)
        theirs = stranger.verify(trail.dsn, keys, witnesses, conn=conn)
        conn.rollback()
    mine = [(f.kind.value, f.severity.value, f.chain_id, f.seq) for f in report.findings]
    other = [(f.kind, f.severity, f.chain_id, f.seq) for f in theirs]
    return report, mine, other


@pytest.mark.parametrize("mode", list(MODES))
def test_the_clean_trail_verifies_clean_for_both_in_every_mode(trail: Trail, mode: str) -> None:
    report, mine, other = both(trail, mode)
    theirs = [stranger.Finding(*f) for f in other]
    assert stranger.exit_code(theirs) == report.exit_code(), (mine, other)
    assert bad_records(mine) == bad_records(other) == set(), (mine, other)
    assert report.exit_code() == 0 and not report.errors, [str(f) for f in report.findings]
    assert stranger.exit_code(theirs) == 0, theirs
    with psycopg.connect(trail.dsn) as conn:
        kinds = {r[0] for r in conn.execute("SELECT emitter->>'kind' FROM audit_chains")}
        (chains,) = conn.execute("SELECT count(*) FROM audit_chains").fetchone()
    assert kinds == {"sdk", "ingest"} and chains >= 5  # 3 runs, the forked child, the ingest


@pytest.mark.parametrize("mode", list(MODES))
def test_the_cli_agrees_on_the_clean_trail(trail: Trail, mode: str) -> None:
    keys, witnesses = MODES[mode](trail)
    result = verify_cli(trail.dsn, keys, witnesses)
    theirs = stranger.verify(trail.dsn, keys, witnesses)
    assert result.returncode == stranger.exit_code(theirs), (result.stdout, theirs)
    assert result.returncode == 0, result.stdout + result.stderr


def _chain(conn: psycopg.Connection, service: str = "billing") -> str:
    (chain_id,) = conn.execute(
        "SELECT c.chain_id::text FROM audit_chains c JOIN audit_logs l USING (chain_id) "
        "WHERE c.emitter->>'service_name' = %s GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
        (service,),
    ).fetchone()
    return chain_id


def _update(column: str, value: str, seq: int = 7) -> Callable[[psycopg.Connection], None]:
    def attack(conn: psycopg.Connection) -> None:
        conn.execute(f"UPDATE audit_logs SET {column} = {value} WHERE chain_id = %s AND seq = {seq}", (_chain(conn),))

    return attack


def _sql(*statements: str) -> Callable[[psycopg.Connection], None]:
    def attack(conn: psycopg.Connection) -> None:
        chain = _chain(conn)
        for statement in statements:
            conn.execute(statement.replace("{chain}", chain))

    return attack


def _rewrite_from(seq: int) -> Callable[[psycopg.Connection], None]:
    """Edit record ``seq`` and recompute every later hash and link: a plain chain still verifies."""

    def attack(conn: psycopg.Connection) -> None:
        chain = _chain(conn)
        rows = conn.execute(
            "SELECT seq, canonical, hash FROM audit_logs WHERE chain_id = %s AND seq >= %s ORDER BY seq", (chain, seq)
        ).fetchall()
        previous = None
        for n, canonical, old_hash in rows:
            data = bytes(canonical)
            if n == seq:
                data = data.replace(b'"user-', b'"evil-', 1)
            else:
                data = data.replace(b'"prev_hash":"' + previous[0].encode(), b'"prev_hash":"' + previous[1].encode())
            new_hash = hashlib.sha256(b"otel-audit.record.v1\x00" + data).hexdigest()
            doc = orjson.loads(data)
            conn.execute(
                "UPDATE audit_logs SET canonical = %s, hash = %s, prev_hash = %s, actor_id = %s "
                "WHERE chain_id = %s AND seq = %s",
                (data, new_hash, doc["prev_hash"], doc.get("actor_id"), chain, n),
            )
            previous = (old_hash, new_hash)

    return attack


ATTACKS: dict[str, tuple[str, Callable[[psycopg.Connection], None], str]] = {
    # name: (mode that detects it per docs/threat-model.md, attack, the finding both must name)
    "jsonb true -> 1": ("plain", _update("attributes", "jsonb_set(attributes, '{flag}', '1')"), "modified"),
    "jsonb 1.5 -> 1.50000000000000001": (
        "plain",
        _update(
            "old_values", "jsonb_set(old_values, '{dose}', ((old_values->>'dose') || '000000000000000001')::jsonb)"
        ),
        "modified",
    ),
    "jsonb 0.1 -> exact double": (
        "plain",
        _update("old_values", "jsonb_set(old_values, '{ratio}', '0.1000000000000000055511151231257827')"),
        "modified",
    ),
    "inet netmask": ("plain", _update("ip_address", "set_masklen(ip_address, 8)", seq=1), "modified"),
    "array lower bound": ("plain", _update("changed_fields", "'[0:1]={dose,unit}'"), "modified"),
    "timestamp microsecond": ("plain", _update("timestamp", "timestamp + interval '1 microsecond'"), "modified"),
    "registry emitter": (
        "plain",
        _sql(
            "UPDATE audit_chains SET emitter = jsonb_set(emitter, '{service_name}', '\"payroll\"') "
            "WHERE chain_id = '{chain}'"
        ),
        "registry_mismatch",
    ),
    "registry created_at": (
        "plain",
        _sql("UPDATE audit_chains SET created_at = created_at - interval '1 hour' WHERE chain_id = '{chain}'"),
        "registry_mismatch",
    ),
    "hidden in quarantine": (
        "plain",
        _sql(
            "INSERT INTO audit_quarantine (chain_id, seq, hash, canonical, reason) SELECT chain_id, seq, hash, "
            "canonical, 'moved' FROM audit_logs WHERE chain_id = '{chain}' AND seq BETWEEN 10 AND 12",
            "DELETE FROM audit_logs WHERE chain_id = '{chain}' AND seq BETWEEN 10 AND 12",
        ),
        "record_hidden",
    ),
    "deleted middle rows": (
        "plain",
        _sql("DELETE FROM audit_logs WHERE chain_id = '{chain}' AND seq BETWEEN 20 AND 22"),
        "missing",
    ),
    "edited bytes": (
        "plain",
        _sql(
            "UPDATE audit_logs SET canonical = convert_to(replace(convert_from(canonical, 'UTF8'), 'user-', 'evil-'), "
            "'UTF8') WHERE chain_id = '{chain}' AND seq = 5"
        ),
        "modified",
    ),
    "edited bytes and hash": (
        "plain",
        _sql(
            "UPDATE audit_logs SET canonical = convert_to(replace(convert_from(canonical, 'UTF8'), 'user-', 'evil-'), "
            "'UTF8') WHERE chain_id = '{chain}' AND seq = 5",
            "UPDATE audit_logs SET hash = encode(sha256(convert_to('otel-audit.record.v1', 'UTF8') || '\\x00'::bytea "
            "|| canonical), 'hex'), actor_id = replace(actor_id, 'user-', 'evil-') WHERE chain_id = '{chain}' "
            "AND seq = 5",
        ),
        "broken_link",
    ),
    "deleted newest rows": (
        "trusted-key",
        _sql(
            "DELETE FROM audit_logs WHERE chain_id = '{chain}' AND seq > (SELECT max(seq) - 3 FROM audit_logs "
            "WHERE chain_id = '{chain}')"
        ),
        "truncated",
    ),
    "rewritten and rehashed": ("trusted-key", _rewrite_from(30), "rewritten"),
    "a second, different row at one position": (
        "plain",
        _sql(
            DROP_POSITION_INDEXES,
            "CREATE TEMP TABLE forged ON COMMIT DROP AS SELECT * FROM audit_logs WHERE chain_id = '{chain}' AND seq = 40",
            "UPDATE forged SET canonical = convert_to(replace(convert_from(canonical, 'UTF8'), 'user-', 'evil-'), 'UTF8'), "
            "actor_id = replace(actor_id, 'user-', 'evil-'), resource_id = replace(resource_id, 'user-', 'evil-')",
            "UPDATE forged SET hash = encode(sha256(convert_to('otel-audit.record.v1', 'UTF8') || '\\x00'::bytea "
            "|| canonical), 'hex')",
            "INSERT INTO audit_logs SELECT * FROM forged",
        ),
        "inserted",
    ),
    "newest checkpoints deleted with the newest rows": (
        "trusted-key+witness",
        _sql(
            "DELETE FROM audit_logs WHERE chain_id = '{chain}' AND seq > 50",
            "DELETE FROM audit_checkpoints WHERE chain_id = '{chain}' AND seq > 50",
        ),
        "rolled_back",
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_both_verifiers_fail_a_tampered_trail_on_the_same_records(trail: Trail, name: str) -> None:
    mode, attack, kind = ATTACKS[name]
    report, mine, other = both(trail, mode, attack)
    assert report.exit_code() == 1, f"otel-audit verify missed {name}: {mine}"
    assert stranger.exit_code([stranger.Finding(*f) for f in other]) == 1, f"the stranger missed {name}: {other}"
    assert kind in {k for k, s, _, _ in mine if s == "error"}, mine
    assert kind in {k for k, s, _, _ in other if s == "error"}, other
    assert bad_records(mine) == bad_records(other), (mine, other)
