"""The fast pass: ranges checked in worker processes, joined, and the full walk for anything in doubt.

Every tamper test runs in both modes already (the ``verify_mode`` fixture);
these tests pin what the fast pass itself promises: a clean trail is accepted
by it alone, with the same summary the full walk gives; the ranges join only
when they form one chain from genesis; and all workers read one snapshot.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import signal
import threading
from pathlib import Path

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus

from otel_audit.cli.main import main
from otel_audit.verify import VerifyOptions, parallel, ranges, verify_database
from otel_audit.verify.parallel import chain_heights, join_ranges, plan, run_tasks
from otel_audit.verify.ranges import SEQ_MAX, SEQ_MIN, ChainGroup, RangeResult, RangeTask
from otel_audit.verify.report import Kind
from tests.harness import App, rows

GENESIS = "g" * 64
# Values whose JSON rendering differs most easily between PostgreSQL and orjson: the fast pass must
# still accept them (else real trails would silently fall back to the slow full walk).
AWKWARD = {
    "audit.reason": 'quote " backslash \\ newline \n tab \t control \x01 del \x7f é ✓ 😀 </script>',
    "audit.changed_fields": ["dosage", "näme"],
    "audit.old_values": {"dosage": 1.5, "nested": [1, {"c": None}], "big": 12345678901234567890, "e": 1e-7},
    "client.address": "2001:db8::1",
    "user_agent.original": 'Mozilla/5.0 (X11; "quoted")',
}


def _trail(db: str, spool_dir: Path, chains: int = 2, records: int = 41) -> list[str]:
    for k in range(chains):
        app = App(db, spool_dir / str(k), service=f"svc-{k}")
        for i in range(records):
            app.log(**(AWKWARD if i % 10 == 3 else {}), n=i)
        app.log(_audit=True, **{"audit.result": "maybe"})  # stored flagged invalid
        assert app.close()
    return [r[0] for r in rows(db, "SELECT chain_id::text FROM audit_chains ORDER BY 1")]


@pytest.mark.storage
def test_a_clean_trail_is_accepted_by_the_fast_pass_with_the_full_walks_summary(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain_ids = _trail(db, spool_dir)
    monkeypatch.setattr(parallel, "MIN_RANGE", 4)
    with psycopg.connect(db) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        heights = chain_heights(conn, chain_ids)
        assert heights == dict.fromkeys(chain_ids, 42)
        tasks = plan(heights, 2, lambda chain_id: frozenset({1, 17, 42}))
        # 84 records over 2 workers x 4 tasks each: ranges of 11, so 4 per chain.
        assert sorted((t.chain_id, t.index) for t in tasks) == sorted((c, k) for c in chain_ids for k in range(4))
        results = list(run_tasks(conn, tasks, 2))
        genesis = dict(conn.execute("SELECT chain_id::text, genesis_hash FROM audit_chains").fetchall())
    assert all(r.clean for r in results), [r.why for r in results if not r.clean]
    for chain_id in chain_ids:
        clean = join_ranges([r for r in results if r.chain_id == chain_id], genesis[chain_id])
        assert (
            clean is not None and clean.records == 42 and clean.invalid == 5
        )  # 4 AWKWARD (the big integer) + 1 bad result
        assert sorted(clean.observed) == [1, 17, 42]

    with psycopg.connect(db) as conn:
        sequential = verify_database(conn, VerifyOptions(workers=1))
        split = verify_database(conn, VerifyOptions(workers=2))
    assert sequential.ok and split.ok and sequential.records == split.records == 84
    assert sequential.chains == split.chains
    assert [str(f) for f in sequential.findings] == [str(f) for f in split.findings]


def _range(index: int, first: int, last: int, prev: str, head: str, *, clean: bool = True) -> RangeResult:
    return RangeResult(
        "c",
        index,
        clean,
        rows=last - first + 1,
        first_seq=first,
        first_prev=prev,
        first_timestamp=f"t{first}",
        last_seq=last,
        last_hash=head,
        last_timestamp=f"t{last}",
    )


def test_ranges_join_only_into_one_chain_from_genesis() -> None:
    a, b, c = _range(0, 1, 4, GENESIS, "h4"), _range(1, 5, 8, "h4", "h8"), _range(2, 9, 9, "h8", "h9")
    joined = join_ranges([c, a, b], GENESIS)
    assert joined is not None and (joined.records, joined.last_seq, joined.last_hash) == (9, 9, "h9")
    assert (joined.first_timestamp, joined.last_timestamp) == ("t1", "t9")
    empty = RangeResult("c", 1, True)  # no rows in the middle range: fine if the neighbours meet
    assert join_ranges([a, empty, _range(2, 5, 8, "h4", "h8")], GENESIS) is not None

    assert join_ranges([a, b, c], None) is None  # no trusted genesis: the full walk says why
    assert join_ranges([a, b, c], "other") is None  # first record does not link to genesis
    assert join_ranges([a, _range(1, 6, 8, "h4", "h8"), c], GENESIS) is None  # gap
    assert join_ranges([a, _range(1, 5, 8, "hX", "h8"), c], GENESIS) is None  # broken link across ranges
    assert join_ranges([RangeResult("c", 0, True), b, c], GENESIS) is None  # records before 5 missing
    assert join_ranges([a, _range(1, 5, 8, "h4", "h8", clean=False), c], GENESIS) is None
    assert join_ranges([RangeResult("c", 0, True)], GENESIS) is None  # no rows at all


def test_the_plan_covers_every_seq_and_caps_forged_heights() -> None:
    tasks = plan({"a": 10**15, "b": 3}, 2, lambda chain_id: frozenset({2}))
    a = [t for t in tasks if isinstance(t, RangeTask)]
    assert {t.chain_id for t in a} == {"a"}
    assert len(a) == 2 * parallel.TASKS_PER_WORKER  # a forged huge seq does not explode the plan
    assert a[0].lo == SEQ_MIN and a[-1].hi == SEQ_MAX
    assert all(x.hi + 1 == y.lo for x, y in itertools.pairwise(a))
    assert a[0].watch == {2} and not any(t.watch for t in a[1:])
    (b,) = [t for t in tasks if isinstance(t, ChainGroup)]
    assert b == ChainGroup(("b",), {"b": frozenset({2})})


def test_small_chains_are_grouped_and_one_worker_gets_one_group() -> None:
    heights = {f"c{i}": 10 for i in range(7)}
    assert plan(heights, 1, lambda c: frozenset()) == [ChainGroup(tuple(sorted(heights)), {})]
    groups = plan({**heights, "big": 100_000}, 2, lambda c: frozenset())
    assert sum(isinstance(t, RangeTask) for t in groups) == 5  # 100,007 records / 8 tasks: ranges of 20,000
    (group,) = [t for t in groups if isinstance(t, ChainGroup)]
    assert sorted(group.chain_ids) == sorted(heights)


@pytest.mark.storage
def test_a_dirty_chain_in_a_group_does_not_stop_the_next_one(db: str, spool_dir: Path) -> None:
    chain_ids = _trail(db, spool_dir, chains=3, records=5)
    middle = chain_ids[1]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_logs WHERE chain_id = %s AND seq = 3", (middle,))
    with psycopg.connect(db) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        tasks = plan(chain_heights(conn, chain_ids), 1, lambda c: frozenset())
        assert [type(t) for t in tasks] == [ChainGroup]
        results = {r.chain_id: r for r in run_tasks(conn, tasks, 1)}
    assert {c: r.clean for c, r in results.items()} == {c: c != middle for c in chain_ids}
    assert results[middle].why == "seq 4 where 3 was next"
    assert all(results[c].rows == 6 for c in chain_ids if c != middle)


UNREAD = 6_000


@pytest.mark.storage
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-rows", "copy"])
def test_a_dirty_range_leaves_the_snapshot_readable_for_the_next_one(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    """A range stops checking at its first doubt but reads its remaining rows: closing its query early would
    cancel it, and the cancel would abort the snapshot transaction every later range is read in. Both
    ways of reading (rows in chunks with libpq 17+, binary COPY before) keep that promise."""
    if chunked and not ranges.chunked_rows_supported():
        pytest.skip(f"libpq {psycopg.pq.version()} cannot deliver rows in chunks (17 or later can)")
    monkeypatch.setattr(ranges, "chunked_rows_supported", lambda: chunked)
    # Thousands of rows left when the range turns dirty: more than the socket buffers hold, so the
    # server is still sending (a cancel would reach a running query).
    (chain_id,) = _trail(db, spool_dir, chains=1, records=UNREAD)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_logs SET actor_id = 'mallory' WHERE chain_id = %s AND seq = 2", (chain_id,))
    tasks = [RangeTask(chain_id, 0, SEQ_MIN, UNREAD - 20, 1), RangeTask(chain_id, 1, UNREAD - 19, SEQ_MAX, UNREAD - 19)]
    with psycopg.connect(db) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.execute("SELECT 1")  # the snapshot transaction
        dirty, clean = run_tasks(conn, tasks, 1)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    assert not dirty.clean and dirty.why.startswith("seq 2: a column differs")
    assert clean.clean and (clean.first_seq, clean.last_seq, clean.rows) == (UNREAD - 19, UNREAD + 1, 21)


@pytest.mark.storage
def test_all_workers_read_the_verifiers_snapshot(db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (chain_id,) = _trail(db, spool_dir, chains=1)
    monkeypatch.setattr(parallel, "MIN_RANGE", 4)
    with psycopg.connect(db) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        heights = chain_heights(conn, [chain_id])  # the snapshot is taken here
        # A row deleted afterwards (by a superuser) must still be there for every worker.
        with psycopg.connect(db, autocommit=True) as other:
            other.execute("SET session_replication_role = replica")
            other.execute("DELETE FROM audit_logs WHERE chain_id = %s AND seq = 21", (chain_id,))
        results = list(run_tasks(conn, plan(heights, 2, lambda c: frozenset()), 2))
    assert all(r.clean for r in results) and sum(r.rows for r in results) == 42
    with psycopg.connect(db) as conn:  # a new verification sees it, and says what it is
        report = verify_database(conn, VerifyOptions(workers=2))
    assert [(f.kind.value, f.seq) for f in report.errors] == [("missing", 21)]


@pytest.mark.storage
@pytest.mark.parametrize("autocommit", [True, False])
def test_verification_leaves_the_callers_connection_as_it_found_it(
    db: str, spool_dir: Path, autocommit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trail(db, spool_dir, chains=1, records=3)
    monkeypatch.setattr(parallel, "MIN_RANGE", 1)
    with psycopg.connect(db, autocommit=autocommit) as conn:
        assert verify_database(conn, VerifyOptions(workers=2)).ok
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert (conn.isolation_level, conn.read_only) == (None, None)
        conn.execute("CREATE TEMP TABLE still_writable (x int)")  # not left read-only


@pytest.mark.storage
def test_verify_one_chain_from_the_cli(db: str, spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _trail(db, spool_dir, records=5)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM audit_logs WHERE chain_id = %s AND seq = 2", (second,))
    capsys.readouterr()
    assert main(["verify", "--dsn", db, "--chain", first]) == 0
    assert "INTACT: 6 records in 1 chain(s)" in capsys.readouterr().out
    assert main(["verify", "--dsn", db, "--chain", second, "--workers", "2", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(f["kind"], f["chain_id"], f["seq"]) for f in report["findings"] if f["severity"] == "error"] == [
        ("missing", second, 2)
    ]


@pytest.mark.storage
def test_a_worker_that_cannot_connect_fails_the_verification_with_the_database_error(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trail(db, spool_dir, chains=2, records=3)
    monkeypatch.setattr(parallel, "MIN_RANGE", 1)  # several tasks, so workers start
    monkeypatch.setattr(parallel, "_conninfo", lambda conn: "host=127.0.0.1 port=1 connect_timeout=2")
    with psycopg.connect(db) as conn, pytest.raises(psycopg.OperationalError):
        verify_database(conn, VerifyOptions(workers=2))


@pytest.mark.storage
def test_a_parents_sigterm_handler_does_not_keep_workers_alive(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI hung here for 90 minutes: a SIGTERM handler that does not exit, inherited by forked workers,
    turned the Pool's terminate() into a no-op and its join into a wait for ever."""
    _trail(db, spool_dir, chains=2, records=3)
    monkeypatch.setattr(parallel, "MIN_RANGE", 1)
    monkeypatch.setattr(parallel, "_conninfo", lambda conn: "host=127.0.0.1 port=1 connect_timeout=2")

    def too_long(signum: int, frame: object) -> None:
        raise TimeoutError("the verification did not return: its workers outlived terminate()")

    previous_term = signal.signal(signal.SIGTERM, lambda *_: None)  # a server's "stop" flag, say
    previous_alarm = signal.signal(signal.SIGALRM, too_long)
    try:
        for _ in range(5):  # the hang was a race between the failing workers and terminate()
            signal.alarm(60)
            with psycopg.connect(db) as conn, pytest.raises(psycopg.OperationalError):
                verify_database(conn, VerifyOptions(workers=2))
            signal.alarm(0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGALRM, previous_alarm)
        for child in multiprocessing.active_children():
            child.kill()


