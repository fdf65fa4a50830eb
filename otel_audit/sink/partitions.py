"""Monthly partitions of ``audit_logs``: created ahead of need, listed, and reported.

``audit_logs`` is partitioned by the month (UTC) of the sealed timestamp
(schema version 3). A partition is created by the SECURITY DEFINER function
``otel_audit_ensure_partitions(from, to)``, which the insert-only writer role
may call: the sink calls it when it connects and every hour, for the previous
month up to ``ahead`` months ahead, and ``otel-audit db maintain`` does the
same from cron. Rows for which no partition exists yet (a clock far off, an
OTLP client sending old or future timestamps) go to the default partition:
an insert never fails for want of a partition. ``db maintain`` then gives
those rows a partition of their own when their month is within
:data:`REHOME_FROM` .. now + ``REHOME_AHEAD_MONTHS`` (creating a partition
moves its month's rows out of the default partition in the same transaction);
rows outside that window stay in the default partition, which retention never
drops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg

__all__ = [
    "DEFAULT_AHEAD_MONTHS",
    "Partition",
    "ensure_partitions",
    "is_partitioned",
    "list_partitions",
    "rehome_default_rows",
]

_log = logging.getLogger("otel_audit.sink")

#: Months created ahead of the current one.
DEFAULT_AHEAD_MONTHS = 3
#: Rows of the default partition older than this keep living there (timestamps no real trail has).
REHOME_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)
#: ... and those more than this many months in the future.
REHOME_AHEAD_MONTHS = 13


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: MINVALUE (the legacy partition) or the default partition
    upper: datetime | None
    default: bool
    rows: int  # estimate (pg_class.reltuples) unless counted
    bytes: int  # table + indexes + TOAST


def is_partitioned(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = to_regclass('audit_logs')"
    ).fetchone()
    return bool(row and row[0])


def ensure_partitions(
    conn: psycopg.Connection,
    *,
    ahead: int = DEFAULT_AHEAD_MONTHS,
    behind: int = 1,
    lock_timeout: str | None = "2s",
    now: datetime | None = None,
) -> list[str]:
    """Create the partitions from ``behind`` months ago to ``ahead`` months ahead; returns those created.

    ``lock_timeout`` bounds the wait for the locks ATTACH needs (a long
    verification holds the default partition): the sink rather retries an hour
    later than stall; rows meanwhile go to the default partition.
    """
    now = now or datetime.now(timezone.utc)
    with conn.transaction():
        if lock_timeout:
            conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (lock_timeout,))
        rows = conn.execute(
            "SELECT otel_audit_ensure_partitions(%(now)s::timestamptz - make_interval(months => %(behind)s), "
            "%(now)s::timestamptz + make_interval(months => %(ahead)s))",
            {"now": now, "behind": behind, "ahead": ahead},
        ).fetchall()
    return [r[0] for r in rows]


def rehome_default_rows(conn: psycopg.Connection, *, lock_timeout: str | None = None) -> list[str]:
    """Give the default partition's rows whose month is plausible a partition of their own; returns those created."""
    months = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT date_trunc('month', timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
            "FROM audit_logs_default WHERE timestamp >= %s "
            "AND timestamp < now() + make_interval(months => %s) ORDER BY 1",
            (REHOME_FROM, REHOME_AHEAD_MONTHS),
        )
    ]
    made: list[str] = []
    for month in months:
        with conn.transaction():
            if lock_timeout:
                conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (lock_timeout,))
            row = conn.execute("SELECT otel_audit_ensure_partition(%s)", (month,)).fetchone()
        if row and row[0]:
            made.append(row[0])
    return made


def list_partitions(conn: psycopg.Connection, *, count: bool = False) -> list[Partition]:
    """Every partition of ``audit_logs`` in time order (the default partition last)."""
    out: list[Partition] = []
    for name, bound, estimate, size in conn.execute(
        "SELECT c.relname, pg_catalog.pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint, "
        "pg_catalog.pg_total_relation_size(c.oid) "
        "FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass('audit_logs')"
    ):
        default = bound == "DEFAULT"
        lower = upper = None
        if not default:
            lower, upper = _bounds(conn, bound)
        rows = max(int(estimate), 0)
        if count:
            rows = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # type: ignore[index]
        out.append(Partition(name, lower, upper, default, rows, int(size)))
    far = datetime.max.replace(tzinfo=timezone.utc)
    out.sort(key=lambda p: (p.default, p.lower or datetime.min.replace(tzinfo=timezone.utc), p.upper or far))
    return out


def _bounds(conn: psycopg.Connection, bound: str) -> tuple[datetime | None, datetime | None]:
    # "FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')", or MINVALUE
    inner = bound.removeprefix("FOR VALUES FROM (").rstrip(")")
    lo_text, _, hi_text = inner.partition(") TO (")
    values: list[datetime | None] = []
    for text in (lo_text, hi_text):
        text = text.strip()
        if text.upper() in ("MINVALUE", "MAXVALUE"):
            values.append(None)
        else:
            values.append(conn.execute("SELECT %s::timestamptz", (text.strip("'"),)).fetchone()[0])  # type: ignore[index]
    return values[0], values[1]
