"""``otel-audit archive``: copy every record older than a date into signed Parquet bundles.

What a run archives, per chain: the records from the one after the chain's
archived prefix up to ``E``, where ``E`` is the first signed checkpoint at or
after the newest record older than ``--before`` (so the archived prefix ends
on a signed head; without such a checkpoint, at that newest record). Chains
are hash chains, so the archive always holds a *prefix* of each chain: every
record older than the date is in it, and a few newer ones may be too. Beside
the records go the chain's checkpoints up to ``E`` and, for a chain archived
from its start, its genesis document.

A run is resumable and idempotent: it first writes a *plan* (the exact chain
ranges of each bundle), then the bundles, then the signed manifest. A run
killed anywhere is rerun with the same command: it finds the plan of the run
that has no manifest yet and writes the same bundles again (identical bytes:
existing objects are skipped, nothing is overwritten), so the archive ends up
with no gap and no duplicate. Records are read from PostgreSQL and checked
while they are written (sequence, hash, link); a chain that does not verify
is not archived (:class:`ArchiveIntegrityError`).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
from psycopg import IsolationLevel

from otel_audit.archive.format import (
    ARCHIVE_FORMAT,
    RECORD_COLUMNS,
    Manifest,
    ManifestError,
    checkpoints_schema,
    derive_columns,
    manifest_name,
    parse_manifest,
    records_schema,
    run_of_manifest_name,
    sign_manifest,
)
from otel_audit.archive.store import ArchiveStore, sha256_hex
from otel_audit.core.checkpoint import CheckpointFormatError, parse_checkpoint
from otel_audit.core.keys import SigningKey
from otel_audit.core.record import RECORD_DOMAIN, format_timestamp
from otel_audit.errors import ArchiveError, ArchiveIntegrityError, InvalidInput

__all__ = ["ArchiveIntegrityError", "ArchiveResult", "archive_database", "load_manifests"]

#: pg_try_advisory_lock key: one archive run per database at a time.
ARCHIVE_LOCK_KEY = 0x07E1A0D2
DEFAULT_RECORDS_PER_FILE = 100_000
ROW_GROUP = 65_536


@dataclass
class ArchiveResult:
    run: int | None = None  # None: nothing was due
    resumed: bool = False
    records: int = 0
    checkpoints: int = 0
    chains: int = 0
    files: list[str] = field(default_factory=list)
    written: int = 0  # objects written by this invocation (the others existed from an interrupted attempt)
    bytes: int = 0
    manifest: str | None = None
    manifest_hash: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------------------ manifests
def load_manifests(store: ArchiveStore) -> list[Manifest]:
    """The archive's manifests in run order, checked for numbering and hash links (not signatures)."""
    manifests: list[Manifest] = []
    for path in store.list("manifests/"):
        run = run_of_manifest_name(path)
        if run is None:
            continue
        try:
            manifest = parse_manifest(store.get(path))
        except ManifestError as exc:
            raise ArchiveError(f"{path} is not a valid manifest ({exc}); run `otel-audit verify-archive`") from exc
        if manifest.run != run:
            raise ArchiveError(f"{path} holds the manifest of run {manifest.run}; run `otel-audit verify-archive`")
        manifests.append(manifest)
    manifests.sort(key=lambda m: m.run)
    for i, manifest in enumerate(manifests):
        if manifest.run != i + 1 or (i and manifest.doc["prev"] != manifests[i - 1].hash):
            raise ArchiveError(
                f"the archive's manifests do not chain at run {manifest.run}; run `otel-audit verify-archive` "
                "before adding to it"
            )
    return manifests


