"""The PostgreSQL sink: drains spools into ``audit_logs`` on one background thread.

Each pass reads what accumulated in a spool since the last commit and writes
it in one transaction with ``COPY`` (group commit: the slower the database,
the larger the batch). A batch is committed before its spool space is
released, so a crash anywhere leaves the records in the spool; the replay
skips records PostgreSQL already has (same chain, sequence number and hash),
and every insert is ``ON CONFLICT DO NOTHING`` on the partition's unique
``(chain_id, seq)`` index (a replayed record has the same sealed timestamp, so
it is routed to the partition that holds it), so nothing is written twice.

The sink also creates the coming months' partitions of ``audit_logs`` when it
connects and every hour (:mod:`otel_audit.sink.partitions`); if that fails
(an old schema, a lock it could not get) rows still go to the default
partition.

Besides the spool of its own chain, a sink can drain a *relay* spool: records
sealed by other emitters (of any number of chains) that the OTLP ingest
received with their seal and verified. They are stored under their original
chain; a record that is already there (its emitter's own sink was faster) is a
no-op, a *different* record at the same position is quarantined.

Failures are sorted into three kinds:

* *transient* (connection lost, server shutting down, disk full, missing
  table, lock timeouts, ...): the batch stays in the spool and is retried
  with exponential backoff until it goes through. Nothing is dropped.
* *configuration* (the role may not insert or log in, SQLSTATE 42501, 28000, 28P01, or
  the database does not exist): retried like a transient failure, since a GRANT or a
  corrected setting fixes it without a restart, but reported as a configuration error
  (logged at ERROR, at most once a minute, and in ``otel-audit status``), not as an outage.
* *record-level* (SQLSTATE classes 22 data exception, 23 integrity violation,
  54 program limit): the batch is bisected until the offending records are
  isolated; those are written to ``audit_quarantine`` with PostgreSQL's
  reason, and the rest of the batch proceeds. Never retried forever, never
  dropped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

from otel_audit.core.chain import KIND_CHECKPOINT, KIND_GENESIS, KIND_RECORD, genesis_hash
from otel_audit.core.ids import new_chain_id
from otel_audit.core.record import record_seq
from otel_audit.errors import AuditError
from otel_audit.sink.checkpoints import store_checkpoints
from otel_audit.sink.partitions import ensure_partitions
from otel_audit.sink.rows import (
    CONFLICTING_STAGED,
    CREATE_STAGE,
    INSERT_CHAINS,
    INSERT_DELIVERED_CHAINS,
    PROJECT_STAGE,
    STAGE_TABLE,
)
from otel_audit.spool.frames import KIND_DELIVERED_GENESIS, Frame, parse_delivered_genesis
from otel_audit.spool.spool import ChainSpool, SpoolConfig, SpoolPosition, list_chain_dirs
from otel_audit.stats import PipelineStats

__all__ = ["PostgresSink", "connect", "database_identity", "describe_database", "same_database", "target_fingerprint"]

_log = logging.getLogger("otel_audit.sink")

_COPY_STAGE = f"COPY {STAGE_TABLE} (ord, hash, canonical) FROM STDIN (FORMAT BINARY)"
# PostgreSQL's binary COPY format: signature, flags, header extension length; per row the
# field count and each field as length + bytes; a field count of -1 ends the data.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_STAGE_ROW_HEAD = struct.Struct("!hiiI")  # 3 fields; ord: length 4, value; hash: length (32)
_FIELD_LENGTH = struct.Struct("!I")


def stage_copy_data(records: list[tuple[bytes, bytes]]) -> bytes:
    """The stage rows ``(ord, hash, canonical)`` of ``records`` as one binary COPY stream.

    Built here rather than with ``Copy.write_row``, which dumps every value through
    psycopg's adapters: this runs on the sink thread, which shares the GIL with the
    application's logging threads, and costs a third as much per record.
    """
    parts = [_COPY_HEADER]
    append = parts.append
    row_head, field_length = _STAGE_ROW_HEAD.pack, _FIELD_LENGTH.pack
    for ord_, (canonical, digest) in enumerate(records):
        append(row_head(3, 4, ord_, len(digest)))
        append(digest)
        append(field_length(len(canonical)))
        append(canonical)
    append(_COPY_TRAILER)
    return b"".join(parts)


# What is already stored in a range of one chain. Exact (seq, hash) pairs, not
# max(seq): rows of a chain can also arrive through the OTLP ingest, out of
# order, so "everything below the highest stored seq is there" does not hold.
_STORED = """
SELECT seq, hash FROM audit_logs WHERE chain_id = %(c)s AND seq BETWEEN %(lo)s AND %(hi)s
UNION ALL
SELECT seq, hash FROM audit_quarantine WHERE chain_id = %(c)s AND seq BETWEEN %(lo)s AND %(hi)s
"""

#: Seconds between checks that the coming months' partitions exist.
PARTITION_CHECK_INTERVAL = 3600.0

#: Seconds between two reports of the same configuration error (it is retried meanwhile).
CONFIGURATION_REPORT_INTERVAL = 60.0

#: SQLSTATE classes that blame the records rather than the server.
_RECORD_LEVEL_CLASSES = ("22", "23", "54")


def connect(dsn: str, *, application_name: str = "otel-audit", connect_timeout: int = 5) -> psycopg.Connection:
    """Open an autocommit connection with keepalives (a dead server is noticed in ~25 s)."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        application_name=application_name,
        connect_timeout=connect_timeout,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


