"""Investigators' questions, as parameterized queries over ``audit_logs`` (and ``audit_quarantine``).

The seed's three example queries run unchanged against the table; the
functions here answer the same questions with filters, honest limits and no
hidden records:

* :func:`find_records` -- the records matching a :class:`RecordFilter` (actor,
  resource, action, session, trace, result, service, chain, time range, only
  problem records), newest first or in time order, cut at ``limit`` with the
  number of records that matched (:attr:`QueryResult.total`), so that output
  can say how many more there are.
* Records PostgreSQL refused are kept in ``audit_quarantine`` as sealed bytes
  only; they are part of the trail, so :func:`find_records` reads them too and
  returns those that match, marked ``quarantined: <reason>`` in ``problems``.
  A record stored flagged (validation problems) carries its problems as well.
* :func:`failed_attempts` -- the seed's "failed attempts per actor above a
  threshold", for a window or a time range.

Each returns column names and rows, ready for table, JSON, CSV or timeline output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson

from otel_audit.errors import InvalidInput, MissingTablesError

if TYPE_CHECKING:  # imported where used: the command line parses times and filters without psycopg
    import psycopg
    from psycopg import sql

__all__ = [
    "NARROW_COLUMNS",
    "RESULTS",
    "TIMELINE_COLUMNS",
    "WIDE_COLUMNS",
    "MissingTablesError",
    "QueryResult",
    "RecordFilter",
    "actor_activity",
    "failed_attempts",
    "find_records",
    "parse_duration",
    "parse_time",
    "quarantined_records",
    "require_tables",
    "resource_access",
    "session_records",
    "trace_records",
]

RESULTS = ("success", "failure", "denied")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: Columns shown by default: who, what, which resource, result, from where, which record.
NARROW_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "ip_address",
    "service_name",
    "reason",
    "chain_id",
    "seq",
    "id",
    "problems",
)
#: ``--wide`` adds the rest of what an investigator reads.
WIDE_COLUMNS: tuple[str, ...] = (
    *NARROW_COLUMNS,
    "actor_type",
    "session_id",
    "user_id",
    "trace_id",
    "span_id",
    "host_name",
    "user_agent",
    "message",
    "changed_fields",
    "old_values",
)

#: What a timeline shows of each record (``--format timeline``, the report's timelines).
TIMELINE_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "service_name",
    "host_name",
    "actor_id",
    "actor_type",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "reason",
    "ip_address",
    "session_id",
    "trace_id",
    "span_id",
    "chain_id",
    "seq",
    "id",
    "problems",
)

# How a column is read for display: ids and addresses as text (the form the verifier compares).
_COLUMN_SQL = {
    "id": "id::text",
    "chain_id": "chain_id::text",
    "ip_address": "pg_catalog.abbrev(ip_address)",
}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``24h``, ``15m``, ``90s``, ``2w`` -> timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInput(f"{text!r} is not a duration: use a number and one of s, m, h, d, w (e.g. 30d, 24h)")
    try:
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    except OverflowError:
        raise InvalidInput(f"{text!r} is too long a duration") from None


def parse_time(text: str, *, end: bool = False, now: datetime | None = None) -> datetime:
    """A point in time from a duration back from now (``30d``), an ISO 8601 time, or a date.

    A time without a zone is UTC. A date alone is the start of that day (UTC),
    or with ``end`` the start of the next one, so ``--until 2026-12-31`` takes
    in the whole of 31 December.
    """
    now = now or datetime.now(timezone.utc)
    if _DURATION.match(text):
        try:
            return now - parse_duration(text)
        except OverflowError:
            raise InvalidInput(f"{text!r} reaches back before year 1") from None
    stripped = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", stripped):
            day = date.fromisoformat(stripped)
            value = datetime.combine(day, time(0), tzinfo=timezone.utc)
            return value + timedelta(days=1) if end else value
        value = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"{text!r} is neither a duration (30d, 24h, 15m) nor an ISO 8601 date or time (2026-12-01, "
            "2026-12-01T08:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass
class RecordFilter:
    """Which records: every given criterion must hold (lists: any of their values)."""

    actor_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    actions: Sequence[str] = ()
    session_id: str | None = None
    trace_id: str | None = None
    results: Sequence[str] = ()
    services: Sequence[str] = ()
    chain_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    problems: bool = False  # only records stored flagged or quarantined
    #: Other stored forms of ``actor_id`` / ``session_id`` that also match: their pseudonyms under each key of
    #: the ring (:meth:`otel_audit.privacy.pseudonym.Pseudonymizer.candidates`), so a search by the plain
    #: identifier finds pseudonymized records too.
    actor_aliases: Sequence[str] = ()
    session_aliases: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.actions = list(self.actions)
        self.results = list(self.results)
        self.services = list(self.services)
        if self.trace_id is not None:
            self.trace_id = self.trace_id.strip().lower().removeprefix("0x")
        if self.chain_id is not None:
            self.chain_id = self.chain_id.strip().lower()

    def validate(self) -> None:
        """Raise InvalidInput (a ValueError: a usage error) for what PostgreSQL would refuse or can never match."""
        texts = [self.actor_id, self.resource_type, self.resource_id, self.session_id, *self.actions, *self.services]
        if any(t is not None and "\x00" in t for t in texts):
            raise InvalidInput("a filter value contains a NUL character, which no stored value can hold")
        if self.trace_id is not None and not _TRACE_ID.fullmatch(self.trace_id):
            raise InvalidInput(f"{self.trace_id!r} is not a trace id: expected 32 hexadecimal digits")
        if self.chain_id is not None and not _UUID.fullmatch(self.chain_id):
            raise InvalidInput(f"{self.chain_id!r} is not a chain id: expected a UUID")
        for result in self.results:
            if result not in RESULTS:
                raise InvalidInput(f"result {result!r} is not one of {', '.join(RESULTS)}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidInput(
                f"the time range is empty: since {self.since.isoformat()} is not before until {self.until.isoformat()}"
            )

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        """The SQL condition over ``audit_logs`` and its parameters."""
        from psycopg import sql

        parts: list[str] = []
        params: dict[str, Any] = {}

        def equal(column: str, name: str, value: Any) -> None:
            if value is not None:
                parts.append(f"{column} = %({name})s")
                params[name] = value

        def any_of(column: str, name: str, values: Sequence[str]) -> None:
            if values:
                parts.append(f"{column} = ANY(%({name})s)")
                params[name] = list(values)

        if self.actor_aliases and self.actor_id is not None:
            any_of("actor_id", "actor", [self.actor_id, *self.actor_aliases])
        else:
            equal("actor_id", "actor", self.actor_id)
        equal("resource_type", "rtype", self.resource_type)
        equal("resource_id", "rid", self.resource_id)
        if self.session_aliases and self.session_id is not None:
            any_of("session_id", "session", [self.session_id, *self.session_aliases])
        else:
            equal("session_id", "session", self.session_id)
        equal("trace_id", "trace", self.trace_id)
        equal("chain_id", "chain", self.chain_id)
        any_of("action", "actions", self.actions)
        any_of("result", "results", self.results)
        any_of("service_name", "services", self.services)
        if self.since is not None:
            parts.append("timestamp >= %(since)s")
            params["since"] = self.since
        if self.until is not None:
            parts.append("timestamp < %(until)s")
            params["until"] = self.until
        if self.problems:
            parts.append("cardinality(problems) > 0")
        condition = " AND ".join(parts) if parts else "TRUE"
        return sql.SQL(condition), params  # only fixed column names and placeholders

    def matches(self, row: dict[str, Any]) -> bool:
        """The same condition, for a record read from its sealed document (quarantined records)."""
        checks = (
            ("actor_id", self.actor_id),
            ("resource_type", self.resource_type),
            ("resource_id", self.resource_id),
            ("session_id", self.session_id),
            ("trace_id", self.trace_id),
            ("chain_id", self.chain_id),
        )
        aliases = {"actor_id": self.actor_aliases, "session_id": self.session_aliases}
        for name, wanted in checks:
            if wanted is not None and row.get(name) != wanted and row.get(name) not in aliases.get(name, ()):
                return False
        for name, values in (("action", self.actions), ("result", self.results), ("service_name", self.services)):
            if values and row.get(name) not in values:
                return False
        ts = row.get("timestamp")
        if self.since is not None and (not isinstance(ts, datetime) or ts < self.since):
            return False
        if self.until is not None and (not isinstance(ts, datetime) or ts >= self.until):
            return False
        return not self.problems or bool(row.get("problems"))

    def describe(self) -> str:
        """What the filter selects, in words (for notices and titles)."""
        words = []
        if self.actor_id is not None:
            words.append(f"actor {self.actor_id}")
        if self.resource_type is not None or self.resource_id is not None:
            words.append(f"resource {self.resource_type or '*'}/{self.resource_id or '*'}")
        for label, values in (("action", self.actions), ("result", self.results), ("service", self.services)):
            if values:
                words.append(f"{label} {' or '.join(values)}")
        for label, value in (("session", self.session_id), ("trace", self.trace_id), ("chain", self.chain_id)):
            if value is not None:
                words.append(f"{label} {value}")
        if self.since is not None:
            words.append(f"since {self.since.isoformat()}")
        if self.until is not None:
            words.append(f"until {self.until.isoformat()}")
        if self.problems:
            words.append("problem records only")
        return ", ".join(words) if words else "all records"


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    #: How many rows matched in all (known whenever the rows were cut at the limit).
    total: int | None = None
    limit: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    @property
    def more(self) -> int:
        """Matching rows not returned because of the limit."""
        return max(0, (self.total or 0) - len(self.rows))


def require_tables(conn: psycopg.Connection, tables: Sequence[str] = ("audit_logs", "audit_quarantine")) -> None:
    """Raise :class:`MissingTablesError` saying what to do when an otel-audit table is missing."""
    row = conn.execute("SELECT " + ", ".join(["to_regclass(%s)"] * len(tables)), list(tables)).fetchone()
    missing = [t for t, found in zip(tables, row or (), strict=False) if found is None]
    if missing:
        raise MissingTablesError(
            f"no otel-audit table{'s' if len(missing) > 1 else ''} {', '.join(missing)} in this database / "
            "search_path: check --dsn, or run `otel-audit db init` if this is a new database"
        )


def find_records(
    conn: psycopg.Connection,
    where: RecordFilter,
    *,
    limit: int = 1000,
    wide: bool = False,
    ascending: bool = False,
    columns: Sequence[str] | None = None,
) -> QueryResult:
    """Records matching ``where``, newest first (``ascending``: in time order), at most ``limit``.

    ``total`` says how many matched in all. Quarantined records that match are
    included, marked in ``problems``.
    """
    from psycopg import sql

    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, not {limit}")
    where.validate()
    require_tables(conn)
    names = list(columns or (WIDE_COLUMNS if wide else NARROW_COLUMNS))
    select = sql.SQL(", ").join(
        sql.SQL(f"{_COLUMN_SQL[c]} AS {c}") if c in _COLUMN_SQL else sql.Identifier(c) for c in names
    )
    condition, params = where.where()
    direction = sql.SQL("" if ascending else " DESC")
    query = sql.SQL(
        "SELECT {select} FROM audit_logs WHERE {condition} "
        "ORDER BY timestamp{dir}, audit_logs.chain_id{dir}, seq{dir} LIMIT %(limit)s"
    ).format(select=select, condition=condition, dir=direction)
    rows = conn.execute(query, {**params, "limit": limit + 1}).fetchall()
    total = len(rows)
    if total > limit:
        count = conn.execute(sql.SQL("SELECT count(*) FROM audit_logs WHERE {}").format(condition), params)
        total = int(count.fetchone()[0])  # type: ignore[index]
    quarantined = [q for q in quarantined_records(conn) if where.matches(q)]
    if quarantined:
        total += len(quarantined)
        merged = [*rows, *(tuple(q.get(c) for c in names) for q in quarantined)]
        ts = names.index("timestamp") if "timestamp" in names else None
        if ts is not None:
            merged.sort(key=lambda r: _sort_key(r[ts]), reverse=not ascending)
        rows = merged
    return QueryResult(names, [tuple(r) for r in rows[:limit]], total=total, limit=limit)


_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _sort_key(value: Any) -> datetime:
    return value if isinstance(value, datetime) else _EPOCH


def quarantined_records(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every quarantined record as a row dict (parsed here: a malformed one must not break the query)."""
    out = []
    for chain_id, seq, stored_hash, canonical, reason in conn.execute(
        "SELECT chain_id::text, seq, hash, canonical, reason FROM audit_quarantine ORDER BY chain_id, seq"
    ):
        try:
            doc = orjson.loads(bytes(canonical))
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            doc = {"problems": ["the stored bytes are not a record document"]}
        row = {k: v for k, v in doc.items() if k != "v"}
        row["chain_id"], row["seq"] = chain_id, seq  # where it was quarantined (the verifier compares the two)
        try:
            row["timestamp"] = datetime.fromisoformat(str(doc.get("timestamp", "")).replace("Z", "+00:00"))
        except ValueError:
            row["timestamp"] = None
        problems = doc["problems"] if isinstance(doc.get("problems"), list) else []
        row["problems"] = [f"quarantined: {reason}", *(str(p) for p in problems)]
        row["hash"] = stored_hash
        out.append(row)
    return out


