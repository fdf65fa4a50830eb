"""Verify the audit trail stored in PostgreSQL.

Reads, never writes, in one REPEATABLE READ transaction. Two passes, both
streamed with binary ``COPY ... TO STDOUT`` so memory stays flat whatever the
table size: the fast pass (:mod:`otel_audit.verify.parallel`) proves clean
chains range by range in worker processes; every chain it cannot prove is
walked in full here, ordered by ``(chain_id, seq)``, its queryable columns
shipped as one JSON array per row and compared field by field with the sealed
bytes by :class:`~otel_audit.verify.chain_walk.ChainWalker`. Hashes are
recomputed in Python. The database is asked for data, never for a verdict.

Signed checkpoints (``audit_checkpoints``) and witnesses are read before the
walk, so that the walk can note the hashes at checkpointed positions; they
are judged after it (:mod:`otel_audit.verify.anchoring`). Only the public keys
in ``VerifyOptions.trusted_keys`` are trusted.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus

from otel_audit.core.chain import genesis_hash
from otel_audit.core.keys import VerifyKey
from otel_audit.errors import DatabaseNotReady
from otel_audit.sink.schema import current_version
from otel_audit.verify.anchoring import Anchoring, AnchorPolicy
from otel_audit.verify.chain_walk import FIELDS, ChainWalker
from otel_audit.verify.delivery import check_deliveries
from otel_audit.verify.exact import json_column_equal, loads_or_unreadable, utc_text
from otel_audit.verify.parallel import can_fork, chain_heights, default_workers, join_ranges, plan, run_tasks
from otel_audit.verify.ranges import RangeResult
from otel_audit.verify.report import ChainSummary, Finding, Kind, Severity, VerificationReport
from otel_audit.verify.retention import (
    ArchivedPrefix,
    bundle_holding,
    check_claims,
    judge_retention,
    load_retention_rows,
)

__all__ = ["VerifyOptions", "verify_database"]

# How each field's column is rendered so that it compares equal to the sealed
# value: text forms for uuid, timestamptz and inet, JSON for the rest.
_COLUMN_SQL = {
    "v": "format_version",
    "id": "id::text",
    "chain_id": "chain_id::text",
    "timestamp": utc_text("timestamp"),
    "ip_address": "pg_catalog.abbrev(ip_address)",
}
_CHANGED_INDEX = FIELDS.index("changed_fields")
_PROBLEMS_INDEX = FIELDS.index("problems")
_COLUMNS_JSON = "pg_catalog.json_build_array({})::text".format(", ".join(_COLUMN_SQL.get(f, f) for f in FIELDS))
# Also the jsonb columns' own texts (numbers with every digit: see verify/exact.py) and the arrays'
# dimensions, which a list loses ('[0:1]={a,b}' is another array than '{a,b}').
_STREAM = (
    "COPY (SELECT chain_id::text, seq, hash, canonical, {cols}, old_values::text, attributes::text, "
    "pg_catalog.array_dims(changed_fields), pg_catalog.array_dims(problems) FROM audit_logs a {where} "
    # The uuid column (index order), not the text; rows sharing a seq column by their hash, bytewise: the
    # first placed at a position takes it (docs/specification.md, "The walk"), so the order is specified.
    'ORDER BY a.chain_id, a.seq, a.hash COLLATE "C") TO STDOUT (FORMAT BINARY)'
)


@dataclass
class VerifyOptions:
    chain_ids: list[str] | None = None  # only these chains (default: all)
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    extra_checks: list[Callable[[psycopg.Connection, VerificationReport], None]] = field(default_factory=list)
    #: key id -> public key. None: checkpoint signatures are not checked (a warning says so when there are any);
    #: a mapping (even empty): every chain must be anchored by a checkpoint one of these keys signed.
    trusted_keys: Mapping[str, VerifyKey] | None = None
    witnesses: Sequence[Any] = ()  # otel_audit.witness.Witness objects to compare the database with
    max_unanchored_age: float | None = None  # seconds; older unanchored records fail verification
    now: float | None = None  # judge ages as of this unix time (default: now)
    #: processes for the fast pass. None: one per CPU (up to 8) from PARALLEL_FROM records when the calling
    #: process runs no other thread, else 1. 1: this process only. More: forked, or spawned if threads run.
    workers: int | None = None
    #: the archive (an otel_audit.archive.store.ArchiveStore) retention moved records to: each retention
    #: checkpoint's claims are held to its signed manifests, and findings name the bundle holding a boundary.
    archive: Any = None


#: Fewer records than this are verified in this process: starting workers would cost more than it saves.
PARALLEL_FROM = 50_000


_CHECKPOINT_ROWS = (
    "SELECT chain_id::text, n, seq, head, "
    f"{utc_text('signed_at')}, "
    "key_id, closed, body, signature, hash FROM audit_checkpoints {where} ORDER BY chain_id, n"
)


def verify_database(conn: psycopg.Connection, options: VerifyOptions | None = None) -> VerificationReport:
    """Check every chain in the database; returns a :class:`VerificationReport`.

    Raises :class:`psycopg.Error` on connection problems and ``LookupError``
    when the otel-audit tables are missing (the CLI turns both into exit 2).
    """
    options = options or VerifyOptions()
    report = VerificationReport(
        checks=["record hashes", "columns against sealed bytes", "sequence", "links", "registry"]
    )
    started = time.monotonic()
    with _one_snapshot(conn):
        _verify(conn, options, report)
    report.duration_seconds = time.monotonic() - started
    return report


def _verify(conn: psycopg.Connection, options: VerifyOptions, report: VerificationReport) -> None:
    _require_schema(conn)
    registry = _load_registry(conn, report, options.chain_ids)
    quarantine = _load_quarantine(conn, options.chain_ids)
    anchoring = _load_anchoring(conn, options, report)
    archived, manifests = _load_retention(conn, options, report)

    # The highest seq of each chain (an index probe each) sizes the plan and the progress bar.
    heights = chain_heights(conn, list(report.chains))
    # Where chains whose oldest records left PostgreSQL under a retention checkpoint go on.
    starts = _chain_starts(conn, archived, registry, heights)
    null_seq = _chains_with_null_seq(conn, list(report.chains))  # rows no seq range can hold
    walkers: dict[str, ChainWalker] = {}

    def walker_for(chain_id: str) -> ChainWalker:
        walker = walkers.get(chain_id)
        if walker is None:
            summary = report.chains.get(chain_id)
            if summary is None:
                summary = report.chains[chain_id] = ChainSummary(chain_id)
            walker = walkers[chain_id] = ChainWalker(
                chain_id,
                report,
                summary,
                genesis_hash=registry.get(chain_id),
                watch=watch(chain_id),
                archived=(prefix.seq, prefix.head) if (prefix := archived.get(chain_id)) is not None else None,
            )
            for seq, stored_hash, canonical, reason in quarantine.pop(chain_id, []):
                walker.add_quarantined(stored_hash, canonical, seq, reason)
        return walker

    def watch(chain_id: str) -> frozenset[int]:
        positions = anchoring.watch(chain_id) if anchoring is not None else frozenset()
        prefix = archived.get(chain_id)
        if prefix is not None:  # the last archived record, when still live, must hash to the signed head
            positions = positions | {prefix.seq}
        return positions

    with _progress(sum(heights.values()) - sum(first - 1 for first, _ in starts.values()), options.progress) as tick:
        # Fast pass over clean chains (in parallel), then the full walk of the rest.
        dirty = [c for c in report.chains if c in quarantine or c in null_seq]
        clean_heights = {c: top for c, top in heights.items() if c not in quarantine and c not in null_seq}
        big = sum(clean_heights.values()) >= PARALLEL_FROM
        workers = options.workers or (default_workers() if big and can_fork() else 1)
        results: dict[str, list[RangeResult]] = {}
        first_seqs = {c: start[0] for c, start in starts.items()}
        for result in run_tasks(conn, plan(clean_heights, workers, watch, first_seqs), workers):
            results.setdefault(result.chain_id, []).append(result)
            tick(result.rows)
        for chain_id, chain_results in sorted(results.items()):
            clean = join_ranges(chain_results, registry.get(chain_id), starts.get(chain_id))
            if clean is None:
                dirty.append(chain_id)
                continue
            walker = walker_for(chain_id)
            walker.adopt(
                clean.records,
                clean.invalid,
                clean.first_timestamp,
                clean.last_seq,
                clean.last_hash,
                clean.last_timestamp,
                clean.observed,
                clean.first_seq,
            )
            walker.finish()
        if dirty:
            _walk(conn, dirty, walker_for, tick)
    report.records = sum(s.records for s in report.chains.values())
    if not options.chain_ids:
        _report_rows_without_chain(conn, report)
    # Chains with quarantined records only, and registered chains with no rows.
    for chain_id in list(quarantine):
        walker_for(chain_id).finish()
    _report_archived(report, archived, walkers, manifests, options.chain_ids)
    for chain_id, summary in report.chains.items():
        if summary.registered and chain_id not in walkers and chain_id not in archived:
            report.add(
                Finding(
                    Kind.EMPTY_CHAIN,
                    Severity.INFO,
                    chain_id,
                    None,
                    "registered chain has no records (an emitter that logged nothing, or all its records deleted; "
                    "signed checkpoints tell the two apart)",
                )
            )
    if anchoring is not None:
        for chain_id in sorted(set(report.chains) | anchoring.chains()):
            found = report.chains.get(chain_id)
            walked = walkers.get(chain_id)
            anchoring.finish(
                chain_id,
                found,
                walked.observed if walked is not None else {},
                registry.get(chain_id) if found is not None and found.registered else None,
            )
    check_deliveries(conn, report, options.chain_ids)
    for check in options.extra_checks:
        check(conn, report)


def _load_retention(
    conn: psycopg.Connection, options: VerifyOptions, report: VerificationReport
) -> tuple[dict[str, ArchivedPrefix], list[Any]]:
    """The archived prefix of each chain, from the retention checkpoints trusted (see
    :mod:`otel_audit.verify.retention`); and the archive's manifests when ``options.archive`` is given."""
    rows = load_retention_rows(conn)
    if not rows:
        return {}, []
    checkpoints, prefixes = judge_retention(rows, options.trusted_keys, report)
    report.checks.append(
        "retention checkpoints" + ("" if options.trusted_keys is not None else " (signatures NOT checked)")
    )
    manifests: list[Any] = []
    if options.archive is not None:
        manifests = _archive_manifests(options.archive, options.trusted_keys, report)
        check_claims(checkpoints, manifests, report, archive_description=options.archive.description)
        report.checks.append(f"retention claims against {options.archive.description}")
    if options.chain_ids:
        prefixes = {c: p for c, p in prefixes.items() if c in options.chain_ids}
    return prefixes, manifests


