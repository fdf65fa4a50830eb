"""Trust anchoring against real PostgreSQL: signed checkpoints, the witness, proofs.

Every attack is carried out as a database superuser would (triggers off with
``session_replication_role = replica``, then edit, delete, recompute). The
verifier trusts only the public key and the witness directory it is given,
and must name each attack.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql

from otel_audit.cli.main import main
from otel_audit.core.canonical import canonical_json
from otel_audit.core.checkpoint import parse_checkpoint, sign_checkpoint
from otel_audit.core.keys import generate_signing_key, load_trusted_keys, write_keypair
from otel_audit.core.record import RECORD_DOMAIN
from otel_audit.sink.schema import grant_writer
from otel_audit.verify import VerificationReport, VerifyOptions, verify_database
from otel_audit.verify.report import Kind, Severity
from otel_audit.witness import DirectoryWitness
from tests.harness import App, exit_code, fork_logging, rows

pytestmark = [pytest.mark.storage, pytest.mark.usefixtures("verify_mode")]

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0


@dataclass
class Keys:
    private: Path
    public: Path
    key_id: str


def make_keys(directory: Path, name: str = "signing") -> Keys:
    key = generate_signing_key()
    private, public = write_keypair(key, directory / name)
    return Keys(private, public, key.key_id)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def witness_dir(tmp_path: Path) -> Path:
    return tmp_path / "witness"


def check(
    dsn: str,
    trusted: list[Path] | None,
    witness: Path | None = None,
    **options,
) -> VerificationReport:
    opts = VerifyOptions(
        trusted_keys=load_trusted_keys(trusted) if trusted is not None else None,
        witnesses=[DirectoryWitness(witness, create=False)] if witness is not None else [],
        **options,
    )
    with psycopg.connect(dsn) as conn:
        return verify_database(conn, opts)


def errors(report: VerificationReport) -> list[tuple[str, int | None]]:
    return sorted(((f.kind.value, f.seq) for f in report.errors), key=lambda x: (x[0], x[1] or 0))


def tamper(dsn: str, *statements: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # superuser only: triggers off
        for statement in statements:
            conn.execute(statement, params if "%s" in statement else None)


def anchored_app(dsn: str, spool: Path, keys: Keys, witness: Path | None, **options) -> App:
    options.setdefault("checkpoint_interval", 3600)
    app = App(dsn, spool, signing_key=str(keys.private), witness_dir=witness, **options)
    checkpointer = app.audit.pipeline.checkpointer
    deadline = time.monotonic() + 30
    while checkpointer.last is None and time.monotonic() < deadline:  # the first checkpoint, at seq 0
        time.sleep(0.01)
    assert checkpointer.last is not None and checkpointer.last.seq == 0
    return app


@pytest.fixture
def trail(db: str, spool_dir: Path, keys: Keys, witness_dir: Path) -> str:
    """30 records; checkpoints 1 (seq 0), 2 (seq 10), 3 (seq 20) and the closing 4 (seq 30)."""
    app = anchored_app(db, spool_dir, keys, witness_dir)
    for i in range(30):
        app.log(n=i)
        if i in (9, 19):
            app.audit.pipeline.checkpointer.checkpoint_now()
    assert app.close()
    assert rows(db, "SELECT n, seq, closed FROM audit_checkpoints ORDER BY n") == [
        (1, 0, False),
        (2, 10, False),
        (3, 20, False),
        (4, 30, True),
    ]
    report = check(db, [keys.public], witness_dir)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    return db


def chain_of(dsn: str) -> str:
    ((chain_id,),) = rows(dsn, "SELECT chain_id::text FROM audit_chains")
    return chain_id


# ---------------------------------------------------------------------- the clean case
def test_an_anchored_trail_is_stored_witnessed_and_verifies_clean(trail: str, keys: Keys, witness_dir: Path) -> None:
    chain_id = chain_of(trail)
    files = sorted((witness_dir / chain_id).iterdir())
    assert [f.name[:12] for f in files] == ["000000000001", "000000000002", "000000000003", "000000000004"]
    ((body, signature),) = rows(trail, "SELECT body, signature FROM audit_checkpoints WHERE n = 4")
    envelope = parse_checkpoint(bytes(body), bytes(signature)).envelope
    previous = hashlib.sha256(files[-2].read_bytes()).hexdigest()
    assert files[-1].read_bytes() == envelope + f"previous {files[-2].name} {previous}\n".encode()
    # Plain verify still holds the chain to the checkpoints, but says their signatures were not checked.
    plain = check(trail, None)
    assert plain.ok and [(f.kind, f.severity) for f in plain.findings] == [
        (Kind.CHECKPOINTS_UNCHECKED, Severity.WARNING)
    ]
    summary = check(trail, [keys.public], witness_dir).chains[chain_id].to_dict()
    assert (summary["checkpoints"], summary["anchored_seq"], summary["closed"], summary["unanchored"]) == (
        4,
        30,
        True,
        0,
    )


# ---------------------------------------------------------------------- records
@pytest.mark.parametrize("with_witness", [True, False])
def test_deleting_the_last_rows_is_truncation(trail: str, keys: Keys, witness_dir: Path, with_witness: bool) -> None:
    tamper(trail, "DELETE FROM audit_logs WHERE seq > 25")
    assert check(trail, None).errors[0].kind is Kind.TRUNCATED  # the stored checkpoints show it, signed or not
    report = check(trail, [keys.public], witness_dir if with_witness else None)
    assert errors(report) == [("truncated", 26)]
    assert report.errors[0].count == 5 and "records 26..30 were removed from the end" in report.errors[0].detail


def recompute_from(dsn: str, start: int, edit) -> None:
    """Edit record ``start`` and re-hash it and every later record, as a careful attacker would."""
    chain_id = chain_of(dsn)
    ((prev,),) = rows(dsn, "SELECT hash FROM audit_logs WHERE chain_id = %s AND seq = %s", (chain_id, start - 1))
    later = rows(
        dsn, "SELECT seq, canonical FROM audit_logs WHERE chain_id = %s AND seq >= %s ORDER BY seq", (chain_id, start)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for seq, canonical in later:
            doc = orjson.loads(bytes(canonical))
            if seq == start:
                edit(doc)
            doc["prev_hash"] = prev
            forged = canonical_json(doc)
            digest = hashlib.sha256(RECORD_DOMAIN + forged).hexdigest()
            conn.execute(
                "UPDATE audit_logs SET canonical = %s, hash = %s, prev_hash = %s, resource_id = %s "
                "WHERE chain_id = %s AND seq = %s",
                (forged, digest, prev, doc["resource_id"], chain_id, seq),
            )
            prev = digest


def test_editing_a_middle_row_and_recomputing_all_later_hashes_is_a_rewrite(
    trail: str, keys: Keys, witness_dir: Path
) -> None:
    recompute_from(trail, 15, lambda doc: doc.update(resource_id="patient-000"))
    # The chain alone is consistent again: without trusted checkpoints, nothing to see but the warning.
    assert not [f for f in check(trail, None).errors if f.kind is not Kind.REWRITTEN]
    report = check(trail, [keys.public], witness_dir)
    assert errors(report) == [("rewritten", 20)]
    assert "the chain after seq 10 was edited and its hashes recomputed" in report.errors[0].detail
    assert report.errors[0].count == 2  # seq 20 and seq 30 no longer match


def test_records_appended_after_the_closing_checkpoint_are_inserted(trail: str, keys: Keys, witness_dir: Path) -> None:
    chain_id = chain_of(trail)
    ((canonical, prev),) = rows(trail, "SELECT canonical, hash FROM audit_logs WHERE seq = 30")
    doc = orjson.loads(bytes(canonical))
    doc.update(seq=31, prev_hash=prev, id=str(uuid.uuid4()), actor_id="intruder")
    forged = canonical_json(doc)
    tamper(
        trail,
        "INSERT INTO audit_logs (id, timestamp, actor_id, actor_type, action, resource_type, resource_id, result, "
        "ip_address, prev_hash, hash, chain_id, seq, service_name, host_name, scope, severity_text, severity_number, "
        "message, attributes, problems, format_version, canonical, service_instance_id) "
        "SELECT %s, timestamp, 'intruder', actor_type, action, resource_type, resource_id, result, ip_address, %s, %s, "
        "chain_id, 31, service_name, host_name, scope, severity_text, severity_number, message, attributes, problems, "
        "format_version, %s, service_instance_id FROM audit_logs WHERE seq = 30",
        params=(doc["id"], prev, hashlib.sha256(RECORD_DOMAIN + forged).hexdigest(), forged),
    )
    # A perfectly linked record: only the closing checkpoint tells (even unchecked, as stored).
    assert errors(check(trail, None)) == [("inserted", 31)]
    report = check(trail, [keys.public], witness_dir)
    assert errors(report) == [("inserted", 31)], chain_id
    assert "follow the closing checkpoint 4" in report.errors[0].detail


# ---------------------------------------------------------------------- chains
@pytest.mark.parametrize("checkpoints_too", [True, False])
def test_deleting_every_row_of_a_chain_and_its_registry_entry(
    trail: str, spool_dir: Path, keys: Keys, witness_dir: Path, checkpoints_too: bool
) -> None:
    victim = chain_of(trail)
    other = anchored_app(trail, spool_dir, keys, witness_dir)
    other.log()
    assert other.close()
    statements = [
        f"DELETE FROM audit_logs WHERE chain_id = '{victim}'",
        f"DELETE FROM audit_chains WHERE chain_id = '{victim}'",
    ]
    if checkpoints_too:
        statements.append(f"DELETE FROM audit_checkpoints WHERE chain_id = '{victim}'")
    tamper(trail, *statements)
    report = check(trail, [keys.public], witness_dir)
    assert [(f.kind.value, f.chain_id) for f in report.errors] == [("chain_deleted", victim)]
    assert "the whole chain was deleted" in report.errors[0].detail and report.errors[0].count == 30
    if not checkpoints_too:  # the stored checkpoints alone prove it, no witness needed
        assert [(f.kind.value, f.chain_id) for f in check(trail, [keys.public]).errors] == [("chain_deleted", victim)]


# ---------------------------------------------------------------------- checkpoints
def test_deleting_a_checkpoint_is_detected(trail: str, keys: Keys, witness_dir: Path) -> None:
    tamper(trail, "DELETE FROM audit_checkpoints WHERE n = 2")
    with_witness = check(trail, [keys.public], witness_dir)
    assert errors(with_witness) == [("checkpoint_missing", 10)]
    assert "in the witness but not in the database" in with_witness.errors[0].detail
    without = check(trail, [keys.public])
    assert errors(without) == [("checkpoint_missing", 20)]  # the numbering has a gap before checkpoint 3
    assert "numbering has a gap" in without.errors[0].detail


@pytest.mark.parametrize("how", ["DELETE FROM audit_checkpoints", "DROP TABLE audit_checkpoints"])
def test_deleting_every_checkpoint_is_detected(trail: str, keys: Keys, witness_dir: Path, how: str) -> None:
    tamper(trail, how)
    dropped = [("checkpoint_missing", None)] if how.startswith("DROP") else []
    with_witness = check(trail, [keys.public], witness_dir)
    assert errors(with_witness) == sorted([*dropped, ("checkpoint_missing", None)], key=lambda x: (x[0], 0))
    assert any("all 4 witnessed checkpoint(s)" in f.detail for f in with_witness.errors)
    # Without a witness the chain is simply no longer anchored: missing integrity data fails.
    without = check(trail, [keys.public])
    assert errors(without) == sorted([*dropped, ("unanchored", None)])
    if dropped:
        assert "it was dropped" in check(trail, None).errors[0].detail  # even plain verify sees the dropped table


def test_rolling_back_the_newest_checkpoints_is_detected(trail: str, keys: Keys, witness_dir: Path) -> None:
    tamper(trail, "DELETE FROM audit_checkpoints WHERE n >= 3")
    report = check(trail, [keys.public], witness_dir)
    assert errors(report) == [("rolled_back", 30)]
    assert "end at number 2, but the witness holds 2 newer" in report.errors[0].detail


def test_rolling_back_records_and_checkpoints_together(trail: str, keys: Keys, witness_dir: Path) -> None:
    """A restore of an older backup, or an attacker deleting the tail of both tables."""
    tamper(trail, "DELETE FROM audit_logs WHERE seq > 20", "DELETE FROM audit_checkpoints WHERE n = 4")
    assert errors(check(trail, [keys.public], witness_dir)) == [("rolled_back", 30), ("truncated", 21)]
    # Without the witness the database looks like a chain whose process died after checkpoint 3: a
    # warning (not proof of tampering) that names the witness as what would tell the two apart.
    later = check(trail, [keys.public], now=time.time() + DAY)
    assert later.ok
    (unclosed,) = [f for f in later.warnings if f.kind is Kind.UNCLOSED]
    assert "Without --witness" in unclosed.detail


def test_a_checkpoint_signed_by_another_key_is_untrusted(trail: str, keys: Keys, tmp_path: Path) -> None:
    chain_id = chain_of(trail)
    ((body,),) = rows(trail, "SELECT body FROM audit_checkpoints WHERE n = 4")
    real = orjson.loads(bytes(body))
    mallory = generate_signing_key()
    forged = sign_checkpoint(
        mallory,
        chain_id=chain_id,
        n=5,
        seq=31,
        head="f" * 64,
        genesis=real["genesis"],
        prev="0" * 64,
        time_ns=time.time_ns(),
        interval_ms=10_000,
        closed=True,
    )
    tamper(
        trail,
        "INSERT INTO audit_checkpoints (chain_id, n, seq, head, signed_at, key_id, closed, body, signature, hash) "
        "VALUES (%s, 5, 31, %s, %s, %s, true, %s, %s, %s)",
        params=(chain_id, forged.head, forged.time, forged.key_id, forged.body, forged.signature, forged.hash),
    )
    report = check(trail, [keys.public])
    assert errors(report) == [("untrusted_key", 31)]
    assert mallory.key_id in report.errors[0].detail


def test_an_altered_signature_or_checkpoint_column_is_detected(trail: str, keys: Keys, witness_dir: Path) -> None:
    tamper(
        trail, "UPDATE audit_checkpoints SET signature = set_byte(signature, 0, get_byte(signature, 0) # 1) WHERE n = 3"
    )
    assert errors(check(trail, [keys.public], witness_dir)) == [("bad_signature", 20)]
    tamper(
        trail,
        "UPDATE audit_checkpoints SET signature = (SELECT signature FROM audit_checkpoints WHERE n = 2) WHERE n = 3",
        "UPDATE audit_checkpoints SET seq = 29 WHERE n = 4",
    )
    found = errors(check(trail, [keys.public], witness_dir))
    assert found == [("bad_signature", 20), ("checkpoint_malformed", 30)]


# ---------------------------------------------------------------------- keys
def test_an_emitter_without_a_signing_key_fails_anchored_verification(db: str, spool_dir: Path, keys: Keys) -> None:
    app = App(db, spool_dir)
    for _ in range(3):
        app.log()
    assert app.close()
    with psycopg.connect(db) as conn:
        plain = verify_database(conn)
    assert plain.ok and not plain.findings  # the core verify on its own: nothing it can see
    report = check(db, [keys.public])
    assert errors(report) == [("unanchored", None)]
    assert "ran without a signing key" in report.errors[0].detail and report.errors[0].count == 3


def test_rotated_keys_are_trusted_together(db: str, spool_dir: Path, tmp_path: Path, witness_dir: Path) -> None:
    old, new = make_keys(tmp_path, "old"), make_keys(tmp_path, "new")
    for k in (old, new):
        app = anchored_app(db, spool_dir, k, witness_dir)
        app.log()
        assert app.close()
    both = check(db, [old.public, new.public], witness_dir)
    assert both.ok and not both.findings, [str(f) for f in both.findings]
    only_new = check(db, [new.public], witness_dir)
    kinds = {f.kind for f in only_new.errors}
    assert kinds == {Kind.UNTRUSTED_KEY, Kind.UNANCHORED}


# ---------------------------------------------------------------------- crashes and the witness
def test_a_crashed_process_chain_is_closed_by_the_process_that_replays_its_spool(
    db: str, tmp_path: Path, keys: Keys, witness_dir: Path
) -> None:
    spool = tmp_path / "spool"
    script = textwrap.dedent(
        """
        import logging, os, signal, sys, time
        import otel_audit
        audit = otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2], checkpoint_interval=3600)
        while audit.pipeline.checkpointer.last is None:
            time.sleep(0.01)
        log = logging.getLogger("app")
        for i in range(50):
            log.info("r", extra={"audit.action": "read", "audit.actor.id": "u", "audit.resource.type": "t",
                                 "audit.resource.id": str(i), "audit.result": "success"})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_SIGNING_KEY": str(keys.private),
        "OTEL_AUDIT_WITNESS_DIR": str(witness_dir),
    }
    proc = subprocess.run([sys.executable, "-c", script, db, str(spool)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    app = anchored_app(db, spool, keys, witness_dir)  # the next process replays the dead one's spool
    deadline = time.monotonic() + 60
    while rows(db, "SELECT count(*) FROM audit_logs")[0][0] < 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.close()
    dead = rows(db, "SELECT chain_id::text FROM audit_logs GROUP BY chain_id")[0][0]

    # The replaying process closed the dead chain with a checkpoint saying so: adopted, not closed by its owner.
    ((body,),) = rows(db, "SELECT body FROM audit_checkpoints WHERE chain_id = %s AND closed", (dead,))
    closing = orjson.loads(bytes(body))
    assert closing["seq"] == 50 and closing["adopted_by"]["chain_id"] == app.audit.chain_id
    for when in (None, time.time() + DAY):
        report = check(db, [keys.public], witness_dir, now=when, max_unanchored_age=60)
        # (the replaying process itself logged nothing: its own chain is empty)
        assert [f.kind for f in report.findings] == [Kind.EMPTY_CHAIN], [str(f) for f in report.findings]
    assert report.chains[dead].extra["adopted_by"]["pid"] == os.getpid()
    # A crash nobody replayed (its spool lost with its host) is reported as such: see test_anchor_policy.py.


def test_a_witness_that_cannot_be_written_is_loud_never_fatal(
    db: str, spool_dir: Path, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unmounted = tmp_path / "mnt"
    unmounted.write_text("the witness volume is not mounted here")
    with caplog.at_level("ERROR", logger="otel_audit.witness"):
        app = anchored_app(db, spool_dir, keys, unmounted / "witness")
        for _ in range(5):
            app.log()
        assert app.audit.flush(30)
        stats = app.audit.stats()
        assert app.close()  # everything committed; the witness failure does not fail shutdown
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(5,)]
    assert app.audit.pipeline.stats.witness_failures >= 2  # the first and the closing checkpoint
    assert stats["checkpoints"] >= 1
    assert "cannot write checkpoint" in caplog.text and "The application continues" in caplog.text
    # The database has the checkpoints; an (empty) real witness shows they were never witnessed.
    empty = tmp_path / "real-witness"
    empty.mkdir()
    report = check(db, [keys.public], empty)
    assert report.ok and [f.kind for f in report.warnings] == [Kind.NOT_WITNESSED]


def test_clean_run_with_several_processes_idle_periods_and_a_restart(db: str, tmp_path: Path, keys: Keys) -> None:
    witness = tmp_path / "witness"
    script = textwrap.dedent(
        """
        import logging, sys, threading, time
        import otel_audit
        audit = otel_audit.configure(dsn=sys.argv[1], service_name="worker", spool_dir=sys.argv[2])
        log = logging.getLogger("worker")
        def work(t):
            for burst in range(2):
                for i in range(150):
                    log.info("step", extra={"audit.action": "read", "audit.actor.id": f"u{t}",
                        "audit.resource.type": "doc", "audit.resource.id": str(i), "audit.result": "success"})
                time.sleep(1.0)  # idle: several checkpoint intervals with nothing to log
        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        [t.start() for t in threads]; [t.join() for t in threads]
        sys.exit(0 if audit.shutdown(timeout=60) else 3)
        """
    )
    spool = tmp_path / "spool"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_SIGNING_KEY": str(keys.private),
        "OTEL_AUDIT_WITNESS_DIR": str(witness),
        "OTEL_AUDIT_CHECKPOINT_INTERVAL": "0.2",
        "OTEL_AUDIT_CHECKPOINT_RECORDS": "200",
    }
    procs = [subprocess.Popen([sys.executable, "-c", script, db, str(spool)], env=env) for _ in range(3)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0]
    restarted = subprocess.run([sys.executable, "-c", script, db, str(spool)], env=env, timeout=180)
    assert restarted.returncode == 0
    report = check(db, [keys.public], witness)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert report.records == 4 * 900 and len(report.chains) == 4
    assert all(c.extra["closed"] and c.extra["anchored_seq"] == 900 for c in report.chains.values())
    # Idle periods were checkpointed: the same head signed again with a later time.
    idle = rows(
        db,
        "SELECT count(*) FROM (SELECT chain_id, seq FROM audit_checkpoints GROUP BY chain_id, seq "
        "HAVING count(*) > 1) x",
    )
    assert idle[0][0] >= 4
    witnessed = sum(len(list(d.iterdir())) for d in witness.iterdir())
    assert witnessed == rows(db, "SELECT count(*) FROM audit_checkpoints")[0][0]


def test_a_forked_child_anchors_a_chain_of_its_own(db: str, spool_dir: Path, keys: Keys, witness_dir: Path) -> None:
    app = anchored_app(db, spool_dir, keys, witness_dir)
    app.log()
    pid = fork_logging(app, 1)  # the child's record goes to a chain of its own
    app.log()
    assert exit_code(pid) == 0
    assert app.close()
    report = check(db, [keys.public], witness_dir)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    assert sorted((c.records, c.extra["closed"]) for c in report.chains.values()) == [(1, True), (2, True)]


# ---------------------------------------------------------------------- schema and roles
@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_checkpoints SET closed = true", "DELETE FROM audit_checkpoints", "TRUNCATE audit_checkpoints"],
)
def test_checkpoints_are_append_only(trail: str, statement: str) -> None:
    with psycopg.connect(trail, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)


