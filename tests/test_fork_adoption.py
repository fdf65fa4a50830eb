"""Forked children anchor chains of their own, and a dead child's chain is closed by its adopter (issue 9, item 4).

A child forked after ``configure()`` starts its own chain (its genesis names the
parent's chain) with its own checkpointer thread. When it ends with
``os._exit`` (multiprocessing's fork workers, ``os.fork`` then ``os._exit``) it
leaves its spool; the process that adopts the spool replays it and signs a
closing checkpoint saying so (``adopted_by``). The attacks act as a database
superuser on real PostgreSQL and must exit 1 with ``--trusted-key``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from otel_audit.cli.main import main
from tests.harness import App, exit_code, rows
from tests.test_anchor_policy import append_forged
from tests.test_checkpoints import Keys, anchored_app, check, errors, make_keys, tamper

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def witness_dir(tmp_path: Path) -> Path:
    return tmp_path / "witness"


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def children(dsn: str) -> dict[str, dict]:
    """chain id -> genesis of every chain started by a forked child."""
    out = {}
    for chain_id, genesis in rows(dsn, "SELECT chain_id::text, genesis FROM audit_chains"):
        doc = orjson.loads(bytes(genesis))
        if "parent" in doc:
            out[chain_id] = doc
    return out


def closing(dsn: str, chain_id: str) -> dict | None:
    found = rows(dsn, "SELECT body FROM audit_checkpoints WHERE chain_id = %s AND closed", (chain_id,))
    return orjson.loads(bytes(found[0][0])) if found else None


def dead_child_trail(db: str, spool_dir: Path, keys: Keys, witness: Path, records: int = 12) -> tuple[str, str]:
    """A parent and a child that logs ``records`` records and ends with os._exit (no shutdown)."""
    app = anchored_app(db, spool_dir, keys, witness, checkpoint_records=5)
    app.log()
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(records):
                app.log(n=i)
        finally:
            os._exit(0)
    assert exit_code(pid) == 0
    app.audit.pipeline.sink.adopt_now()  # as a supervisor that reaped the child would
    wait_for(lambda: any(closing(db, c) for c in children(db)))
    app.log()
    assert app.close()
    (child,) = children(db).keys()
    return app.audit.chain_id, child


def test_a_child_that_exits_with_os_exit_is_closed_by_its_adopter(
    db: str, spool_dir: Path, keys: Keys, witness_dir: Path
) -> None:
    parent, child = dead_child_trail(db, spool_dir, keys, witness_dir)
    genesis = children(db)[child]
    assert genesis["parent"] == parent and genesis["checkpoints"]["records"] == 5
    cp = closing(db, child)
    assert cp["seq"] == 12 and cp["adopted_by"] == {
        "chain_id": parent,
        "host_name": cp["adopted_by"]["host_name"],
        "pid": os.getpid(),
    }
    # Checkpointed by its own thread while it lived (12 records are more than its policy lets go unanchored,
    # 2 x 5, so at least one checkpoint of its own was spooled), then closed by the adopter.
    own = rows(db, "SELECT n, seq FROM audit_checkpoints WHERE chain_id = %s AND NOT closed", (child,))
    assert own and max(seq for _, seq in own) >= 12 - 2 * 5
    report = check(db, [keys.public], witness_dir)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
    summary = report.chains[child].to_dict()
    assert summary["closed"] and summary["adopted_by"]["chain_id"] == parent and summary["parent"] == parent
    assert main(["verify", "--dsn", db, "--trusted-key", str(keys.public), "--witness", str(witness_dir)]) == 0


@pytest.mark.parametrize("attack", ["delete", "rewrite", "append", "delete-chain"])
def test_tampering_with_a_dead_childs_chain_is_detected(
    db: str, spool_dir: Path, keys: Keys, witness_dir: Path, attack: str
) -> None:
    from tests.test_checkpoints import recompute_from

    _, child = dead_child_trail(db, spool_dir, keys, witness_dir)
    witness = None
    if attack == "delete":
        tamper(db, f"DELETE FROM audit_logs WHERE chain_id = '{child}' AND seq > 9")
        expected = [("truncated", 10)]
    elif attack == "rewrite":
        _recompute_chain(db, child, 7, recompute_from)
        expected = "rewritten"
    elif attack == "append":
        append_forged(db, child, 1)
        expected = [("inserted", 13)]
    else:
        tamper(
            db,
            f"DELETE FROM audit_logs WHERE chain_id = '{child}'",
            f"DELETE FROM audit_chains WHERE chain_id = '{child}'",
            f"DELETE FROM audit_checkpoints WHERE chain_id = '{child}'",
        )
        expected = [("chain_deleted", None)]
        witness = witness_dir  # with nothing left in PostgreSQL, only the witness remembers the chain
    report = check(db, [keys.public], witness)
    if isinstance(expected, str):
        assert {kind for kind, _ in errors(report)} == {expected}, [str(f) for f in report.findings]
    else:
        assert errors(report) == expected, [str(f) for f in report.findings]
    argv = ["verify", "--dsn", db, "--trusted-key", str(keys.public)]
    assert main(argv + (["--witness", str(witness)] if witness else [])) == 1


def _recompute_chain(db: str, chain_id: str, start: int, recompute_from) -> None:
    """recompute_from() works on the only chain; run it with the child's chain as the only one visible."""
    import tests.test_checkpoints as tc

    original = tc.chain_of
    tc.chain_of = lambda dsn: chain_id
    try:
        recompute_from(db, start, lambda doc: doc.update(resource_id="patient-000"))
    finally:
        tc.chain_of = original