def _archive_manifests(store: Any, trusted: Mapping[str, VerifyKey] | None, report: VerificationReport) -> list[Any]:
    """The archive's manifests, in run order, that a trusted key signed (all of them without trusted keys).

    Only their signatures, numbering and links are checked here: the bundles are ``verify-archive``'s."""
    from otel_audit.archive.format import manifest_name
    from otel_audit.archive.writer import load_manifests

    manifests = load_manifests(store)
    if trusted is None:
        return manifests
    good = []
    for manifest in manifests:
        valid = manifest.signature_valid(trusted)
        if valid:
            good.append(manifest)
            continue
        report.add(
            Finding(
                Kind.UNTRUSTED_KEY if valid is None else Kind.BAD_SIGNATURE,
                Severity.ERROR,
                None,
                None,
                f"{manifest_name(manifest.run)} of {store.description} "
                + (
                    f"is signed by key {manifest.key_id}, which is not among the trusted keys (add the archive key's "
                    "public key with --trusted-key)"
                    if valid is None
                    else f"does not verify under trusted key {manifest.key_id}: altered or forged"
                )
                + "; run `otel-audit verify-archive`",
            )
        )
    return good


def _chain_starts(
    conn: psycopg.Connection,
    archived: Mapping[str, ArchivedPrefix],
    registry: Mapping[str, str | None],
    heights: Mapping[str, int],
) -> dict[str, tuple[int, str | None]]:
    """chain id -> (first live seq, the hash its record must link to, None: not known here) for chains whose
    oldest records were archived and removed, so that the fast pass starts there (one index probe each).

    A chain whose live records start after the archived prefix ends is left out: the full walk reports the gap.
    """
    ids = [c for c in archived if c in heights and registry.get(c) is not None]
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT x.c::text, (SELECT min(seq) FROM audit_logs WHERE chain_id = x.c) "
        "FROM pg_catalog.unnest(%s::uuid[]) AS x(c)",
        (ids,),
    ).fetchall()
    starts: dict[str, tuple[int, str | None]] = {}
    for chain_id, first in rows:
        prefix = archived[chain_id]
        if first is None or first <= 1 or first > prefix.seq + 1:
            continue
        starts[chain_id] = (first, prefix.head if first == prefix.seq + 1 else None)
    return starts