def failed_attempts(
    conn: psycopg.Connection,
    *,
    window: timedelta = timedelta(hours=24),
    threshold: int = 5,
    since: datetime | None = None,
    until: datetime | None = None,
    services: Sequence[str] = (),
    actions: Sequence[str] = (),
    limit: int | None = None,
) -> QueryResult:
    """Actors with more than ``threshold`` failed or denied attempts in ``window`` back from now, or in
    ``[since, until)`` when either is given (the seed's security-monitoring query)."""
    from psycopg import sql

    if threshold < 0:
        raise InvalidInput(f"threshold must be 0 or more, not {threshold}")
    require_tables(conn, ("audit_logs",))
    if since is None and until is None:
        since = datetime.now(timezone.utc) - window
    where = RecordFilter(since=since, until=until, services=services, actions=actions, results=["failure", "denied"])
    where.validate()
    condition, params = where.where()
    query = sql.SQL(
        "SELECT actor_id, COUNT(*) AS failed_attempts, COUNT(*) FILTER (WHERE result = 'denied') AS denied, "
        "MIN(timestamp) AS first_attempt, MAX(timestamp) AS last_attempt "
        "FROM audit_logs WHERE {condition} GROUP BY actor_id HAVING COUNT(*) > %(threshold)s "
        "ORDER BY failed_attempts DESC, actor_id"
    ).format(condition=condition)
    params["threshold"] = threshold
    cur = conn.execute(query, params)
    columns = [d.name for d in cur.description or []]
    rows = cur.fetchall()
    total = len(rows)
    if limit is not None:
        rows = rows[:limit]
    return QueryResult(columns, rows, total=total, limit=limit)