def test_prefork_multiprocessing_and_os_exit_children_verify_clean(db: str, tmp_path: Path, keys: Keys) -> None:
    """A gunicorn-style pre-fork parent, multiprocessing fork workers and an os.fork/os._exit child."""
    witness = tmp_path / "witness"
    script = textwrap.dedent(
        """
        import logging, multiprocessing, os, sys, time
        import otel_audit
        audit = otel_audit.configure(dsn=sys.argv[1], service_name="web", spool_dir=sys.argv[2],
                                     checkpoint_records=4, checkpoint_interval=0.5)
        log = logging.getLogger("web")
        def work(n):
            for i in range(6):
                log.info("served", extra={"audit.action": "read", "audit.actor.id": f"w{os.getpid()}",
                         "audit.resource.type": "page", "audit.resource.id": f"{n}-{i}", "audit.result": "success"})
            return os.getpid()
        # Pre-fork workers (gunicorn): the parent audits nothing; one worker shuts down cleanly, one is killed by
        # os._exit after its work.
        pids = []
        for clean in (True, False):
            pid = os.fork()
            if pid == 0:
                work(0)
                if clean:
                    audit.shutdown(timeout=30)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        # multiprocessing with the fork start method: workers end with os._exit.
        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert len(pool.map(work, range(4))) == 4
            pool.close()
            pool.join()
        time.sleep(1.2)  # an idle period: the parent's interval checkpoints
        work(99)
        audit.pipeline.sink.adopt_now()
        sys.exit(0 if audit.shutdown(timeout=60) else 3)
        """
    )
    spool = tmp_path / "spool"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_SIGNING_KEY": str(keys.private),
        "OTEL_AUDIT_WITNESS_DIR": str(witness),
    }
    proc = subprocess.run([sys.executable, "-c", script, db, str(spool)], env=env, timeout=240)
    assert proc.returncode == 0
    # Whatever was not adopted before the parent stopped is adopted by the next process on the spool.
    app = App(db, spool, signing_key=str(keys.private), witness_dir=witness)
    wait_for(lambda: all(closing(db, c) for c in children(db)))
    assert app.close()
    kids = children(db)
    assert len(kids) >= 3  # the two pre-fork workers and at least one pool worker
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_audit",
            "verify",
            "--dsn",
            db,
            "--trusted-key",
            str(keys.public),
            "--witness",
            str(witness),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout, result.stdout
    adopted = [c for c in kids if "adopted_by" in (closing(db, c) or {})]
    assert len(adopted) >= 2  # the os._exit workers: closed by whoever adopted their spools


def test_every_otel_audit_module_is_imported_by_the_callers_thread(db: str, tmp_path: Path, keys: Keys) -> None:
    """A process forked while one of its threads is importing a module inherits that module's import lock,
    held by a thread the child does not have: every later import of the module in the child hangs. A
    pre-fork worker's shutdown hung so, because the sink's thread imported otel_audit.status lazily on its
    first status write. Everything otel-audit's threads use must be imported on the caller's thread
    (by configure() or the logging call), never first by one of otel-audit's own threads."""
    script = textwrap.dedent(
        """
        import logging, sys, threading, time

        first = {}

        class Spy:  # notes which thread imports each otel_audit module first
            def find_spec(self, name, path=None, target=None):
                if name.startswith("otel_audit"):
                    first.setdefault(name, threading.current_thread().name)
                return None

        sys.meta_path.insert(0, Spy())
        import otel_audit
        audit = otel_audit.configure(dsn=sys.argv[1], service_name="web", spool_dir=sys.argv[2],
                                     checkpoint_records=3, checkpoint_interval=0.3)
        log = logging.getLogger("web")
        for i in range(10):
            log.info("served", extra={"audit.action": "read", "audit.actor.id": "u", "audit.resource.type": "page",
                                      "audit.resource.id": str(i), "audit.result": "success"})
        time.sleep(2.5)  # status writes (every second), interval checkpoints, witness copies
        assert audit.shutdown(timeout=30)
        print(" ".join(f"{m}({t})" for m, t in sorted(first.items()) if t != "MainThread"))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_AUDIT_SIGNING_KEY": str(keys.private),
        "OTEL_AUDIT_WITNESS_DIR": str(tmp_path / "witness"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, db, str(tmp_path / "spool")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"first imported by otel-audit's own threads: {proc.stdout}"