def test_the_insert_only_writer_role_stores_checkpoints(
    db: str, spool_dir: Path, keys: Keys, witness_dir: Path
) -> None:
    role = f"audit_writer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        grant_writer(conn, role)
    try:
        app = anchored_app(psycopg.conninfo.make_conninfo(db, user=role), spool_dir, keys, witness_dir)
        for _ in range(3):
            app.log()
        assert app.close()
        report = check(db, [keys.public], witness_dir)
        assert report.ok and not report.findings, [str(f) for f in report.findings]
        with psycopg.connect(psycopg.conninfo.make_conninfo(db, user=role), autocommit=True) as conn:
            for statement in ("SELECT body FROM audit_checkpoints", "DELETE FROM audit_checkpoints"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ---------------------------------------------------------------------- the command line
def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "otel_audit", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keygen_command(tmp_path: Path) -> None:
    result = cli("keygen", "--out", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600 and (tmp_path / "k.pub").exists()
    key_id = load_trusted_keys([tmp_path / "k.pub"]).popitem()[0]
    assert f"key id      {key_id}" in result.stdout
    again = cli("keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 2 and "--force" in again.stderr


def test_verify_command_flags_and_exit_codes(
    trail: str, keys: Keys, witness_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["verify", "--dsn", trail, "--trusted-key", str(keys.public)]
    assert main([*base, "--witness", str(witness_dir)]) == 0
    assert "INTACT" in capsys.readouterr().out
    assert main(["verify", "--dsn", trail, "--strict"]) == 1  # checkpoints present, signatures unchecked
    assert "checkpoints_unchecked" in capsys.readouterr().out
    tamper(trail, "DELETE FROM audit_logs WHERE seq = 30", "DELETE FROM audit_checkpoints WHERE n = 4")
    assert main([*base, "--witness", str(witness_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert sorted(f["kind"] for f in report["findings"]) == ["rolled_back", "truncated"]
    assert main(["verify", "--dsn", trail, "--witness", str(witness_dir)]) == 2
    assert "--witness needs --trusted-key" in capsys.readouterr().err
    assert main([*base, "--witness", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["verify", "--dsn", trail, "--trusted-key", str(tmp_path / "missing.pub")]) == 2
    assert main([*base, "--max-unanchored-age", "soon"]) == 2


def test_prove_and_verify_proof(trail: str, keys: Keys, tmp_path: Path) -> None:
    ((record_id,),) = rows(trail, "SELECT id::text FROM audit_logs WHERE seq = 13")
    out = tmp_path / "proof.json"
    made = cli("prove", record_id, "--dsn", trail, "--out", str(out), "--trusted-key", str(keys.public))
    assert made.returncode == 0, made.stderr
    assert "up to checkpoint 3 (seq 20" in made.stderr
    proof = json.loads(out.read_text())
    assert proof["seq"] == 13 and len(proof["records"]) == 8  # records 13..20
    to_stdout = cli("prove", record_id, "--dsn", trail)
    assert to_stdout.returncode == 0 and json.loads(to_stdout.stdout)["records"] == proof["records"]

    valid = cli("verify-proof", str(out), "--trusted-key", str(keys.public))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert valid.stdout.startswith(f"VALID: record {record_id}")

    tampered = tmp_path / "tampered.json"
    proof["records"][0] = proof["records"][0].replace("patient-456", "patient-999")
    tampered.write_text(json.dumps(proof))
    bad = cli("verify-proof", str(tampered), "--trusted-key", str(keys.public))
    assert bad.returncode == 1 and "does not link to record 13" in bad.stdout
    other = make_keys(tmp_path, "other")
    assert cli("verify-proof", str(out), "--trusted-key", str(other.public)).returncode == 1
    (tmp_path / "junk.json").write_text("{not json")
    assert cli("verify-proof", str(tmp_path / "junk.json"), "--trusted-key", str(keys.public)).returncode == 1
    assert cli("verify-proof", str(tmp_path / "none.json"), "--trusted-key", str(keys.public)).returncode == 2
    assert cli("verify-proof", str(out), "--trusted-key", str(tmp_path / "none.pub")).returncode == 2


def test_prove_refuses_what_it_cannot_prove(trail: str) -> None:
    missing = cli("prove", str(uuid.uuid4()), "--dsn", trail)
    assert missing.returncode == 2 and "no record with id" in missing.stderr
    assert cli("prove", "not-an-id", "--dsn", trail).returncode == 2
    recompute_from(trail, 15, lambda doc: doc.update(resource_id="patient-000"))
    ((record_id,),) = rows(trail, "SELECT id::text FROM audit_logs WHERE seq = 16")
    broken = cli("prove", record_id, "--dsn", trail)
    assert broken.returncode == 1 and "do not lead to a valid checkpoint" in broken.stderr


def test_prove_a_record_that_is_not_anchored_yet(db: str, spool_dir: Path, keys: Keys, witness_dir: Path) -> None:
    app = anchored_app(db, spool_dir, keys, witness_dir)
    app.log()
    assert app.audit.flush(30)
    ((record_id,),) = rows(db, "SELECT id::text FROM audit_logs")
    pending = cli("prove", record_id, "--dsn", db)
    assert pending.returncode == 2 and "retry" in pending.stderr
    assert app.close()  # the closing checkpoint covers it
    assert cli("prove", record_id, "--dsn", db).returncode == 0