def target_fingerprint(dsn: str) -> str:
    """Identify the destination database without its password.

    A spool left by a dead process is only replayed by a process writing to
    the same database (host, port, database, user and options such as
    ``search_path``), never into another one.
    """
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params.pop("password", None)
    for key, env in (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"), ("user", "PGUSER")):
        params.setdefault(key, os.environ.get(env, ""))
    relevant = {k: str(params.get(k, "")) for k in ("host", "hostaddr", "port", "dbname", "user", "options")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:32]


# Which database a connection reached, whatever the DSN said: the cluster's system identifier
# (shared by its physical replicas), the database's oid and name, and the schema that holds
# (or would hold) the audit tables.
_IDENTITY = """
SELECT (SELECT system_identifier FROM pg_control_system())::text, d.oid::bigint, d.datname,
       coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass('audit_logs')), current_schema())
FROM pg_database d WHERE d.datname = current_database()
"""
_IDENTITY_KEYS = ("system_identifier", "database_oid", "schema")


def database_identity(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The identity of the database ``conn`` writes to, or ``None`` if the role may not read it.

    Spools are tied to it rather than to the DSN string, so that records spooled under
    one spelling of a DSN (``localhost`` or ``127.0.0.1``, another user, a URL or
    ``key=value`` form) are replayed by a process that reaches the same database under
    another. ``pg_control_system()`` is executable by every role unless revoked.
    """
    try:
        row = conn.execute(_IDENTITY).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    if row is None or row[0] is None:
        return None
    sysid, oid, name, schema = row
    return {"system_identifier": str(sysid), "database_oid": int(oid), "database": name, "schema": schema}


def same_database(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return bool(a and b) and all(a.get(k) == b.get(k) for k in _IDENTITY_KEYS)  # type: ignore[union-attr]


def describe_database(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "an unknown database"
    return (
        f"database {identity.get('database')} (oid {identity.get('database_oid')}, schema "
        f"{identity.get('schema')}) of the cluster with system identifier {identity.get('system_identifier')}"
    )


def redacted_dsn(dsn: str) -> str:
    """``dsn`` without its password, for messages and ``meta.json``."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(a DSN that does not parse)"
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **params)


class _Transient(Exception):
    """The database cannot take the batch now; retry later."""


class _Misconfigured(_Transient):
    """The database refuses for a reason retrying will not fix: the role may not write (or log
    in), the database does not exist. Still retried (the records stay in the spool and are
    written once a GRANT or a corrected setting takes effect), but reported as the
    configuration error it is, loudly, not as an outage."""


#: SQLSTATEs of a configuration error: insufficient_privilege, invalid_authorization_specification,
#: invalid_password, invalid_catalog_name (no such database).
_CONFIGURATION_STATES = ("42501", "28000", "28P01", "3D000")
#: The same refusals at connection time, where libpq reports no SQLSTATE: its message.
_CONFIGURATION_TEXTS = (
    "password authentication failed",
    "does not exist",  # role "x" does not exist, database "x" does not exist
    "no pg_hba.conf entry",
    "permission denied for database",
    "is not permitted to log in",
)


def _failure(exc: BaseException) -> _Transient:
    """The retryable failure ``exc`` stands for: :class:`_Misconfigured` or :class:`_Transient`."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc)
    if state in _CONFIGURATION_STATES or (
        state is None and "FATAL" in text and any(t in text for t in _CONFIGURATION_TEXTS)
    ):
        return _Misconfigured(_describe(exc))
    return _Transient(_describe(exc))


@dataclass
class _Source:
    spool: ChainSpool
    committed: SpoolPosition
    # False: part of the next batch may already be stored (an earlier process, a
    # lost COMMIT acknowledgement): ask the database before writing it.
    in_sync: bool
    relay: bool = False  # holds records of other emitters' chains (see the module docstring)
    records_done: int = 0
    records_passed: int = 0  # record frames committed or found stored already (the spool's record count so far)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Batch:
    records: list[tuple[bytes, bytes]]  # (canonical bytes, raw SHA-256 digest)
    chains: list[dict[str, Any]]  # INSERT_CHAINS parameters
    checkpoints: list[tuple[bytes, bytes]]
    end: SpoolPosition
    record_frames: int = 0  # before the records already stored were left out


class PostgresSink:
    """Writes sealed frames from spools to PostgreSQL. Thread-safe entry points:
    :meth:`wake`, :meth:`wait_committed`, :meth:`flush`, :meth:`close`."""

    def __init__(
        self,
        dsn: str,
        spool_config: SpoolConfig,
        *,
        stats: PipelineStats | None = None,
        batch_records: int = 10_000,
        batch_bytes: int = 32 * 1024 * 1024,
        poll_interval: float = 0.05,
        linger: float = 0.0,
        retry_initial: float = 0.1,
        retry_max: float = 10.0,
        adopt_orphans: bool = True,
        adopt_interval: float = 30.0,
        application_name: str = "otel-audit-sink",
        checkpoint_handler: Callable[[list[tuple[bytes, bytes]], psycopg.Connection], None] | None = None,
        after_commit: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
        close_adopted: Callable[[ChainSpool, dict[str, Any]], list[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        # Imported here, on the thread that builds the sink, never first on the sink's own thread: a
        # process forked while another thread is importing a module inherits that module's import lock
        # held by a thread that does not exist in the child, and every later import of it there hangs
        # (a forked worker's shutdown hung exactly so). status imports this module, hence not at the top.
        from otel_audit.status import write_process_status

        self._write_process_status = write_process_status

        self.dsn = dsn
        self.spool_config = spool_config
        self.target = target_fingerprint(dsn)
        self.stats = stats or PipelineStats()
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.poll_interval = poll_interval
        self.linger = linger
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.adopt_orphans = adopt_orphans
        self.adopt_interval = adopt_interval
        self.application_name = application_name
        # Checkpoint frames are always stored (a replayed spool may hold some even when
        # this process signs none); a custom handler replaces the default one.
        self.checkpoint_handler = checkpoint_handler or store_checkpoints
        self.after_commit = after_commit
        # Called once a dead emitter's spool is replayed (with what the replay saw): returns the
        # checkpoint frames that close its chain ("adopted, not closed by its owner"), stored here.
        self.close_adopted = close_adopted
        self._conn: psycopg.Connection | None = None
        self._own: _Source | None = None
        self._relay: _Source | None = None
        self._sources: list[_Source] = []
        self._wake = threading.Event()
        self._committed = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._retry_delay = retry_initial
        self._next_adopt = 0.0
        self._status_written = 0.0
        self._next_partitions = 0.0  # monotonic time of the next partition check
        self.identity: dict[str, Any] | None = None  # of the database reached (see database_identity)
        self._identity_checked = False
        self._next_config_report = 0.0  # monotonic time from which a configuration error is logged again
        self._failures = 0  # write attempts that failed (close() stops waiting after some)
        self._release_lock = threading.Lock()
        self._release_on_stop = False  # close() gave up waiting for the thread: it releases
        self._thread_done = False
        self._released = False

    # ------------------------------------------------------------------ lifecycle
    def open_spool(self, chain_id: str) -> ChainSpool:
        spool = ChainSpool.create(
            self.spool_config, chain_id, self.target, database=self.identity, dsn=redacted_dsn(self.dsn)
        )
        self._own = _Source(spool, spool.start(), in_sync=True)
        self._sources.insert(0, self._own)
        return spool

    def open_relay_spool(self) -> ChainSpool:
        """A spool for records sealed elsewhere (the OTLP ingest); drained like the own one."""
        if self._relay is not None:
            return self._relay.spool
        spool = ChainSpool.create(
            self.spool_config,
            new_chain_id(),
            self.target,
            relay=True,
            database=self.identity,
            dsn=redacted_dsn(self.dsn),
        )
        self._relay = _Source(spool, spool.start(), in_sync=True, relay=True)
        self._sources.insert(1 if self._own is not None else 0, self._relay)
        self._wake.set()
        return spool

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otel-audit-sink", daemon=True)
        self._thread.start()

    def adopt_now(self) -> None:
        """Look for spools of dead processes at once (normally every ``adopt_interval`` seconds).

        Call it when you know a process that wrote to the same spool directory has died (a
        supervisor reaping a worker), so its chain is replayed and closed without waiting.
        """
        self._next_adopt = 0.0
        self._wake.set()

    @property
    def committed_position(self) -> SpoolPosition:
        return self._own.committed if self._own else 0

    @property
    def relay_committed_position(self) -> SpoolPosition:
        return self._relay.committed if self._relay else 0

    def wait_committed(self, position: SpoolPosition, timeout: float, *, relay: bool = False) -> bool:
        """Block until everything up to ``position`` of the own (or the relay) spool is in PostgreSQL."""
        source = self._relay if relay else self._own
        if source is None:
            return False
        if source.committed >= position:
            return True
        self._wake.set()
        with self._committed:
            return self._committed.wait_for(lambda: source.committed >= position or self._dead(), timeout) and (
                source.committed >= position
            )

    def flush(self, timeout: float = 30.0) -> bool:
        """Return once everything appended so far is committed (``False`` on timeout)."""
        deadline = time.monotonic() + timeout
        own, relay = self._own, self._relay
        if own is not None and not self.wait_committed(own.spool.end, timeout):
            return False
        if relay is not None:
            return self.wait_committed(relay.spool.end, max(0.0, deadline - time.monotonic()), relay=True)
        return True

    def records_passed(self, *, relay: bool = False) -> int:
        """Records of the own (or relay) spool the sink has committed or found already stored."""
        source = self._relay if relay else self._own
        return source.records_passed if source is not None else 0

    def close(self, timeout: float = 30.0) -> bool:
        """Flush (up to ``timeout``), stop the thread, release the spool.

        Returns whether everything was committed. What was not stays in the
        spool directory and is written by the next process that uses it.

        Returns within about ``timeout``, whatever the database does: the flush
        gives up early once writing has failed during the close (at once if the
        database was already unreachable: the records are safe in the spool, and
        waiting out the timeout would only delay the exit), and a sink thread stuck
        in a connection attempt or a hung COMMIT is left to finish on its own; it
        releases the spool itself when it stops.
        """
        deadline = time.monotonic() + timeout
        flushed = self._flush_for_close(timeout)
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        with self._release_lock:
            if thread is not None and thread.is_alive() and not self._thread_done:
                # Its current attempt (a connect timeout, a COMMIT the server does not
                # answer) outlasts the timeout: it releases the spool when it ends.
                self._release_on_stop = True
                if not flushed:
                    _log.warning(
                        "otel-audit: the sink is still waiting for PostgreSQL at shutdown (%s); not waiting for it",
                        self.stats.last_error or "no answer yet",
                    )
                self._write_status()
                return flushed
            self._release()
        return flushed

    def _flush_for_close(self, timeout: float) -> bool:
        """:meth:`flush` for :meth:`close`: stops waiting once writing has failed meanwhile
        (after one failed attempt if the database was already down, after two otherwise)."""
        deadline = time.monotonic() + timeout
        own, relay = self._own, self._relay
        targets = [(s, s.spool.end) for s in (own, relay) if s is not None]
        failures = self._failures
        allowed = 1 if self.stats.database_up is False else 2

        def settled() -> bool:
            return (
                all(source.committed >= end for source, end in targets)
                or self._dead()
                or self._failures - failures >= allowed
            )

        self._wake.set()
        with self._committed:
            if not self._committed.wait_for(settled, min(1.0, timeout)):
                _log.warning(
                    "otel-audit: writing the last audit records to PostgreSQL before shutdown (waiting up to %.0fs)",
                    max(0.0, deadline - time.monotonic()),
                )
                self._committed.wait_for(settled, max(0.0, deadline - time.monotonic()))
        return all(source.committed >= end for source, end in targets)

    def _release(self) -> None:
        """Close the spools (removing those fully written) and the connection; called once."""
        if self._released:
            return
        self._released = True
        own, relay = self._own, self._relay
        for source in (own, relay):
            if source is None:
                continue
            done = source.committed >= source.spool.end
            source.spool.close(remove=done)
        for source in self._sources:
            if source is not own and source is not relay:
                # An adopted spool the stop interrupted right after its last batch is
                # finished: removing it keeps `status` from listing stored records.
                finished = not source.spool.read(source.committed, 1, 1)
                if finished and not source.relay:
                    try:
                        self._close_adopted_chain(source)  # before its spool goes: see _finish_adopted
                    except Exception as exc:
                        _log.warning(
                            "otel-audit: could not close the chain of the replayed spool %s at shutdown (%s); the "
                            "next process on this spool directory will",
                            source.spool.path,
                            exc,
                        )
                        finished = False
                source.spool.close(remove=finished)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._write_status()

    def abandon_after_fork(self) -> None:
        """In a forked child: drop every handle shared with the parent without closing it.

        Closing the inherited connection would send the parent's server session a
        Terminate message; the object is kept referenced for the child's lifetime.
        """
        _FORK_ORPHANS.append(self._conn)
        self._conn = None
        for source in self._sources:
            source.spool.abandon_after_fork()
        self._sources = []
        self._own = None
        self._relay = None
        self._stopping = True

    def _dead(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    # ------------------------------------------------------------------ main loop
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._release_lock:
                self._thread_done = True
                if self._release_on_stop:
                    self._release()

    def _loop(self) -> None:
        while True:
            try:
                progressed = self._pass()
            except Exception as exc:  # a bug must not silently stop the sink: log, back off, retry
                _log.exception("otel-audit sink: unexpected error; retrying")
                self.stats.note_error(f"internal: {exc!r}")
                self._sleep_backoff()
                continue
            self._maybe_write_status()
            if self._stopping:
                # close() has waited for the flush it wanted; whatever is left stays spooled.
                return
            # ``linger`` (default 0) makes the sink wait between batches for
            # larger ones; flush and fail-closed waiters wake it at once.
            self._wake.wait(self.linger if progressed else self.poll_interval)
            self._wake.clear()

    def _pass(self) -> bool:
        now = time.monotonic()
        if now >= self._next_partitions and self._conn is not None and not self._conn.broken:
            self._maintain_partitions(self._conn)
        if self.adopt_orphans and now >= self._next_adopt:
            try:
                self._adopt()
            except _Transient as exc:  # the database is needed to know which spools are its own
                if self._stopping:
                    return False
                self._update_gauges()
                self._on_transient(exc)
                return False
            self._next_adopt = now + self.adopt_interval
        progressed = False
        for source in list(self._sources):
            try:
                while self._drain(source):
                    progressed = True
                    if self._stopping and source is not self._own:
                        break
            except _Transient as exc:
                if self._stopping:
                    return False
                self._update_gauges()
                self._on_transient(exc)
                return False
        self._update_gauges()
        return progressed

    def _belongs_here(self, meta: dict[str, Any]) -> bool:
        """Is a dead process's spool (its ``meta.json``) for the database this sink writes to?

        By the database's identity when both are known, however the DSNs were spelt;
        otherwise (its process never reached a database, or this role may not read the
        identity) only if the DSNs name the same target.
        """
        database = meta.get("database")
        if database and self.identity:
            return same_database(database, self.identity)
        return meta.get("target") == self.target

    def _adopt(self) -> None:
        known = {s.spool.path for s in self._sources}
        paths = [p for p in list_chain_dirs(Path(self.spool_config.directory)) if p not in known]
        if paths and not self._identity_checked:
            self._connection()  # learns the identity
        for path in paths:
            spool = ChainSpool.adopt(path, self.spool_config, self._belongs_here)
            if spool is None:
                continue
            _log.info("otel-audit: replaying the spool of an earlier process: %s", path)
            relay = bool(spool.meta.get("relay"))
            self._sources.append(_Source(spool, spool.start(), in_sync=False, relay=relay, extra={"adopted": True}))

    # ------------------------------------------------------------------ one batch
    def _drain(self, source: _Source) -> bool:
        frames = source.spool.read(source.committed, self.batch_records, self.batch_bytes)
        if not frames:
            if not source.spool.owner:
                self._finish_adopted(source)
            return False
        batch = self._decode(frames)
        if not source.spool.owner and not source.relay:
            _note_replayed(source.extra, batch)
        if batch.records and not source.in_sync and not source.relay:
            # An earlier attempt (or process) may have stored part of it; the
            # inserts are idempotent anyway, this keeps replays cheap and quiet.
            batch.records = self._not_stored(source.spool.chain_id, batch.records)
        if batch.records or batch.chains or batch.checkpoints:
            try:
                self._write(source, batch)
            except _Transient:
                source.in_sync = False  # part of the batch may be stored; ask before retrying
                raise
        self._advance(source, batch)
        return True

    def _decode(self, frames: list[tuple[Frame, int]]) -> _Batch:
        """Sort a batch's frames by kind. Nothing is parsed per record here: the
        sink shares the GIL with the application's logging threads."""
        records: list[tuple[bytes, bytes]] = []
        chains: list[dict[str, Any]] = []
        checkpoints: list[tuple[bytes, bytes]] = []
        for frame, _end in frames:
            kind = frame[0]
            if kind == KIND_RECORD:
                records.append((frame[1], frame[2]))
            elif kind == KIND_GENESIS:
                chains.append({"g": frame.payload, "h": frame.digest.hex()})
            elif kind == KIND_DELIVERED_GENESIS:
                genesis, delivered_by = parse_delivered_genesis(frame.payload)
                chains.append({"g": genesis, "h": genesis_hash(genesis), "t": delivered_by})
            elif kind == KIND_CHECKPOINT:
                checkpoints.append((frame.payload, frame.digest))
        return _Batch(records, chains, checkpoints, frames[-1][1], len(records))

    def _advance(self, source: _Source, batch: _Batch) -> None:
        source.in_sync = True
        if batch.records:
            source.records_done += len(batch.records)
        source.records_passed += batch.record_frames
        stats = self.stats
        stats.committed += len(batch.records)
        if source is not self._own:
            stats.replayed += len(batch.records)
        stats.last_commit_unix = time.time()
        stats.database_up = True
        if stats.configuration_error is not None:
            stats.configuration_error = None
            self._next_config_report = 0.0
            _log.warning("otel-audit: PostgreSQL accepts audit records again; the configuration error is resolved")
        self._retry_delay = self.retry_initial
        # Free the spool space first: a caller woken by the notification may log
        # straight away and must find the space it was waiting for.
        source.spool.release_before(batch.end)
        source.spool.note_committed(batch.end)
        with self._committed:
            source.committed = batch.end
            self._committed.notify_all()
        if self.after_commit is not None and batch.checkpoints:
            try:
                self.after_commit(batch.checkpoints)
            except Exception:
                _log.exception("otel-audit: post-commit checkpoint hook failed")

    def _write(self, source: _Source, batch: _Batch) -> None:
        try:
            self._write_rows(batch.records, batch.chains, batch.checkpoints)
            return
        except _Transient:
            raise
        except psycopg.Error as exc:
            if not _is_record_level(exc):
                raise _failure(exc) from exc
            first_error = exc
        # Record-level failure. Genesis rows and checkpoints are small and fixed-form:
        # store them on their own, then isolate the culprit records by bisection.
        if batch.chains or batch.checkpoints:
            self._write_rows([], batch.chains, batch.checkpoints)
        self._write_isolating(batch.records, 0, len(batch.records), first_error)

    def _write_isolating(self, records: list[tuple[bytes, bytes]], lo: int, hi: int, error: psycopg.Error) -> None:
        """``records[lo:hi]`` failed for a record-level reason: store what can be stored,
        quarantine the rest. Halves are written left first, keeping each chain in order."""
        if hi - lo == 1:
            self._quarantine(records[lo], _describe(error))
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                self._write_rows(records[a:b], [], [])
            except _Transient:
                raise
            except psycopg.Error as exc:
                if not _is_record_level(exc):
                    raise _failure(exc) from exc
                self._write_isolating(records, a, b, exc)

    def _quarantine(self, record: tuple[bytes, bytes], reason: str) -> None:
        canonical, digest = record
        seq = record_seq(canonical)
        hash_hex = digest.hex()
        chain_id = self._chain_of(canonical)
        conn = self._connection()
        try:
            conn.execute(
                "INSERT INTO audit_quarantine (chain_id, seq, hash, canonical, reason) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (chain_id, seq, hash_hex, canonical, reason),
            )
        except psycopg.Error as exc:
            if not _is_record_level(exc):
                raise _failure(exc) from exc
            self._quarantine_file(
                chain_id, seq, canonical, hash_hex, f"{reason}; quarantine table refused it too: {exc}"
            )
            return
        self.stats.quarantined += 1
        _log.error(
            "otel-audit: PostgreSQL refused audit record chain=%s seq=%s permanently (%s); it is kept in "
            "audit_quarantine, and otel-audit verify reports it as record_hidden (an error) until the cause is "
            "fixed and the record is stored in audit_logs",
            chain_id,
            seq,
            reason,
        )

    @staticmethod
    def _chain_of(canonical: bytes) -> str:
        return str(orjson.loads(canonical)["chain_id"])

    def _quarantine_file(self, chain_id: str, seq: int, canonical: bytes, hash_hex: str, reason: str) -> None:
        directory = Path(self.spool_config.directory) / "quarantine"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{chain_id}-{seq:012d}.json"
        path.write_bytes(orjson.dumps({"reason": reason, "hash": hash_hex, "canonical": canonical.decode("utf-8")}))
        self.stats.quarantined += 1
        _log.critical(
            "otel-audit: audit record chain=%s seq=%s could not be stored in PostgreSQL at all (%s); "
            "saved to %s. Import it once the cause is fixed.",
            chain_id,
            seq,
            reason,
            path,
        )

    def _write_rows(self, records: list[tuple[bytes, bytes]], chains: list[Any], checkpoints: list[Any]) -> None:
        """One transaction: chain registrations, records (staged, then projected), checkpoints."""
        conn = self._connection()
        conflicts: list[tuple[int, str]] = []
        try:
            with conn.transaction():
                cur = conn.cursor()
                if chains:
                    # Only the ingest writes delivered_by: an application's sink keeps working on a
                    # database whose schema predates that column.
                    plain = [c for c in chains if "t" not in c]
                    delivered = [c for c in chains if "t" in c]
                    if plain:
                        cur.executemany(INSERT_CHAINS, plain)
                    if delivered:
                        cur.executemany(INSERT_DELIVERED_CHAINS, delivered)
                if records:
                    with cur.copy(_COPY_STAGE) as copy:
                        copy.write(stage_copy_data(records))
                    cur.execute(PROJECT_STAGE)
                    if cur.rowcount != len(records):
                        # Some (chain, seq) were already stored: a replay (same hash,
                        # nothing to do) or a different record in their place.
                        conflicts = cur.execute(CONFLICTING_STAGED).fetchall()
                if checkpoints and self.checkpoint_handler is not None:
                    self.checkpoint_handler(checkpoints, conn)
        except psycopg.OperationalError as exc:
            self._drop_connection()
            raise _failure(exc) from exc
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                self._drop_connection()
                raise _failure(exc) from exc
            raise
        for ord_, stored_hash in conflicts:
            self._quarantine(
                records[ord_],
                f"a different record (hash {stored_hash}) already occupies this chain and sequence number in "
                "audit_logs: it was not written by this chain's emitter",
            )

    def _not_stored(self, chain_id: str, records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``records`` of one chain minus those stored already with the same hash.

        A *different* record at one of their positions is kept in the result:
        writing it then quarantines it, so it is not lost.
        """
        conn = self._connection()
        seqs = [record_seq(canonical) for canonical, _ in records]
        try:
            stored = set(conn.execute(_STORED, {"c": chain_id, "lo": min(seqs), "hi": max(seqs)}).fetchall())
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.broken:
                self._drop_connection()
            raise _failure(exc) from exc
        if not stored:
            return records
        return [r for seq, r in zip(seqs, records, strict=True) if (seq, r[1].hex()) not in stored]

    # ------------------------------------------------------------------ explicit replay
    def replay(self, path: Path, *, force: bool = False) -> dict[str, Any]:
        """Write a dead process's spool directory ``path`` to this sink's database now, on
        the calling thread (``otel-audit replay``); the directory is removed once written.

        Refuses (``status`` ``"refused"``) a spool that belongs to another database unless
        ``force``, and one whose process is alive (``"in use"``: it writes its records
        itself). A spool whose process never reached a database is replayed: the DSN it
        was written for was wrong, and this is the way to its intended database. Raises
        :class:`~otel_audit.errors.AuditError` when the database refuses the records or
        cannot be reached; what is not written stays in the spool, and the command can be
        run again (records already stored are skipped).
        """
        result: dict[str, Any] = {"spool": str(path), "records": 0, "already_stored": 0}
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            return {**result, "status": "refused", "reason": f"not a spool directory ({exc})"}
        result["chain_id"] = meta.get("chain_id")
        try:
            self._connection()
        except _Transient as exc:
            raise AuditError(f"cannot write to the database: {exc}") from exc
        written_for = meta.get("database")
        result["database"] = describe_database(self.identity)
        if written_for and self.identity and not same_database(written_for, self.identity) and not force:
            return {
                **result,
                "status": "refused",
                "reason": f"its records were written to {describe_database(written_for)}, but --dsn reaches "
                f"{describe_database(self.identity)}: replaying would store its chain in another database. "
                "Use the DSN of the database it belongs to, or add --force if this is where it belongs "
                "(the database was restored or moved)",
            }
        if not written_for:
            result["note"] = (
                f"its process never reached a database (it was configured with {meta.get('dsn') or 'an unknown DSN'})"
            )
        config = self.spool_config
        segments = sorted(path.glob("*.seg"))
        if segments:  # read with the segment size it was written with
            size = segments[0].stat().st_size
            config = SpoolConfig(directory=path.parent, segment_bytes=size, max_bytes=max(2 * size, config.max_bytes))
        spool = ChainSpool.adopt(path, config, lambda _meta: True)
        if spool is None:
            return {
                **result,
                "status": "in use",
                "reason": f"its process (pid {meta.get('pid')}) is alive and writes its records itself",
            }
        source = _Source(spool, spool.start(), in_sync=False, relay=bool(meta.get("relay")), extra={"adopted": True})
        self._sources.append(source)
        try:
            while self._drain(source):
                pass
        except _Transient as exc:
            if source in self._sources:
                self._sources.remove(source)
                spool.close()
            raise AuditError(
                f"{path}: {exc}. {source.records_passed} record(s) were stored; the rest stay in the spool: "
                "fix the cause and run the command again"
            ) from exc
        result["records"] = source.records_done
        result["already_stored"] = source.records_passed - source.records_done
        return {**result, "status": "replayed"}

    def disconnect(self) -> None:
        """Close the connection (after :meth:`replay`; a running sink is stopped with :meth:`close`)."""
        self._drop_connection()

    def _finish_adopted(self, source: _Source) -> None:
        if not source.relay:
            self._close_adopted_chain(source)
        _log.info(
            "otel-audit: spool %s of an earlier process fully written (%d records replayed)",
            source.spool.path,
            source.records_done,
        )
        source.spool.close(remove=True)
        self._sources.remove(source)

    def _close_adopted_chain(self, source: _Source) -> None:
        """A dead emitter's spool is replayed: have its chain closed (``close_adopted``), store and witness that."""
        if self.close_adopted is not None:
            source.extra["stored_max_n"] = self._stored_max_n(source.spool.chain_id)
            try:
                closing = self.close_adopted(source.spool, source.extra)
            except Exception:  # e.g. an unwritable spool directory: the chain stays unclosed, the spool is done
                _log.exception("otel-audit: could not close the chain of the replayed spool %s", source.spool.path)
                closing = []
            if closing:
                try:
                    self._write_rows([], [], closing)
                except psycopg.Error as exc:
                    if isinstance(exc, psycopg.OperationalError) or not _is_record_level(exc):
                        raise _Transient(_describe(exc)) from exc
                    _log.error("otel-audit: could not store the checkpoint closing %s: %s", source.spool.path, exc)
                if self.after_commit is not None:
                    try:
                        self.after_commit(closing)
                    except Exception:
                        _log.exception("otel-audit: post-commit checkpoint hook failed")

    def _stored_max_n(self, chain_id: str) -> int | None:
        """The newest checkpoint number stored for a chain (a hint that only ever stops an adopter from signing)."""
        conn = self._connection()
        try:
            row = conn.execute("SELECT max(n) FROM audit_checkpoints WHERE chain_id = %s", (chain_id,)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.broken:
                self._drop_connection()
            raise _Transient(_describe(exc)) from exc
        return int(row[0]) if row and row[0] is not None else None

    # ------------------------------------------------------------------ connection & retries
    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:
            conn = connect(self.dsn, application_name=self.application_name)
            conn.execute(CREATE_STAGE)
            identity = database_identity(conn)
        except psycopg.Error as exc:
            raise _failure(exc) from exc
        self._learn_identity(identity)
        self._conn = conn
        _log.info("otel-audit: connected to PostgreSQL")
        self._next_partitions = 0.0
        # After a reconnect nothing is known about what the last COMMIT did.
        for source in self._sources:
            source.in_sync = False
        return self._conn

    def _learn_identity(self, identity: dict[str, Any] | None) -> None:
        """Remember which database the DSN reached and note it in the spools this process owns."""
        self._identity_checked = True
        if identity is None:
            return
        if self.identity is None:
            self.identity = identity
        elif not same_database(identity, self.identity):
            _log.warning(
                "otel-audit: the DSN now reaches %s, not %s as before; this process's spool stays tied to the first",
                describe_database(identity),
                describe_database(self.identity),
            )
            return
        for source in (self._own, self._relay):
            if source is not None and source.spool.owner:
                source.spool.record_database(self.identity)

    def _maintain_partitions(self, conn: psycopg.Connection) -> None:
        """Create the coming months' partitions (hourly). Never fatal: without them rows go to the default one."""
        self._next_partitions = time.monotonic() + PARTITION_CHECK_INTERVAL
        try:
            made = ensure_partitions(conn)
        except psycopg.errors.UndefinedFunction:
            return  # schema older than version 3: audit_logs is not partitioned
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.broken:
                self._drop_connection()
                return
            _log.warning(
                "otel-audit: could not create the coming months' partitions of audit_logs (%s); records go to the "
                "default partition meanwhile. Run `otel-audit db maintain` (or grant the writer role EXECUTE on "
                "otel_audit_ensure_partitions with `otel-audit db init --writer-role ...`)",
                _describe(exc),
            )
            return
        if made:
            _log.info("otel-audit: created partitions %s", ", ".join(made))

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _on_transient(self, exc: _Transient) -> None:
        message = str(exc)
        if isinstance(exc, _Misconfigured):
            self.stats.configuration_error = message
            now = time.monotonic()
            if now >= self._next_config_report:
                self._next_config_report = now + CONFIGURATION_REPORT_INTERVAL
                _log.error(
                    "otel-audit: CONFIGURATION ERROR: PostgreSQL refuses to store audit records (%s). Retrying "
                    "will not fix this: give the role in the DSN the writer privileges (`otel-audit db init "
                    "--writer-role ROLE`) or correct the DSN. The records are kept in the spool %s and written "
                    "once it works",
                    message,
                    self.spool_config.directory,
                )
        elif self.stats.database_up is not False:
            _log.warning(
                "otel-audit: cannot write audit records to PostgreSQL (%s); they are kept in the spool %s "
                "and retried with backoff",
                message,
                self.spool_config.directory,
            )
        self.stats.database_up = False
        self.stats.note_error(message)
        with self._committed:
            self._failures += 1
            self._committed.notify_all()  # a closing flush may stop waiting now
        if not self._stopping:
            self._sleep_backoff()

    def _sleep_backoff(self) -> None:
        delay = self._retry_delay * (0.5 + random.random())
        self._retry_delay = min(self.retry_max, self._retry_delay * 2)
        # A flush or stop wakes us early; the retry then happens sooner, which is harmless.
        self._wake.wait(delay)
        self._wake.clear()

    # ------------------------------------------------------------------ gauges & status
    def _update_gauges(self) -> None:
        pending = 0
        for source in self._sources:
            pending += source.spool.pending_bytes(source.committed)
        self.stats.spool_bytes = pending
        if all(s.spool.owner and s.committed >= s.spool.end for s in self._sources):
            self.stats.oldest_uncommitted_unix = None
        elif self.stats.oldest_uncommitted_unix is None:
            self.stats.oldest_uncommitted_unix = self._oldest_pending_time()

    def _oldest_pending_time(self) -> float | None:
        for source in self._sources:
            for frame, _ in source.spool.read(source.committed, 16, 1 << 20):
                if frame.kind == KIND_RECORD:
                    with contextlib.suppress(Exception):
                        ts = orjson.loads(frame.payload)["timestamp"]
                        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        return None

    def _maybe_write_status(self) -> None:
        now = time.monotonic()
        if now - self._status_written >= 1.0:
            self._status_written = now
            self._write_status()

    def _write_status(self) -> None:
        own = self._own
        if own is None or not own.spool.path.exists():
            return
        self._write_process_status(own.spool.path, self.stats.snapshot(), chain_id=own.spool.chain_id)


_FORK_ORPHANS: list[Any] = []


def _note_replayed(extra: dict[str, Any], batch: _Batch) -> None:
    """Remember what the replay of a dead emitter's spool saw: its genesis, newest record and checkpoint."""
    for payload, digest in batch.records:
        seq = record_seq(payload)
        if seq > extra.get("last_seq", 0):
            extra["last_seq"], extra["last_hash"] = seq, digest.hex()
    for chain in batch.chains:
        extra.setdefault("genesis_hash", chain["h"])
    if batch.checkpoints:
        extra.setdefault("checkpoints", []).extend(payload for payload, _ in batch.checkpoints)


def _is_record_level(exc: psycopg.Error) -> bool:
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in _RECORD_LEVEL_CLASSES


def _describe(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if state == "42P01":
        hint = " (the otel-audit tables are missing: run `otel-audit db init --dsn ...`)"
    elif state == "42703":
        hint = " (the otel-audit schema is older than this otel-audit: run `otel-audit db init --dsn ...`)"
    elif state == "42501":
        hint = " (the role lacks privileges: see 'Writer and reader roles' in docs/storage.md)"
    return f"{type(exc).__name__}{f' [{state}]' if state else ''}: {text}{hint}"
