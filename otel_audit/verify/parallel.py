"""Run the fast pass (:mod:`otel_audit.verify.ranges`) over every chain, in worker processes.

Verification is bound by CPU on both ends (PostgreSQL rendering rows, Python
hashing and comparing them), so it is split into ``(chain, seq range)`` tasks
checked by several processes, each with its own PostgreSQL backend.

Every worker reads in the *same* snapshot as the verifier's own connection
(``pg_export_snapshot`` / ``SET TRANSACTION SNAPSHOT``, as ``pg_dump --jobs``
does), so rows committed while verification runs are seen by all of them or by
none. The ranges of a chain are then joined: each range's first record must
be the one after the previous range's last and link to its hash, the first
range must start at seq 1 and link to the chain's genesis. A chain is
accepted only when all its ranges are clean and join; every other chain is
walked again in full by the caller.

Workers are forked when the process has a single thread (the CLI). In a
threaded process the automatic choice is one worker: forking could copy a lock
another thread holds, and spawning imports the caller's ``__main__`` module
again, a surprise an application calling the API should not get unasked. Asked
for several workers explicitly, a threaded process spawns them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from otel_audit.errors import DatabaseNotReady
from otel_audit.verify.ranges import SEQ_MAX, SEQ_MIN, ChainGroup, RangeResult, RangeTask, check_task

__all__ = ["CleanChain", "can_fork", "chain_heights", "default_workers", "join_ranges", "plan", "run_tasks"]

#: Ranges smaller than this are not worth a task of their own.
MIN_RANGE = 20_000
#: Tasks per worker: enough to even out ranges of different cost.
TASKS_PER_WORKER = 4
#: Chains per group task (keeps its query's list of chain ids short).
MAX_GROUP = 5_000


def default_workers() -> int:
    """One per CPU this process may run on (a container's limit, not the host's count), up to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, 8))


def chain_heights(conn: psycopg.Connection, chain_ids: Iterable[str]) -> dict[str, int]:
    """chain id -> highest seq column, for the chains that have rows (one index probe per chain).

    Only a hint for splitting: see :func:`plan`.
    """
    ids = list(chain_ids)
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT x.c::text, (SELECT max(seq) FROM audit_logs WHERE chain_id = x.c) "
        "FROM pg_catalog.unnest(%s::uuid[]) AS x(c)",
        (ids,),
    ).fetchall()
    return {chain_id: top for chain_id, top in rows if top is not None}