# ------------------------------------------------------------------------------------------------ the run
def archive_database(
    conn: psycopg.Connection,
    store: ArchiveStore,
    *,
    before: datetime,
    key: SigningKey,
    records_per_file: int = DEFAULT_RECORDS_PER_FILE,
    progress: Callable[[int], None] | None = None,
    now: Callable[[], int] = time.time_ns,
) -> ArchiveResult:
    """Archive every record older than ``before`` (see the module docstring)."""
    started = time.monotonic()
    if before.tzinfo is None:
        raise InvalidInput("before must be timezone-aware")
    with _advisory_lock(conn):
        manifests = load_manifests(store)
        newest = manifests[-1] if manifests else None
        run = (newest.run + 1) if newest else 1
        state: dict[str, Any] = newest.doc["state"]["chains"] if newest else {}
        plan_path = f"plans/{run:06d}.json"
        result = ArchiveResult()
        try:
            plan = orjson.loads(store.get(plan_path))
            result.resumed = True
        except FileNotFoundError:
            plan = _make_plan(
                conn, state, before, records_per_file, run, newest.doc["archive_id"] if newest else str(uuid.uuid4())
            )
            if plan is None:
                result.seconds = time.monotonic() - started
                return result
            store.put(plan_path, orjson.dumps(plan, option=orjson.OPT_SORT_KEYS))
            result.written += 1
        result.run = run
        files: list[dict[str, Any]] = []
        chains: dict[str, dict[str, Any]] = {}
        with _snapshot(conn):
            for entry in plan["records"]:
                data, summary = _records_bundle(conn, entry["segments"], plan["chains"], state, chains, progress)
                result.written += store.put(entry["path"], data)
                files.append(
                    {
                        "path": entry["path"],
                        "kind": "records",
                        "sha256": sha256_hex(data),
                        "bytes": len(data),
                        "rows": summary,
                        "chains": entry["segments"],
                    }
                )
                result.records += summary
                result.bytes += len(data)
            for entry in plan["checkpoints"]:
                data, rows = _checkpoints_bundle(conn, entry["segments"], chains)
                result.written += store.put(entry["path"], data)
                files.append(
                    {
                        "path": entry["path"],
                        "kind": "checkpoints",
                        "sha256": sha256_hex(data),
                        "bytes": len(data),
                        "rows": rows,
                        "chains": entry["segments"],
                    }
                )
                result.checkpoints += rows
                result.bytes += len(data)
        new_state = {c: dict(v) for c, v in state.items()}
        for chain_id, info in chains.items():
            old = new_state.get(chain_id, {"last_seq": 0, "last_hash": None, "last_n": 0})
            if info["records"]:
                old["last_seq"], old["last_hash"] = info["last_seq"], info["last_hash"]
            if info["checkpoints"] is not None:
                old["last_n"] = info["checkpoints"][1]
            new_state[chain_id] = old
        total = (newest.doc["state"]["records"] if newest else 0) + result.records
        doc = {
            "v": ARCHIVE_FORMAT,
            "type": "archive_manifest",
            "archive_id": plan["archive_id"],
            "run": run,
            "prev": newest.hash if newest else None,
            "created": format_timestamp(now()),
            "before": plan["before"],
            "files": files,
            "chains": [{"chain_id": c, **chains[c]} for c in sorted(chains)],
            "state": {"records": total, "chains": dict(sorted(new_state.items()))},
        }
        manifest = sign_manifest(key, doc)
        result.written += store.put(manifest_name(run), manifest.envelope)
        result.manifest, result.manifest_hash = manifest_name(run), manifest.hash
        result.files = [f["path"] for f in files]
        result.chains = len(chains)
        result.seconds = time.monotonic() - started
        return result


@contextmanager
def _advisory_lock(conn: psycopg.Connection) -> Iterator[None]:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ARCHIVE_LOCK_KEY,)).fetchone()
    if not row or not row[0]:
        raise ArchiveError("another otel-audit archive run is in progress against this database; wait for it")
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ARCHIVE_LOCK_KEY,))


@contextmanager
def _snapshot(conn: psycopg.Connection) -> Iterator[None]:
    saved = conn.autocommit
    conn.autocommit = False
    conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level, conn.read_only = None, None
        conn.autocommit = saved


