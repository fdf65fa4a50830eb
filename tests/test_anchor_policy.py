"""Every chain is held to the checkpoint policy sealed in its genesis (issue 9, item 7).

The attacks act as a database superuser (triggers off) on real PostgreSQL:
rewriting a middle record and deleting the later checkpoints, and appending
forged records to a chain that is not closed. Both must fail ``otel-audit
verify --trusted-key`` (exit 1) with ``unanchored_span`` naming the span.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from otel_audit.cli.main import main
from otel_audit.core.canonical import canonical_json
from otel_audit.core.chain import Chain
from otel_audit.core.checkpoint import sign_checkpoint
from otel_audit.core.keys import generate_signing_key, load_signing_key, write_keypair
from otel_audit.core.record import RECORD_DOMAIN
from otel_audit.errors import ChainClosed
from otel_audit.verify.report import Kind, Severity
from tests import stranger_verifier as stranger
from tests.harness import App, rows
from tests.test_checkpoints import check, errors, recompute_from, tamper
from tests.trail import TrailChain, ns, store

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0


class _Keys:
    def __init__(self, directory: Path) -> None:
        key = generate_signing_key()
        self.private, self.public = write_keypair(key, directory / "signing")
        self.key_id = key.key_id


@pytest.fixture
def keys(tmp_path: Path) -> _Keys:
    return _Keys(tmp_path / "keys")


def genesis_of(dsn: str, chain_id: str) -> dict:
    ((genesis,),) = rows(dsn, "SELECT genesis FROM audit_chains WHERE chain_id = %s", (chain_id,))
    return orjson.loads(bytes(genesis))


# ---------------------------------------------------------------------- the chain keeps its promise
class _Frames:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def append(self, kind: int, payload: bytes, digest: bytes) -> int:
        self.frames.append((kind, payload))
        return len(self.frames)


def _draft(n: int):
    from otel_audit.core.record import RecordBuilder

    return RecordBuilder().build({"audit.action": "read", "audit.actor.id": f"u{n}"}, time_unix_nano=time.time_ns())


POLICY = {"key_id": "ab" * 16, "records": 2, "interval_ms": 1000}


def test_the_policy_is_sealed_into_the_genesis() -> None:
    chain = Chain(_Frames(), emitter={"kind": "sdk"}, checkpoint_policy=POLICY, parent="1" * 8)
    genesis = orjson.loads(chain.genesis)
    assert genesis["checkpoints"] == POLICY and genesis["parent"] == "1" * 8
    assert chain.max_unanchored == 4
    unsigned = Chain(_Frames(), emitter={"kind": "sdk"}, checkpoint_policy={**POLICY, "key_id": None})
    assert orjson.loads(unsigned.genesis)["checkpoints"]["key_id"] is None and unsigned.max_unanchored is None
    assert "checkpoints" not in orjson.loads(Chain(_Frames(), emitter={"kind": "sdk"}).genesis)


def test_no_record_is_sealed_more_than_twice_the_policy_after_the_newest_checkpoint() -> None:
    chain = Chain(_Frames(), emitter={"kind": "sdk"}, checkpoint_policy=POLICY, checkpoint_wait=60)
    for n in range(4):
        chain.seal(_draft(n))
    sealed: list[int] = []
    waiter = threading.Thread(target=lambda: sealed.append(chain.seal(_draft(4)).seq))
    waiter.start()
    deadline = time.monotonic() + 30
    while not chain._room._waiters and time.monotonic() < deadline:  # the caller waits for a checkpoint
        time.sleep(0.005)
    assert chain._room._waiters and not sealed and chain.head()[0] == 4
    chain.append_checkpoint(b"checkpoint", b"\0" * 32, 3)  # a checkpoint of seq 3: room up to seq 7
    waiter.join(30)
    assert sealed == [5]


def test_a_checkpointer_that_never_comes_delays_the_caller_then_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain(_Frames(), emitter={"kind": "sdk"}, checkpoint_policy=POLICY, checkpoint_wait=0.01)
    with caplog.at_level(logging.ERROR, logger="otel_audit"):
        seqs = [chain.seal(_draft(n)).seq for n in range(6)]
    assert seqs == [1, 2, 3, 4, 5, 6]  # never lost, never raised
    assert "sealed beyond the chain's checkpoint policy" in caplog.text
    chain.close()
    with pytest.raises(ChainClosed):
        chain.seal(_draft(7))


# ---------------------------------------------------------------------- sealed by every emitter
@pytest.mark.storage
def test_applications_seal_their_policy(db: str, spool_dir: Path, keys: _Keys, tmp_path: Path) -> None:
    signed = App(db, spool_dir, signing_key=str(keys.private), checkpoint_records=10, checkpoint_interval=3600)
    unsigned = App(db, tmp_path / "other-spool")
    signed.log()
    unsigned.log()
    assert signed.close() and unsigned.close()
    assert genesis_of(db, signed.audit.chain_id)["checkpoints"] == {
        "key_id": keys.key_id,
        "records": 10,
        "interval_ms": 3_600_000,
    }
    assert genesis_of(db, unsigned.audit.chain_id)["checkpoints"] == {
        "key_id": None,
        "records": 1000,
        "interval_ms": 10_000,
    }


# ---------------------------------------------------------------------- attack: rewrite + delete later checkpoints
@pytest.mark.storage
def test_a_rewrite_hidden_by_deleting_the_later_checkpoints_is_an_unanchored_span(
    db: str, spool_dir: Path, keys: _Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    app = App(db, spool_dir, signing_key=str(keys.private), checkpoint_records=5, checkpoint_interval=3600)
    for i in range(60):
        app.log(n=i)
    assert app.close()
    assert check(db, [keys.public]).ok
    recompute_from(db, 15, lambda doc: doc.update(resource_id="patient-000"))
    tamper(db, "DELETE FROM audit_checkpoints WHERE seq >= 15")
    ((anchored,),) = rows(db, "SELECT max(seq) FROM audit_checkpoints")
    report = check(db, [keys.public])
    assert errors(report) == [("unanchored_span", anchored + 1)], [str(f) for f in report.findings]
    assert f"records {anchored + 1}..60" in report.errors[0].detail
    assert report.errors[0].count == 60 - anchored
    assert main(["verify", "--dsn", db, "--trusted-key", str(keys.public)]) == 1
    assert "unanchored_span" in capsys.readouterr().out


# ---------------------------------------------------------------------- attack: append to an unclosed chain
def _crashed_chain(db: str, tmp_path: Path, keys: _Keys) -> str:
    """A process that logs 12 records, commits them and is killed; its spool is lost (no one closes it)."""
    spool = tmp_path / "crash-spool"
    script = textwrap.dedent(
        """
        import logging, os, signal, sys, time
        import otel_audit
        audit = otel_audit.configure(dsn=sys.argv[1], spool_dir=sys.argv[2], checkpoint_interval=3600,
                                     checkpoint_records=10)
        log = logging.getLogger("app")
        for i in range(12):
            log.info("r", extra={"audit.action": "read", "audit.actor.id": "u", "audit.resource.type": "t",
                                 "audit.resource.id": str(i), "audit.result": "success"})
        cp = audit.pipeline.checkpointer
        while cp.last is None or cp.last.seq < 10:
            time.sleep(0.01)
        assert audit.flush(60)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_AUDIT_SIGNING_KEY": str(keys.private)}
    proc = subprocess.run([sys.executable, "-c", script, db, str(spool)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    shutil.rmtree(spool)  # the host is gone: nobody adopts and closes this chain
    ((chain_id,),) = rows(db, "SELECT chain_id::text FROM audit_chains")
    return chain_id


def append_forged(dsn: str, chain_id: str, count: int, *, timestamp: datetime | None = None) -> None:
    """Append ``count`` correctly linked records after the chain's last one, as a superuser would."""
    ((seq, canonical, prev),) = rows(
        dsn, "SELECT seq, canonical, hash FROM audit_logs WHERE chain_id = %s ORDER BY seq DESC LIMIT 1", (chain_id,)
    )
    template = seq
    for _ in range(count):
        doc = orjson.loads(bytes(canonical))
        seq += 1
        doc.update(seq=seq, prev_hash=prev, id=doc["id"][:-12] + f"{seq:012x}", actor_id="intruder")
        if timestamp is not None:
            doc["timestamp"] = timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        forged = canonical_json(doc)
        digest = hashlib.sha256(RECORD_DOMAIN + forged).hexdigest()
        tamper(
            dsn,
            "INSERT INTO audit_logs (id, timestamp, actor_id, actor_type, action, resource_type, resource_id, result, "
            "ip_address, prev_hash, hash, chain_id, seq, service_name, host_name, scope, severity_text, "
            "severity_number, message, attributes, problems, format_version, canonical, service_instance_id) "
            "SELECT %s, %s::timestamptz, 'intruder', actor_type, action, resource_type, resource_id, result, "
            "ip_address, %s, %s, chain_id, %s, service_name, host_name, scope, severity_text, severity_number, "
            "message, attributes, problems, format_version, %s, service_instance_id FROM audit_logs "
            "WHERE chain_id = %s AND seq = %s",
            params=(doc["id"], doc["timestamp"], prev, digest, seq, forged, chain_id, template),
        )
        prev = digest


@pytest.mark.storage
def test_records_appended_to_an_unclosed_chain_beyond_its_policy_are_an_unanchored_span(
    db: str, tmp_path: Path, keys: _Keys
) -> None:
    chain_id = _crashed_chain(db, tmp_path, keys)
    ((anchored,),) = rows(db, "SELECT max(seq) FROM audit_checkpoints")
    # Crashed: at most one policy interval unanchored, a warning about the crash, no error.
    crashed = check(db, [keys.public], now=time.time() + DAY)
    assert crashed.ok, [str(f) for f in crashed.errors]
    assert [(f.kind, f.chain_id) for f in crashed.warnings] == [(Kind.UNCLOSED, chain_id)]
    assert "crashed or was killed; that alone is not tampering" in crashed.warnings[0].detail
    (unanchored,) = [f for f in crashed.findings if f.kind is Kind.UNANCHORED]
    assert (unanchored.severity, unanchored.count, unanchored.seq) == (Severity.INFO, 12 - anchored, anchored + 1)
    strict = check(db, [keys.public], now=time.time() + DAY, max_unanchored_age=60)
    assert errors(strict) == [("unanchored", anchored + 1)]
    # More records than the policy lets follow a checkpoint (2 x 10), however they are dated.
    append_forged(db, chain_id, 2 * 10 - (12 - anchored) + 1)
    report = check(db, [keys.public])
    assert errors(report) == [("unanchored_span", anchored + 1)], [str(f) for f in report.findings]
    assert main(["verify", "--dsn", db, "--trusted-key", str(keys.public)]) == 1


@pytest.mark.storage
def test_records_appended_to_an_unclosed_chain_dated_after_its_interval_are_an_unanchored_span(
    db: str, tmp_path: Path, keys: _Keys
) -> None:
    chain_id = _crashed_chain(db, tmp_path, keys)
    ((anchored, signed),) = rows(db, "SELECT seq, body FROM audit_checkpoints ORDER BY n DESC LIMIT 1")
    signed_at = datetime.fromisoformat(json.loads(bytes(signed))["time"].replace("Z", "+00:00"))
    # Within the policy's count but dated two hours after the newest checkpoint (interval one hour).
    append_forged(db, chain_id, 1, timestamp=signed_at + timedelta(hours=2))
    report = check(db, [keys.public])
    assert errors(report) == [("unanchored_span", anchored + 1)], [str(f) for f in report.findings]
    assert "sealed policy signs a checkpoint every 3600s" in report.errors[0].detail
    # The limit, documented: one forged record dated within the interval looks like the crash it imitates.
    tamper(db, "DELETE FROM audit_logs WHERE actor_id = 'intruder'")
    append_forged(db, chain_id, 1, timestamp=signed_at.astimezone(timezone.utc) + timedelta(seconds=1))
    plausible = check(db, [keys.public], now=time.time() + DAY)
    assert plausible.ok and [f.kind for f in plausible.warnings] == [Kind.UNCLOSED]


# ---------------------------------------------------------------------- attack: another emitter's key
@pytest.mark.storage
def test_a_rewrite_anchored_with_another_trusted_emitters_key_is_detected(
    db: str, spool_dir: Path, keys: _Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The auditor trusts every emitter's key; the holder of one of them, with the database's owner, rewrites
    another emitter's chain and signs checkpoints over the new hashes. Each checkpoint must be signed by the key
    the chain's sealed genesis names."""
    app = App(db, spool_dir, signing_key=str(keys.private), checkpoint_records=10, checkpoint_interval=3600)
    for i in range(30):
        app.log(n=i)
    assert app.close()
    other = _Keys(tmp_path / "other")  # another emitter's key, which the auditor also trusts
    assert check(db, [keys.public, other.public]).ok
    recompute_from(db, 25, lambda doc: doc.update(resource_id="patient-000"))
    tamper(db, "DELETE FROM audit_checkpoints WHERE seq >= 25")
    ((chain_id, n, prev, body),) = rows(
        db, "SELECT chain_id::text, n, hash, body FROM audit_checkpoints ORDER BY n DESC LIMIT 1"
    )
    ((head,),) = rows(db, "SELECT hash FROM audit_logs WHERE seq = 30")
    forged = sign_checkpoint(
        load_signing_key(other.private),
        chain_id=chain_id,
        n=n + 1,
        seq=30,
        head=head,
        genesis=json.loads(bytes(body))["genesis"],
        prev=prev,
        time_ns=time.time_ns(),
        interval_ms=3_600_000,
        closed=True,
    )
    tamper(
        db,
        "INSERT INTO audit_checkpoints (chain_id, n, seq, head, signed_at, key_id, closed, body, signature, hash) "
        "VALUES (%s, %s, 30, %s, %s, %s, true, %s, %s, %s)",
        params=(chain_id, n + 1, head, forged.time, forged.key_id, forged.body, forged.signature, forged.hash),
    )
    report = check(db, [keys.public, other.public])
    assert errors(report) == [("wrong_key", 30)], [str(f) for f in report.findings]
    assert f"names key {keys.key_id}" in report.errors[0].detail and other.key_id in report.errors[0].detail
    # A verifier written from the specification alone finds the same.
    theirs = stranger.verify(db, [keys.public, other.public])
    assert [(f.kind, f.seq) for f in theirs if f.severity == "error"] == [("wrong_key", 30)], theirs
    args = ["verify", "--dsn", db, "--trusted-key", str(keys.public), "--trusted-key", str(other.public)]
    assert main(args) == 1
    assert "wrong_key" in capsys.readouterr().out


@pytest.mark.storage
@pytest.mark.parametrize("signer", ["adopter", "a third emitter"])
def test_an_adopted_chain_is_closed_with_the_adopters_own_key(db: str, tmp_path: Path, signer: str) -> None:
    """The process that replays a dead emitter's spool closes its chain with its own key: the one its own
    chain's genesis names. A closing checkpoint claiming an adopter but signed by any other key is forged."""
    keys = {name: generate_signing_key() for name in ("dead", "adopter", "a third emitter")}
    public = [write_keypair(key, tmp_path / name.replace(" ", "-"))[1] for name, key in keys.items()]
    dead = TrailChain(key=keys["dead"], policy_records=10)
    dead.log_many("2024-01-01T00:00:01Z", 5)
    adopter = TrailChain(key=keys["adopter"], policy_records=10)
    adopter.log("2024-01-01T00:01:00Z")
    adopter.checkpoint(ns("2024-01-01T00:02:00Z"), closed=True)
    dead.checkpoint(
        ns("2024-01-01T00:02:00Z"),
        closed=True,
        key=keys[signer],
        adopted_by={"chain_id": adopter.chain_id, "host_name": "web-2", "pid": 4242},
    )
    store(db, dead, adopter)
    report = check(db, public)
    theirs = [(f.kind, f.seq) for f in stranger.verify(db, public) if f.severity == "error"]
    if signer == "adopter":
        assert report.ok and not report.findings, [str(f) for f in report.findings]
        assert report.chains[dead.chain_id].extra["adopted_by"]["chain_id"] == adopter.chain_id
        assert theirs == []
    else:
        assert errors(report) == [("wrong_key", 5)], [str(f) for f in report.findings]
        assert f"the adopting chain {adopter.chain_id} names key {keys['adopter'].key_id}" in report.errors[0].detail
        assert theirs == [("wrong_key", 5)]