# ---------------------------------------------------------------------- the seed's questions, every column
# (``wide``): callers such as the archive queries pick the columns they need from the rows.
def actor_activity(
    conn: psycopg.Connection,
    actor_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
    wide: bool = True,
    aliases: Sequence[str] = (),
) -> QueryResult:
    """Everything an actor did (default: the last 30 days), newest first.

    ``aliases``: the actor's pseudonyms (see :attr:`RecordFilter.actor_aliases`).
    """
    since = since or datetime.now(timezone.utc) - timedelta(days=30)
    return find_records(
        conn, RecordFilter(actor_id=actor_id, since=since, until=until, actor_aliases=aliases), limit=limit, wide=wide
    )


def resource_access(
    conn: psycopg.Connection,
    resource_type: str,
    resource_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
    wide: bool = True,
) -> QueryResult:
    """All access to one resource (all time unless ``since``), newest first."""
    where = RecordFilter(resource_type=resource_type, resource_id=resource_id, since=since, until=until)
    return find_records(conn, where, limit=limit, wide=wide)


def trace_records(conn: psycopg.Connection, trace_id: str, *, limit: int = 10_000, wide: bool = True) -> QueryResult:
    """Every audit record written while serving one trace, in time order."""
    return find_records(conn, RecordFilter(trace_id=trace_id), limit=limit, wide=wide, ascending=True)


def session_records(
    conn: psycopg.Connection, session_id: str, *, limit: int = 10_000, wide: bool = True
) -> QueryResult:
    """Every audit record of one session, in time order."""
    return find_records(conn, RecordFilter(session_id=session_id), limit=limit, wide=wide, ascending=True)