def _report_archived(
    report: VerificationReport,
    archived: Mapping[str, ArchivedPrefix],
    walkers: Mapping[str, ChainWalker],
    manifests: list[Any],
    chain_ids: list[str] | None,
) -> None:
    """Say, per chain, which prefix is archived where; hold a still live last archived record to the signed head."""
    for chain_id, prefix in sorted(archived.items()):
        summary = report.chains.get(chain_id)
        if summary is None:
            if not chain_ids:
                report.add(
                    Finding(
                        Kind.CHAIN_DELETED,
                        Severity.ERROR,
                        chain_id,
                        None,
                        f"{prefix.checkpoint.describe()} says records 1..{prefix.seq} of this chain were archived, but "
                        "the database has neither its registry entry (audit_chains) nor any of its records: deleted",
                        count=prefix.seq,
                    )
                )
            continue
        bundle = bundle_holding(manifests, chain_id, prefix.seq) if manifests else None
        where = prefix.where(bundle)
        summary.extra["archived_seq"] = prefix.seq
        summary.extra["archived_head"] = prefix.head
        summary.extra["archived_in"] = where
        walker = walkers.get(chain_id)
        if summary.last_seq is None or summary.last_seq < prefix.seq:
            # Nothing of the chain after its archived prefix is in PostgreSQL: it ends where the archive does.
            summary.last_seq, summary.head_hash = prefix.seq, prefix.head
        if walker is not None:
            seen = walker.observed.get(prefix.seq)
            if seen is not None and seen[0] != prefix.head:
                report.add(
                    Finding(
                        Kind.ARCHIVE_MISMATCH,
                        Severity.ERROR,
                        chain_id,
                        prefix.seq,
                        f"record {prefix.seq} hashes to {seen[0]} in the database, but {prefix.checkpoint.describe()} "
                        f"signed {prefix.head} as the archived head: the live record or the archived one was changed",
                    )
                )
        live = (
            f"; the database holds seq {summary.first_seq}..{summary.last_seq}"
            if summary.records and summary.first_seq is not None
            else "; none of its records is left in the database"
        )
        report.add(
            Finding(
                Kind.ARCHIVED,
                Severity.INFO,
                chain_id,
                None,
                f"archived up to seq {prefix.seq} ({where}){live}",
                count=prefix.seq,
            )
        )