def plan(
    heights: Mapping[str, int],
    workers: int,
    watch: Callable[[str], frozenset[int]],
    starts: Mapping[str, int] | None = None,
) -> list[RangeTask | ChainGroup]:
    """Tasks of about ``total / (workers * TASKS_PER_WORKER)`` records each (at least ``MIN_RANGE``).

    A chain larger than that is split at fixed seq boundaries. The first range
    of a chain is open below and the last open above, so every row is in exactly
    one range whatever its seq column says; and the number of ranges per chain
    is capped, so a forged huge seq cannot explode the plan. Smaller chains are
    grouped, whole, up to the same size (and ``MAX_GROUP`` chains).

    ``starts`` gives the first seq of chains whose oldest records were archived and removed
    (default 1): their first range must start there, and only ``start..top`` is split.
    """
    starts = starts or {}
    heights = {c: top - starts.get(c, 1) + 1 for c, top in heights.items()}  # records, not the top seq
    total = sum(max(top, 1) for top in heights.values())
    size = max(MIN_RANGE, -(-total // (workers * TASKS_PER_WORKER)))
    cap = workers * TASKS_PER_WORKER
    tasks: list[RangeTask | ChainGroup] = []
    group: list[str] = []
    group_rows = 0

    def close_group() -> None:
        nonlocal group, group_rows
        if group:
            first = {c: starts[c] for c in group if starts.get(c, 1) != 1}
            tasks.append(ChainGroup(tuple(group), {c: w for c in group if (w := watch(c))}, first or None))
        group, group_rows = [], 0

    for chain_id, top in sorted(heights.items(), key=lambda item: -item[1]):
        if top <= size or workers == 1:
            group.append(chain_id)
            group_rows += max(top, 1)
            if group_rows >= size or len(group) >= MAX_GROUP:
                close_group()
            continue
        pieces = min(cap, -(-top // size))
        step = -(-top // pieces)
        chain_watch = watch(chain_id)
        start = starts.get(chain_id, 1)
        for k in range(pieces):
            lo = SEQ_MIN if k == 0 else start + k * step
            hi = SEQ_MAX if k == pieces - 1 else start + (k + 1) * step - 1
            tasks.append(
                RangeTask(
                    chain_id, k, lo, hi, start if k == 0 else lo, frozenset(s for s in chain_watch if lo <= s <= hi)
                )
            )
    close_group()
    return tasks


@dataclass
class CleanChain:
    """A chain proved intact by its ranges: what the full walk would have summarised."""

    records: int
    invalid: int
    first_timestamp: str | None
    last_seq: int
    last_hash: str
    last_timestamp: str | None
    observed: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    first_seq: int = 1


def join_ranges(
    results: list[RangeResult], genesis_hash: str | None, start: tuple[int, str | None] | None = None
) -> CleanChain | None:
    """The chain's summary when its ranges are all clean and join into one chain from genesis; else None.

    ``start`` is where a chain whose oldest records were archived goes on: its first seq and the hash its
    first record must link to (the archived head a retention checkpoint signed; None when the record
    before it is archived but not the last archived one, so its hash is not known here).
    """
    if genesis_hash is None or not all(r.clean for r in results):
        return None
    first_seq, link = start if start is not None else (1, genesis_hash)
    expected = first_seq
    records = invalid = 0
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    observed: dict[int, tuple[str, str | None]] = {}
    for r in sorted(results, key=lambda r: r.index):
        if r.last_seq is None:  # an empty range: the next one must still start where this one would have
            continue
        if r.first_seq != expected or (r.first_prev != link and (link is not None or records)):
            return None
        if records == 0:
            first_timestamp = r.first_timestamp
        records += r.rows
        invalid += r.invalid
        observed.update(r.observed)
        if r.last_hash is None:  # a non-empty range always has its last hash
            return None
        link, expected, last_timestamp = r.last_hash, r.last_seq + 1, r.last_timestamp
    if records == 0:
        return None
    return CleanChain(
        records,
        invalid,
        first_timestamp,
        expected - 1,
        link,  # type: ignore[arg-type]
        last_timestamp,
        observed,
        first_seq,
    )


def can_fork() -> bool:
    """Forking is safe only while this process runs a single thread: another thread may hold a lock
    the child would inherit held."""
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def run_tasks(conn: psycopg.Connection, tasks: list[RangeTask | ChainGroup], workers: int) -> Iterator[RangeResult]:
    """Results of ``tasks`` in completion order; in this process when ``workers`` is 1.

    ``conn`` must be in a transaction (its snapshot is the one every worker reads).
    Workers are forked when :func:`can_fork`, else spawned.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield from check_task(conn, task)
        return
    try:
        snapshot = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        raise DatabaseNotReady(
            f"this server cannot share the verification snapshot with worker processes ({exc}); "
            "verify in one process instead (otel-audit verify --workers 1, or VerifyOptions(workers=1))"
        ) from exc
    context = multiprocessing.get_context("fork" if can_fork() else "spawn")
    with context.Pool(
        min(workers, len(tasks)), initializer=_worker_start, initargs=(_conninfo(conn), snapshot)
    ) as pool:
        for results in pool.imap_unordered(_worker_check, tasks):
            yield from results


def _conninfo(conn: psycopg.Connection) -> str:
    """Everything needed to open another connection like ``conn`` (password included, unlike ``conn.info.dsn``)."""
    options: Mapping[str, str] = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
    return make_conninfo("", **options)


_worker_conn: psycopg.Connection | None = None
_worker_error: Exception | None = None


def _worker_start(conninfo: str, snapshot: str) -> None:
    # Never raise here: a Pool replaces a worker whose initializer fails, forever.
    # The error is raised by the worker's first task instead, and reaches the caller.
    global _worker_conn, _worker_error
    # A forked worker inherits the parent's signal handlers. A handler that does not exit (a server's
    # "stop" flag, a test runner's) would make the Pool's SIGTERM on terminate() a no-op, and the
    # caller would wait for ever joining a worker blocked on the task queue: restore the defaults.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the caller stops the pool
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        _worker_conn = conn
    except Exception as exc:  # re-raised in _worker_check
        _worker_error = exc


def _worker_check(task: RangeTask | ChainGroup) -> list[RangeResult]:
    if _worker_conn is None:
        raise _worker_error or RuntimeError("verification worker has no connection")
    return check_task(_worker_conn, task)
