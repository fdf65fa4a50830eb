"""Investigators' questions, as parameterized queries over ``audit_logs``.

The first three are the seed's example queries (they run unchanged against the
table too); the fourth follows one request across services by trace id. Each
returns column names and rows, ready for table, JSON or CSV output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

__all__ = [
    "QueryResult",
    "actor_activity",
    "failed_attempts",
    "parse_duration",
    "resource_access",
    "trace_records",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``24h``, ``15m``, ``90s``, ``2w`` -> timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number and one of s, m, h, d, w (e.g. 30d, 24h)")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _run(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> QueryResult:
    cur = conn.execute(sql, params)
    columns = [d.name for d in cur.description or []]
    return QueryResult(columns, cur.fetchall())


def actor_activity(
    conn: psycopg.Connection,
    actor_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> QueryResult:
    """Everything an actor did (default: the last 30 days), newest first."""
    since = since or datetime.now(timezone.utc) - timedelta(days=30)
    return _run(
        conn,
        """
        SELECT timestamp, action, resource_type, resource_id, result, ip_address, reason, trace_id,
               chain_id, seq
        FROM audit_logs
        WHERE actor_id = %(actor)s AND timestamp > %(since)s AND (%(until)s::timestamptz IS NULL OR timestamp <= %(until)s)
        ORDER BY timestamp DESC, chain_id, seq DESC
        LIMIT %(limit)s
        """,
        {"actor": actor_id, "since": since, "until": until, "limit": limit},
    )


def resource_access(
    conn: psycopg.Connection,
    resource_type: str,
    resource_id: str,
    *,
    since: datetime | None = None,
    limit: int = 1000,
) -> QueryResult:
    """All access to one resource (all time unless ``since``), newest first."""
    return _run(
        conn,
        """
        SELECT timestamp, actor_id, actor_type, action, result, ip_address, reason, session_id, trace_id,
               chain_id, seq
        FROM audit_logs
        WHERE resource_type = %(rtype)s AND resource_id = %(rid)s
          AND (%(since)s::timestamptz IS NULL OR timestamp > %(since)s)
        ORDER BY timestamp DESC, chain_id, seq DESC
        LIMIT %(limit)s
        """,
        {"rtype": resource_type, "rid": resource_id, "since": since, "limit": limit},
    )


def failed_attempts(
    conn: psycopg.Connection,
    *,
    window: timedelta = timedelta(hours=24),
    threshold: int = 5,
) -> QueryResult:
    """Actors with more than ``threshold`` failed or denied attempts in ``window`` (security monitoring)."""
    return _run(
        conn,
        """
        SELECT actor_id, COUNT(*) AS failed_attempts, COUNT(*) FILTER (WHERE result = 'denied') AS denied,
               MAX(timestamp) AS last_attempt
        FROM audit_logs
        WHERE result IN ('failure', 'denied') AND timestamp > now() - %(window)s
        GROUP BY actor_id
        HAVING COUNT(*) > %(threshold)s
        ORDER BY failed_attempts DESC, actor_id
        """,
        {"window": window, "threshold": threshold},
    )


def trace_records(conn: psycopg.Connection, trace_id: str, *, limit: int = 10_000) -> QueryResult:
    """Every audit record written while serving one trace, in time order."""
    trace_id = trace_id.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{32}", trace_id):
        raise ValueError(f"{trace_id!r} is not a trace id: expected 32 hexadecimal digits")
    return _run(
        conn,
        """
        SELECT timestamp, service_name, actor_id, action, resource_type, resource_id, result, span_id,
               chain_id, seq
        FROM audit_logs
        WHERE trace_id = %(trace)s
        ORDER BY timestamp, chain_id, seq
        LIMIT %(limit)s
        """,
        {"trace": trace_id, "limit": limit},
    )
