"""Investigators' questions over an archive, alone or together with the live database.

The same four questions as :mod:`otel_audit.query` (actor, resource, failures,
trace) answered from the records bundles that the archive's manifests list
(files no manifest lists, such as those of an interrupted run, are never
read), with Parquet row-group statistics skipping what cannot match. Given a
live connection too, live rows are added and a record present in both (archived
but not yet removed from PostgreSQL) is counted once, by (chain_id, seq).

For SQL at scale, any Parquet engine reads the bundles as they are: see the
DuckDB examples in docs/archive.md.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from otel_audit import query as live
from otel_audit.archive.store import ArchiveStore
from otel_audit.archive.writer import load_manifests
from otel_audit.query import QueryResult

__all__ = ["archive_files", "read_records", "actor_activity", "failed_attempts", "resource_access", "trace_records"]


def archive_files(store: ArchiveStore) -> list[str]:
    """The records bundles the archive's signed manifests list, in run order."""
    return [f["path"] for m in load_manifests(store) for f in m.doc["files"] if f["kind"] == "records"]


def read_records(store: ArchiveStore, columns: Sequence[str], filters: list[Any]) -> list[dict[str, Any]]:
    """Rows of every listed bundle matching ``filters`` (pyarrow DNF filters), as dicts."""
    import pyarrow.parquet as pq

    out: list[dict[str, Any]] = []
    for path in archive_files(store):
        table = pq.read_table(io.BytesIO(store.get(path)), columns=list(columns), filters=filters or None)
        out.extend(table.to_pylist())
    return out


def _merge(
    columns: list[str],
    archived: list[dict[str, Any]],
    live_result: QueryResult | None,
    order: str,
    descending: bool,
    limit: int,
) -> QueryResult:
    seen: set[tuple[str, int]] = set()
    rows: list[dict[str, Any]] = []
    for row in archived:
        key = (str(row["chain_id"]), int(row["seq"]))
        if key not in seen:
            seen.add(key)
            rows.append(row)
    if live_result is not None:
        for row in live_result.as_dicts():
            key = (str(row["chain_id"]), int(row["seq"]))
            if key not in seen:
                seen.add(key)
                rows.append({c: _plain(row.get(c)) for c in columns})
    rows.sort(key=lambda r: (r[order], str(r["chain_id"]), r["seq"]), reverse=descending)
    return QueryResult(columns, [tuple(r.get(c) for c in columns) for r in rows[:limit]])


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, datetime, list)):
        return value
    return str(value)  # inet, uuid


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def actor_activity(
    store: ArchiveStore,
    actor_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
    conn: psycopg.Connection | None = None,
    aliases: Sequence[str] = (),
) -> QueryResult:
    """Everything an actor did between ``since`` and ``until`` (default: all time), newest first.

    ``aliases``: the actor's pseudonyms under each key of the ring, which match as well.
    """
    columns = [
        "timestamp",
        "action",
        "resource_type",
        "resource_id",
        "result",
        "ip_address",
        "reason",
        "trace_id",
        "chain_id",
        "seq",
    ]
    filters: list[Any] = [("actor_id", "in", [actor_id, *aliases])] if aliases else [("actor_id", "=", actor_id)]
    if since is not None:
        filters.append(("timestamp", ">", _utc(since)))
    if until is not None:
        filters.append(("timestamp", "<=", _utc(until)))
    rows = read_records(store, columns, filters)
    live_rows = None
    if conn is not None:
        live_rows = live.actor_activity(
            conn,
            actor_id,
            since=since or datetime(1, 1, 1, tzinfo=timezone.utc),
            until=until,
            limit=limit,
            aliases=aliases,
        )
    return _merge(columns, rows, live_rows, "timestamp", True, limit)


def resource_access(
    store: ArchiveStore,
    resource_type: str,
    resource_id: str,
    *,
    since: datetime | None = None,
    limit: int = 1000,
    conn: psycopg.Connection | None = None,
) -> QueryResult:
    columns = [
        "timestamp",
        "actor_id",
        "actor_type",
        "action",
        "result",
        "ip_address",
        "reason",
        "session_id",
        "trace_id",
        "chain_id",
        "seq",
    ]
    filters: list[Any] = [("resource_type", "=", resource_type), ("resource_id", "=", resource_id)]
    if since is not None:
        filters.append(("timestamp", ">", _utc(since)))
    rows = read_records(store, columns, filters)
    live_rows = live.resource_access(conn, resource_type, resource_id, since=since, limit=limit) if conn else None
    return _merge(columns, rows, live_rows, "timestamp", True, limit)


def trace_records(
    store: ArchiveStore, trace_id: str, *, limit: int = 10_000, conn: psycopg.Connection | None = None
) -> QueryResult:
    columns = [
        "timestamp",
        "service_name",
        "actor_id",
        "action",
        "resource_type",
        "resource_id",
        "result",
        "span_id",
        "chain_id",
        "seq",
    ]
    trace_id = trace_id.strip().lower().removeprefix("0x")
    rows = read_records(store, columns, [("trace_id", "=", trace_id)])
    live_rows = live.trace_records(conn, trace_id, limit=limit) if conn else None
    return _merge(columns, rows, live_rows, "timestamp", False, limit)


def failed_attempts(
    store: ArchiveStore,
    *,
    since: datetime,
    until: datetime | None = None,
    threshold: int = 5,
    conn: psycopg.Connection | None = None,
) -> QueryResult:
    """Actors with more than ``threshold`` failed or denied attempts between ``since`` and ``until``."""
    columns = ["actor_id", "result", "timestamp", "chain_id", "seq"]
    filters: list[Any] = [("result", "in", ["failure", "denied"]), ("timestamp", ">", _utc(since))]
    if until is not None:
        filters.append(("timestamp", "<=", _utc(until)))
    rows = {(r["chain_id"], r["seq"]): r for r in read_records(store, columns, filters)}
    if conn is not None:
        for chain_id, seq, actor_id, result, stamp in conn.execute(
            "SELECT chain_id::text, seq, actor_id, result, timestamp FROM audit_logs "
            "WHERE result IN ('failure', 'denied') AND timestamp > %s "
            "AND (%s::timestamptz IS NULL OR timestamp <= %s)",
            (since, until, until),
        ):
            rows.setdefault((chain_id, seq), {"actor_id": actor_id, "result": result, "timestamp": stamp})
    per_actor: dict[Any, list[Any]] = {}
    for row in rows.values():
        entry = per_actor.setdefault(row["actor_id"], [0, 0, None])
        entry[0] += 1
        entry[1] += row["result"] == "denied"
        entry[2] = row["timestamp"] if entry[2] is None else max(entry[2], row["timestamp"])
    out = [(actor, n, denied, last) for actor, (n, denied, last) in per_actor.items() if n > threshold]
    out.sort(key=lambda r: (-r[1], str(r[0])))
    return QueryResult(["actor_id", "failed_attempts", "denied", "last_attempt"], out)


def default_window() -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=24)
