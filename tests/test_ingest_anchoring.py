"""`otel-audit serve` signs and witnesses its own chains exactly as the in-process processor does.

Every test runs ``serve`` as a real process against real PostgreSQL, stops it
with SIGTERM as a service manager would, and verifies the trail with the
``otel-audit verify`` command an auditor runs, trusting only the public keys
and the witness directory it is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from otel_audit.cli.main import main
from otel_audit.core.keys import generate_signing_key, load_signing_key, write_keypair
from otel_audit.witness import DirectoryWitness
from tests.harness import App, rows
from tests.ingest_harness import audit_request
from tests.serve_harness import ROOT, ServeProcess, verify_cli, wait_until

pytestmark = pytest.mark.storage

TOKEN = "anchor-token-0123456789abcdef"
ENV = {"OTEL_AUDIT_INGEST_TOKENS": TOKEN}


def keypair(directory: Path, name: str) -> tuple[Path, Path]:
    return write_keypair(generate_signing_key(), directory / name)


def checkpoints(dsn: str, chain_id: str) -> list[tuple[int, int, bool]]:
    return rows(dsn, "SELECT n, seq, closed FROM audit_checkpoints WHERE chain_id = %s ORDER BY n", (chain_id,))


def witnessed(witness: Path, chain_id: str) -> int:
    """Checkpoints of the chain the witness directory holds, read as the verifier reads them."""
    return len(list(DirectoryWitness(witness, create=False).read([chain_id])))


def tamper(dsn: str, statement: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # superuser only: triggers off
        conn.execute(statement, params)


def test_serve_checkpoints_by_count_when_idle_and_at_sigterm_and_witnesses_them(db: str, tmp_path: Path) -> None:
    private, public = keypair(tmp_path / "keys", "ingest")
    witness = tmp_path / "witness"

    # By count: the interval is an hour, so only the record count can sign beyond the first checkpoint.
    # Settings from the environment, exactly as otel_audit.configure() reads them.
    by_count = ServeProcess(
        db,
        tmp_path / "spool-a",
        env={
            **ENV,
            "OTEL_AUDIT_SIGNING_KEY": str(private),
            "OTEL_AUDIT_WITNESS_DIR": str(witness),
            "OTEL_AUDIT_CHECKPOINT_RECORDS": "10",
            "OTEL_AUDIT_CHECKPOINT_INTERVAL": "3600",
        },
    )
    try:
        assert "checkpoints signed by key" in by_count.started and "every 10 records" in by_count.started
        wait_until(lambda: checkpoints(db, by_count.chain_id))  # the first one, signed on its own thread at start
        assert by_count.export(audit_request(25, tag="count"), token=TOKEN).status == 200
        wait_until(lambda: any(seq >= 20 for _, seq, _ in checkpoints(db, by_count.chain_id)))
    finally:
        assert by_count.stop() == 0, by_count.log
    count_cps = checkpoints(db, by_count.chain_id)
    assert count_cps[0] == (1, 0, False)  # anchored from its first moment
    assert [closed for _, _, closed in count_cps] == [False] * (len(count_cps) - 1) + [True]
    assert count_cps[-1][1] == 25  # SIGTERM closed the chain at its last record
    assert witnessed(witness, by_count.chain_id) == len(count_cps)
    # The ingest's chain seals the checkpoint policy it kept, as an application's does.
    ((genesis,),) = rows(db, "SELECT genesis FROM audit_chains WHERE chain_id = %s", (by_count.chain_id,))
    assert json.loads(bytes(genesis))["checkpoints"] == {
        "key_id": load_signing_key(private).key_id,
        "records": 10,
        "interval_ms": 3_600_000,
    }

    # When idle: the record count is never reached, the interval alone re-signs the same head.
    idle = ServeProcess(
        db,
        tmp_path / "spool-b",
        "--signing-key",
        str(private),
        "--witness-dir",
        str(witness),
        "--checkpoint-records",
        "1000",
        "--checkpoint-interval",
        "0.2",
        env=ENV,
    )
    try:
        wait_until(lambda: checkpoints(db, idle.chain_id))
        assert idle.export(audit_request(5, tag="idle"), token=TOKEN).status == 200
        wait_until(lambda: sum(1 for _, seq, _ in checkpoints(db, idle.chain_id) if seq == 5) >= 3)
    finally:
        assert idle.stop() == 0, idle.log
    idle_cps = checkpoints(db, idle.chain_id)
    assert idle_cps[-1][1:] == (5, True)
    assert witnessed(witness, idle.chain_id) == len(idle_cps)

    result = verify_cli(db, [public], [witness])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unanchored" not in result.stdout

    # Truncating the ingest's chain: the closing checkpoint (in PostgreSQL and in the witness) covers seq 25.
    tamper(db, "DELETE FROM audit_logs WHERE chain_id = %s AND seq > 22", (by_count.chain_id,))
    result = verify_cli(db, [public], [witness])
    assert result.returncode == 1 and "truncated" in result.stdout, result.stdout
    # ... and without the witness too, from the signed checkpoints in PostgreSQL.
    result = verify_cli(db, [public])
    assert result.returncode == 1 and "truncated" in result.stdout, result.stdout


def test_serve_without_a_key_says_so_and_verify_blames_the_ingest_not_an_application(db: str, tmp_path: Path) -> None:
    _, public = keypair(tmp_path / "keys", "unused")
    serve = ServeProcess(db, tmp_path / "spool", env=ENV)
    try:
        assert "no signing key" in serve.started
        wait_until(lambda: "--signing-key / OTEL_AUDIT_SIGNING_KEY" in serve.log)  # the warning says how to fix it
        assert serve.export(audit_request(3), token=TOKEN).status == 200
    finally:
        assert serve.stop() == 0, serve.log
    result = verify_cli(db, [public])
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "unanchored" in line]
    assert "otel-audit serve" in line and "--signing-key" in line, line
    assert "application" not in line, line


def test_serve_refuses_a_key_it_cannot_read_and_warns_about_a_group_readable_one(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_AUDIT_INGEST_TOKENS", TOKEN)
    missing = tmp_path / "nope.pem"
    assert main(["serve", "--dsn", db, "--port", "0", "--signing-key", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the checkpoint signing key {missing}" in err and "otel-audit keygen" in err
    monkeypatch.setenv("OTEL_AUDIT_SIGNING_KEY", str(missing))  # the variable fails the same way
    assert main(["serve", "--dsn", db, "--port", "0"]) == 2
    assert f"cannot read the checkpoint signing key {missing}" in capsys.readouterr().err
    monkeypatch.delenv("OTEL_AUDIT_SIGNING_KEY")
    _, public = keypair(tmp_path / "keys", "k")
    assert main(["serve", "--dsn", db, "--port", "0", "--signing-key", str(public)]) == 2
    assert "that is a public key" in capsys.readouterr().err
    monkeypatch.setenv("OTEL_AUDIT_CHECKPOINT_RECORDS", "many")
    assert main(["serve", "--dsn", db, "--port", "0"]) == 2
    assert "OTEL_AUDIT_CHECKPOINT_RECORDS='many' is not valid: expected a whole number" in capsys.readouterr().err
    monkeypatch.delenv("OTEL_AUDIT_CHECKPOINT_RECORDS")

    private, _ = keypair(tmp_path / "keys", "loose")
    os.chmod(private, 0o640)
    serve = ServeProcess(db, tmp_path / "spool", "--signing-key", str(private), env=ENV)
    try:
        assert "readable by group or others" in serve.log and "chmod 600" in serve.log
    finally:
        assert serve.stop() == 0, serve.log


OTEL_AUDIT_APP = textwrap.dedent(
    """
    import logging, sys
    import otel_audit
    dsn, spool, name, n = sys.argv[1:5]
    # Key, witness and OTLP endpoint come from the environment (OTEL_AUDIT_SIGNING_KEY, ...).
    audit = otel_audit.configure(dsn=dsn, service_name=name, spool_dir=spool, otlp=True, metrics=False)
    log = logging.getLogger(name)
    for i in range(int(n)):
        log.info("record changed", extra={"audit.action": "update", "audit.actor.id": "admin-1",
            "audit.actor.type": "admin", "audit.resource.type": "document", "audit.resource.id": str(i),
            "audit.result": "success", "test.id": f"{name}-{i}"})
    sys.exit(0 if audit.shutdown(timeout=60) else 3)
    """
)


def test_a_mixed_trail_verifies_clean_with_every_key_in_use_and_the_witness(db: str, tmp_path: Path) -> None:
    """In-process chains (key A), the ingest's own chain (key B) and a pre-sealed chain relayed by the ingest."""
    private_a, public_a = keypair(tmp_path / "keys", "apps")
    private_b, public_b = keypair(tmp_path / "keys", "ingest")
    witness = tmp_path / "witness"

    app = App(db, tmp_path / "app-spool", service="payroll", signing_key=str(private_a), witness_dir=witness)
    for i in range(20):
        app.log(**{"test.id": f"inproc-{i}"})

    serve = ServeProcess(
        db,
        tmp_path / "ingest-spool",
        "--signing-key",
        str(private_b),
        "--witness-dir",
        str(witness),
        "--checkpoint-records",
        "7",
        env=ENV,
    )
    try:
        for batch in range(3):  # a service in another language, through the collector
            assert serve.export(audit_request(10, tag=f"go-{batch}"), token=TOKEN).status == 200
        relayed = subprocess.run(  # an otel-audit application whose OTLP export also reaches the ingest
            [sys.executable, "-c", OTEL_AUDIT_APP, db, str(tmp_path / "relay-app-spool"), "ledger", "15"],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "OTEL_AUDIT_SIGNING_KEY": str(private_a),
                "OTEL_AUDIT_WITNESS_DIR": str(witness),
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": serve.url,
                "OTEL_EXPORTER_OTLP_LOGS_HEADERS": f"Authorization=Bearer%20{TOKEN}",
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert relayed.returncode == 0, relayed.stderr
        stats = serve.stats(TOKEN)
    finally:
        assert serve.stop() == 0, serve.log
    assert app.close()
    assert (stats["ingest"]["sealed"], stats["ingest"]["relayed"]) == (30, 15)  # the ledger app's went through it

    kinds = dict(
        rows(
            db,
            "SELECT c.emitter->>'kind', count(l.*) FROM audit_chains c "
            "LEFT JOIN audit_logs l USING (chain_id) GROUP BY 1",
        )
    )
    assert kinds == {"sdk": 35, "ingest": 31}  # 30 sealed for the Go service, 1 attesting the ledger chain
    assert rows(db, "SELECT count(*) FROM audit_logs WHERE service_name = 'ledger'") == [(15,)]

    result = verify_cli(db, [public_a, public_b], [witness], "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    # Each key alone leaves the other's chains unanchored: both keys are needed, and enough.
    only_a = verify_cli(db, [public_a], [witness])
    assert only_a.returncode == 1 and "untrusted_key" in only_a.stdout, only_a.stdout
    (line,) = [line for line in only_a.stdout.splitlines() if "unanchored" in line]
    assert "not signed by a trusted key" in line and "without a signing key" not in line, line