@contextmanager
def _one_snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """Verify in one REPEATABLE READ, READ ONLY transaction: every query, and every worker process,
    sees the same rows, however many are committed meanwhile. A transaction the caller already
    has open is used as it is."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        yield
        return
    # Ending the transaction may fail on a broken connection: that must not hide why verification stopped.
    if conn.autocommit:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            with suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        return
    saved = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
    try:
        yield
    finally:
        with suppress(psycopg.Error):
            conn.rollback()
            conn.isolation_level, conn.read_only = saved


def _load_columns(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson reads integers up to 64 bits; a jsonb column may hold any number (a superuser's edit).
        return json.loads(text)


def _chains_with_null_seq(conn: psycopg.Connection, chain_ids: list[str]) -> set[str]:
    """Chains with rows whose seq is NULL: no sequence range holds them, so the full walk must.

    Possible only after a superuser dropped the NOT NULL constraint; one index probe per chain.
    """
    if not chain_ids:
        return set()
    rows = conn.execute(
        "SELECT x.c::text FROM pg_catalog.unnest(%s::uuid[]) AS x(c) "
        "WHERE EXISTS (SELECT 1 FROM audit_logs WHERE chain_id = x.c AND seq IS NULL)",
        (chain_ids,),
    ).fetchall()
    return {r[0] for r in rows}


def _report_rows_without_chain(conn: psycopg.Connection, report: VerificationReport) -> None:
    row = conn.execute("SELECT count(*) FROM audit_logs WHERE chain_id IS NULL").fetchone()
    count = int(row[0]) if row else 0
    if count:
        report.add(
            Finding(
                Kind.INSERTED,
                Severity.ERROR,
                None,
                None,
                f"{count} row(s) of audit_logs have no chain id, so belong to no chain: they were inserted after "
                "the NOT NULL constraint on chain_id was removed",
                count=count,
            )
        )


def _walk(
    conn: psycopg.Connection,
    chain_ids: list[str],
    walker_for: Callable[[str], ChainWalker],
    tick: Callable[[int], None],
) -> None:
    """The full walk of these chains: every row through :class:`ChainWalker`, which classifies every finding."""
    current: ChainWalker | None = None
    current_id = None
    loads = _load_columns
    with conn.cursor() as cur:
        query = _STREAM.format(cols=_COLUMNS_JSON, where="WHERE chain_id = ANY(%s::uuid[])")
        with cur.copy(query, (chain_ids,)) as copy:
            copy.set_types(["text", "int8", "text", "bytea", "text", "text", "text", "text", "text"])
            n = 0
            for chain_id, seq, stored_hash, canonical, columns, old, attrs, changed_dims, problems_dims in copy.rows():
                if chain_id != current_id:
                    if current is not None:
                        current.finish()
                    current_id, current = chain_id, walker_for(chain_id)
                values = loads(columns)
                for index, dims in ((_CHANGED_INDEX, changed_dims), (_PROBLEMS_INDEX, problems_dims)):
                    if dims is not None and dims != f"[1:{len(values[index])}]":
                        values[index] = f"{dims}={orjson.dumps(values[index]).decode()}"  # not a plain array
                current.feed(seq, stored_hash, canonical, values, (old, attrs))  # type: ignore[union-attr]
                n += 1
                if n & 0x3FFF == 0:
                    tick(0x4000)
            tick(n & 0x3FFF)
    if current is not None:
        current.finish()


def _load_anchoring(conn: psycopg.Connection, options: VerifyOptions, report: VerificationReport) -> Anchoring | None:
    checking = options.trusted_keys is not None or bool(options.witnesses)
    row = conn.execute("SELECT to_regclass('audit_checkpoints')").fetchone()
    have_table = bool(row and row[0] is not None)
    if not have_table:
        version = current_version(conn)
        if version < 2:
            if checking:
                raise DatabaseNotReady(
                    f"this database has otel-audit schema version {version}, without the audit_checkpoints table, "
                    "so there are no signed checkpoints to check: upgrade it with `otel-audit db init --dsn ...`, "
                    "then run the emitters with OTEL_AUDIT_SIGNING_KEY"
                )
            return None
        report.add(
            Finding(
                Kind.CHECKPOINT_MISSING,
                Severity.ERROR,
                None,
                None,
                f"the audit_checkpoints table is missing although the schema is at version {version}: it was "
                "dropped, and every stored checkpoint with it",
            )
        )
        if not checking:
            return None
    anchoring = Anchoring(
        AnchorPolicy(options.trusted_keys, tuple(options.witnesses), options.max_unanchored_age, options.now), report
    )
    where, params = "", None
    if options.chain_ids:
        where, params = "WHERE chain_id = ANY(%s::uuid[])", (options.chain_ids,)
    if have_table:
        with conn.cursor() as cur:
            anchoring.load_database(
                (r[0], r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7]), bytes(r[8]), r[9])
                for r in cur.execute(_CHECKPOINT_ROWS.format(where=where), params)
            )
    for witness in options.witnesses:
        anchoring.load_witness(witness, options.chain_ids)
    anchoring.prepare()
    if options.trusted_keys is not None:
        report.checks.append(f"checkpoint signatures ({len(options.trusted_keys)} trusted key(s))")
    elif anchoring.database_rows:
        report.checks.append("checkpoints (signatures NOT checked)")
    for witness in options.witnesses:
        report.checks.append(witness.description)
    return anchoring


def _require_schema(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT to_regclass('audit_logs'), to_regclass('audit_chains')").fetchone()
    if not row or row[0] is None or row[1] is None:
        raise DatabaseNotReady(
            "no otel-audit tables (audit_logs, audit_chains) in this database / search_path; "
            "check --dsn, or run `otel-audit db init` if this is a new database"
        )


def _load_registry(
    conn: psycopg.Connection, report: VerificationReport, chain_ids: list[str] | None
) -> dict[str, str | None]:
    """chain id -> genesis hash to start its links from (None when it cannot be trusted)."""
    registry: dict[str, str | None] = {}
    # The projections are read as text (created_at rendered like the genesis member, emitter with every
    # digit of its numbers) and compared with the sealed genesis here: see _check_registry_columns.
    query = f"SELECT chain_id::text, genesis, genesis_hash, emitter::text, {utc_text('created_at')} FROM audit_chains"
    params: tuple[Any, ...] = ()
    if chain_ids:
        query += " WHERE chain_id = ANY(%s::uuid[])"
        params = (chain_ids,)
    for chain_id, genesis, stored_hash, emitter_text, created_at in conn.execute(query, params):
        genesis = bytes(genesis)
        computed = genesis_hash(genesis)
        try:
            doc = orjson.loads(genesis)
        except orjson.JSONDecodeError:
            doc = None
        # What verify --json and status show is the sealed genesis, not the columns (which are checked below).
        emitter = doc.get("emitter") if isinstance(doc, dict) else loads_or_unreadable(emitter_text)
        summary = report.chains[chain_id] = ChainSummary(chain_id, registered=True, emitter=emitter)
        if computed != stored_hash or not isinstance(doc, dict) or doc.get("chain_id") != chain_id:
            report.add(
                Finding(
                    Kind.GENESIS_MODIFIED,
                    Severity.ERROR,
                    chain_id,
                    0,
                    "the chain's registry entry (audit_chains) does not match its genesis hash or names another chain",
                )
            )
            # Links from record 1 are checked against the hash the genesis bytes really have.
        else:
            _check_registry_columns(report, chain_id, doc, genesis, emitter_text, created_at)
        registry[chain_id] = computed
        summary.extra["created"] = doc.get("created") if isinstance(doc, dict) else None
        if isinstance(doc, dict):
            # Sealed (record 1 links to these bytes, checkpoints sign their hash): the anchoring checks use them.
            if "checkpoints" in doc:
                summary.extra["checkpoint_policy"] = doc["checkpoints"]
            if "parent" in doc:
                summary.extra["parent"] = doc["parent"]
    missing = _unregistered_chains(conn, registry, chain_ids)
    for chain_id in missing:
        report.chains[chain_id] = ChainSummary(chain_id, registered=False)
        report.add(
            Finding(
                Kind.UNREGISTERED_CHAIN,
                Severity.ERROR,
                chain_id,
                None,
                "records of this chain exist but the chain is not in audit_chains (registry entry deleted, or "
                "records forged under an invented chain id); its first link cannot be checked",
            )
        )
        registry[chain_id] = None
    return registry


def _check_registry_columns(
    report: VerificationReport,
    chain_id: str,
    doc: dict[str, Any],
    genesis: bytes,
    emitter_text: str | None,
    created_at: str | None,
) -> None:
    """audit_chains.created_at and .emitter are projections of the sealed genesis: each must equal its member
    exactly (``created`` as text to the microsecond, ``emitter`` as JSON by type and exact value; an absent
    member projects to ``{}``). ``registered_at`` (when the row was inserted) and ``delivered_by`` (checked
    against the ingest's attestations) are not projections."""
    if "emitter" in doc:
        emitter_same = json_column_equal(doc, "emitter", loads_or_unreadable(emitter_text), emitter_text, genesis)
    else:
        emitter_same = emitter_text is not None and loads_or_unreadable(emitter_text) == {}
    for column, same, stored, sealed in (
        ("created_at", created_at is not None and created_at == doc.get("created"), created_at, doc.get("created")),
        ("emitter", emitter_same, emitter_text, doc.get("emitter", {})),
    ):
        if not same:
            report.add(
                Finding(
                    Kind.REGISTRY_MISMATCH,
                    Severity.ERROR,
                    chain_id,
                    0,
                    f"column audit_chains.{column} was changed: stored {stored!r}, sealed in the chain's genesis "
                    f"{sealed!r}",
                )
            )


def _unregistered_chains(conn: psycopg.Connection, registry: dict[str, Any], chain_ids: list[str] | None) -> list[str]:
    # A loose index scan over the unique (chain_id, seq) index: cheap however many rows.
    rows = conn.execute(
        """
        WITH RECURSIVE c AS (
            (SELECT chain_id FROM audit_logs ORDER BY chain_id LIMIT 1)
            UNION ALL
            SELECT (SELECT chain_id FROM audit_logs WHERE chain_id > c.chain_id ORDER BY chain_id LIMIT 1)
            FROM c WHERE c.chain_id IS NOT NULL
        )
        SELECT chain_id::text FROM c WHERE chain_id IS NOT NULL
        UNION
        SELECT DISTINCT chain_id::text FROM audit_quarantine
        """
    ).fetchall()
    found = [r[0] for r in rows]
    if chain_ids:
        found = [c for c in found if c in chain_ids]
    return [c for c in found if c not in registry]


def _load_quarantine(
    conn: psycopg.Connection, chain_ids: list[str] | None
) -> dict[str, list[tuple[int, str, bytes, str | None]]]:
    """chain id column -> its audit_quarantine rows (seq column, hash, bytes, reason)."""
    out: dict[str, list[tuple[int, str, bytes, str | None]]] = {}
    for chain_id, seq, stored_hash, canonical, reason in conn.execute(
        "SELECT chain_id::text, seq, hash, canonical, reason FROM audit_quarantine ORDER BY chain_id, seq"
    ):
        if chain_ids and chain_id not in chain_ids:
            continue
        out.setdefault(chain_id, []).append((seq, stored_hash, bytes(canonical), reason))
    return out


@contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    if enabled is None:
        enabled = sys.stderr.isatty() and total > 200_000
    if not enabled:
        yield lambda n: None
        return
    from tqdm import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        monitor_interval = 0  # no monitor thread: worker processes are forked after the bar starts

    bar = Bar(total=total, unit="rec", unit_scale=True, desc="verifying", file=sys.stderr, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()