def _make_plan(
    conn: psycopg.Connection, state: dict[str, Any], before: datetime, per_file: int, run: int, archive_id: str
) -> dict[str, Any] | None:
    with _snapshot(conn):
        due = conn.execute(
            "SELECT chain_id::text, max(seq) FROM audit_logs WHERE timestamp < %s GROUP BY chain_id", (before,)
        ).fetchall()
        ends = {}
        if due:
            ends = {
                c: (e, n)
                for c, e, n in conn.execute(
                    "SELECT x.c::text, coalesce((SELECT min(seq) FROM audit_checkpoints k WHERE k.chain_id = x.c "
                    "AND k.seq >= x.s), x.s) AS e, NULL::bigint FROM unnest(%s::uuid[], %s::bigint[]) AS x(c, s)",
                    ([c for c, _ in due], [s for _, s in due]),
                )
            }
        # Checkpoints up to each chain's end (also for chains whose records were archived earlier).
        chain_ids = sorted(set(ends) | set(state))
        last_n: dict[str, int | None] = (
            dict(
                conn.execute(
                    "SELECT x.c::text, (SELECT max(n) FROM audit_checkpoints k WHERE k.chain_id = x.c AND k.seq <= x.e) "
                    "FROM unnest(%s::uuid[], %s::bigint[]) AS x(c, e)",
                    (
                        chain_ids,
                        [max(ends.get(c, (0, None))[0], state.get(c, {}).get("last_seq", 0)) for c in chain_ids],
                    ),
                ).fetchall()
            )
            if chain_ids
            else {}
        )
        genesis = {}
        starting = [c for c in ends if c not in state]
        if starting:
            genesis = {
                c: (bytes(g).decode("utf-8"), h)
                for c, g, h in conn.execute(
                    "SELECT chain_id::text, genesis, genesis_hash FROM audit_chains WHERE chain_id = ANY(%s::uuid[])",
                    (starting,),
                )
            }
    records: list[dict[str, Any]] = []
    segments: list[list[Any]] = []
    rows = 0

    def close() -> None:
        nonlocal segments, rows
        if segments:
            records.append({"path": f"records/run={run:06d}/part-{len(records) + 1:05d}.parquet", "segments": segments})
        segments, rows = [], 0

    chains: dict[str, Any] = {}
    for chain_id in sorted(ends):
        first = state.get(chain_id, {}).get("last_seq", 0) + 1
        last = ends[chain_id][0]
        if last < first:
            continue
        if first == 1 and chain_id not in genesis:
            raise ArchiveIntegrityError(
                f"chain {chain_id} has records but no registry entry (audit_chains): its first link cannot be "
                "checked, so it is not archived. Run `otel-audit verify`"
            )
        chains[chain_id] = {
            "genesis": genesis[chain_id][0] if first == 1 else None,
            "genesis_hash": genesis[chain_id][1] if first == 1 else None,
        }
        a = first
        while a <= last:
            b = min(last, a + (per_file - rows) - 1)
            segments.append([chain_id, a, b])
            rows += b - a + 1
            a = b + 1
            if rows >= per_file:
                close()
    close()
    checkpoint_segments = []
    for chain_id in chain_ids:
        top = last_n.get(chain_id)
        low = state.get(chain_id, {}).get("last_n", 0) + 1
        if top is not None and top >= low:
            checkpoint_segments.append([chain_id, low, top])
            chains.setdefault(chain_id, {"genesis": None, "genesis_hash": None})
    if not records and not checkpoint_segments:
        return None
    return {
        "v": ARCHIVE_FORMAT,
        "run": run,
        "archive_id": archive_id,
        "before": format_timestamp(int(before.timestamp() * 1_000_000) * 1000),
        "chains": chains,
        "records": records,
        "checkpoints": [{"path": f"checkpoints/run={run:06d}/part-00001.parquet", "segments": checkpoint_segments}]
        if checkpoint_segments
        else [],
    }


_SEGMENT = (
    "COPY (SELECT seq, hash, canonical, 0 AS src FROM audit_logs WHERE chain_id = %(c)s AND seq BETWEEN %(a)s AND %(b)s "
    "UNION ALL SELECT seq, hash, canonical, 1 FROM audit_quarantine WHERE chain_id = %(c)s "
    "AND seq BETWEEN %(a)s AND %(b)s ORDER BY 1, 4) TO STDOUT (FORMAT BINARY)"
)