@pytest.mark.storage
def test_the_progress_bar_starts_no_thread(db: str, spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _trail(db, spool_dir, chains=2, records=10)
    threads = threading.active_count()
    with psycopg.connect(db) as conn:
        report = verify_database(conn, VerifyOptions(workers=2, progress=True))
    assert report.ok and report.records == 22
    assert threading.active_count() == threads  # a monitor thread would make forking workers unsafe
    assert "verifying:" in capsys.readouterr().err


@pytest.mark.storage
def test_a_server_that_cannot_export_the_snapshot_gets_a_clear_error(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _trail(db, spool_dir, chains=2, records=3)
    monkeypatch.setattr(parallel, "MIN_RANGE", 1)
    with psycopg.connect(db) as conn:
        conn.execute("SELECT 1")
        conn.execute("SAVEPOINT inside")  # snapshots cannot be exported from a subtransaction
        with pytest.raises(LookupError, match="--workers 1"):
            verify_database(conn, VerifyOptions(workers=2))


@pytest.mark.storage
@pytest.mark.parametrize("autocommit", [True, False])
def test_a_connection_lost_mid_verification_raises_its_own_error(db: str, spool_dir: Path, autocommit: bool) -> None:
    _trail(db, spool_dir, chains=1, records=3)

    def lose_connection(conn: psycopg.Connection, report: object) -> None:
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with psycopg.connect(db, autocommit=autocommit) as conn, pytest.raises(psycopg.OperationalError):
        verify_database(conn, VerifyOptions(extra_checks=[lose_connection]))


@pytest.mark.storage
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")), max_size=8))
def test_postgresql_and_orjson_render_any_text_alike(db: str, values: list[str]) -> None:
    """The fast pass compares the server's JSON rendering of text columns with orjson's bytes: any
    text the two rendered differently would send every chain holding it to the slow full walk."""
    with psycopg.connect(db) as conn:
        rendered = conn.execute("SELECT pg_catalog.array_to_json(%s::text[])::text", (values,)).fetchone()[0]
    assert rendered.encode() == orjson.dumps(values)


@pytest.mark.storage
def test_records_committed_during_verification_are_not_half_seen(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain that starts while verification runs (its registry row and records committed between
    two of the verifier's queries) is seen entirely or not at all, never as an unregistered chain."""
    from otel_audit.verify import database

    _trail(db, spool_dir, chains=1, records=5)
    load_quarantine = database._load_quarantine

    def a_new_chain_meanwhile(conn: psycopg.Connection, chain_ids: list[str] | None) -> dict:
        app = App(db, spool_dir / "late", service="late")
        for _ in range(3):
            app.log()
        assert app.close()
        return load_quarantine(conn, chain_ids)

    monkeypatch.setattr(database, "_load_quarantine", a_new_chain_meanwhile)
    with psycopg.connect(db) as conn:
        report = verify_database(conn, VerifyOptions(workers=2))
    assert report.ok and [f.kind for f in report.findings] == [Kind.INVALID_RECORDS], [str(f) for f in report.findings]
    assert report.records == 6 and len(report.chains) == 1
    monkeypatch.setattr(database, "_load_quarantine", load_quarantine)
    with psycopg.connect(db) as conn:
        assert verify_database(conn).records == 9


@pytest.mark.storage
def test_verifying_while_the_application_logs_finds_nothing(
    db: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "MIN_RANGE", 50)
    app = App(db, spool_dir)
    stop = threading.Event()

    def keep_logging() -> None:
        while not stop.is_set():
            app.log()

    writer = threading.Thread(target=keep_logging)
    writer.start()
    try:
        counts = []
        while len(counts) < 4:
            with psycopg.connect(db) as conn:
                report = verify_database(conn, VerifyOptions(workers=2))
            assert report.ok and not report.errors, [str(f) for f in report.findings]
            counts.append(report.records)
    finally:
        stop.set()
        writer.join()
        assert app.close()
    assert counts == sorted(counts) and counts[-1] > 0