def _records_bundle(
    conn: psycopg.Connection,
    segments: list[list[Any]],
    plan_chains: dict[str, Any],
    state: dict[str, Any],
    chains: dict[str, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> tuple[bytes, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = records_schema()
    sink = io.BytesIO()
    writer = pq.ParquetWriter(
        sink,
        schema,
        compression="zstd",
        compression_level=9,
        use_dictionary=[c for c in RECORD_COLUMNS if c not in ("canonical", "id", "seq")],
        write_statistics=[
            "chain_id",
            "seq",
            "timestamp",
            "actor_id",
            "resource_type",
            "resource_id",
            "action",
            "result",
            "trace_id",
        ],
    )
    total = 0
    pending: list[Any] = []  # tables of checked rows, written as row groups of about ROW_GROUP rows
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
        pending, pending_rows = [], 0

    for chain_id, first, last in segments:
        info = chains.get(chain_id)
        if info is None:
            archived = state.get(chain_id)
            link = archived["last_hash"] if archived and first > 1 else plan_chains[chain_id]["genesis_hash"]
            info = chains[chain_id] = {
                "first_seq": first,
                "last_seq": first - 1,
                "first_prev": link,
                "last_hash": link,
                "records": 0,
                "checkpoints": None,
                "genesis": plan_chains[chain_id]["genesis"],
            }
        link, expected = info["last_hash"], first
        if expected != info["last_seq"] + 1:
            raise ArchiveIntegrityError(f"chain {chain_id}: the plan's ranges do not follow each other at seq {first}")
        batch: list[bytes] = []

        def check(batch: list[bytes], first_seq: int, link: str) -> str:
            """Check one chunk (sealed position, chain, link), queue it for writing; returns the new link."""
            nonlocal pending_rows
            derived = derive_columns(batch)
            seqs = derived.column("seq").to_pylist()
            prevs = derived.column("prev_hash").to_pylist()
            owners = derived.column("chain_id").to_pylist()
            for i, canonical in enumerate(batch):
                if seqs[i] != first_seq + i or owners[i] != chain_id or prevs[i] != link:
                    raise ArchiveIntegrityError(
                        f"chain {chain_id} seq {first_seq + i}: the record was sealed for another position or does "
                        "not link to the one before; the chain is not archived. Run `otel-audit verify`"
                    )
                link = hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest()
            arrays = [derived.column(name) for name in RECORD_COLUMNS[:-1]]
            arrays.append(pa.array(batch, type=pa.binary()).cast(pa.string()))
            pending.append(pa.Table.from_arrays(arrays, schema=schema))
            pending_rows += len(batch)
            if pending_rows >= ROW_GROUP:
                flush()
            if progress is not None:
                progress(len(batch))
            return link

        with conn.cursor() as cur, cur.copy(_SEGMENT, {"c": chain_id, "a": first, "b": last}) as copy:
            copy.set_types(["int8", "text", "bytea", "int4"])
            previous_seq = None
            chunk_first = expected
            for seq, stored_hash, canonical, _src in copy.rows():
                if seq == previous_seq:
                    continue  # a refused copy in audit_quarantine of a stored position: the stored row holds it
                previous_seq = seq
                if seq != expected:
                    raise ArchiveIntegrityError(
                        f"chain {chain_id}: record {expected} is missing from the database (found {seq} next); "
                        "the chain is not archived. Run `otel-audit verify`"
                    )
                if hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest() != stored_hash:
                    raise ArchiveIntegrityError(
                        f"chain {chain_id} seq {seq}: the stored bytes do not match the stored hash; the chain is "
                        "not archived. Run `otel-audit verify`"
                    )
                batch.append(canonical)
                expected += 1
                if len(batch) >= ROW_GROUP:
                    link = check(batch, chunk_first, link)
                    batch, chunk_first = [], expected
        if batch:
            link = check(batch, chunk_first, link)
        if expected != last + 1:
            raise ArchiveIntegrityError(
                f"chain {chain_id}: records {expected}..{last} are missing from the database; not archived. "
                "Run `otel-audit verify`"
            )
        info["last_seq"], info["last_hash"] = last, link
        info["records"] += last - first + 1
        total += last - first + 1
    flush()
    writer.close()
    return sink.getvalue(), total


def _checkpoints_bundle(
    conn: psycopg.Connection, segments: list[list[Any]], chains: dict[str, dict[str, Any]]
) -> tuple[bytes, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {"chain_id": [], "n": [], "seq": [], "body": [], "signature": []}
    for chain_id, low, high in segments:
        expected = low
        for n, seq, body, signature in conn.execute(
            "SELECT n, seq, body, signature FROM audit_checkpoints WHERE chain_id = %s AND n BETWEEN %s AND %s "
            "ORDER BY n",
            (chain_id, low, high),
        ):
            try:
                cp = parse_checkpoint(bytes(body), bytes(signature))
            except CheckpointFormatError as exc:
                raise ArchiveIntegrityError(
                    f"chain {chain_id} checkpoint {n} is not a valid checkpoint ({exc}); not archived. "
                    "Run `otel-audit verify`"
                ) from exc
            if n != expected or cp.n != n or cp.chain_id != chain_id:
                raise ArchiveIntegrityError(
                    f"chain {chain_id}: checkpoint {expected} is missing or misplaced in the database; not archived. "
                    "Run `otel-audit verify`"
                )
            columns["chain_id"].append(chain_id)
            columns["n"].append(n)
            columns["seq"].append(seq)
            columns["body"].append(bytes(body).decode("utf-8"))
            columns["signature"].append(bytes(signature))
            expected += 1
        if expected != high + 1:
            raise ArchiveIntegrityError(f"chain {chain_id}: checkpoints {expected}..{high} are missing; not archived")
        info = chains.setdefault(
            chain_id,
            {
                "first_seq": None,
                "last_seq": None,
                "first_prev": None,
                "last_hash": None,
                "records": 0,
                "checkpoints": None,
                "genesis": None,
            },
        )
        info["checkpoints"] = [low, high]
    sink = io.BytesIO()
    table = pa.table(columns, schema=checkpoints_schema())
    pq.write_table(table, sink, compression="zstd", compression_level=9)
    return sink.getvalue(), table.num_rows


def utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
