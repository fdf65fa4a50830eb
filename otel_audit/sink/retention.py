"""Writing retention to PostgreSQL: legal holds, and dropping archived partitions under a signed checkpoint.

:func:`drop_partitions` is the only code that removes audit records. In one
transaction it locks each partition (no late record can slip in), checks
again that every record in it is inside the archived prefix of its chain and
under no legal hold, stores the signed retention checkpoint, and detaches and
drops the partitions. Anything that fails the check aborts the whole run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from otel_audit.core.retention import RetentionCheckpoint
from otel_audit.errors import AuditError, NotFound

__all__ = ["Hold", "PartitionCheck", "add_hold", "check_partition", "drop_partitions", "holds", "release_hold"]


@dataclass(frozen=True)
class Hold:
    id: int
    chain_id: str | None
    actor_id: str | None
    from_ts: datetime | None
    to_ts: datetime | None
    reason: str
    created_at: datetime
    created_by: str

    def describe(self) -> str:
        if self.chain_id:
            subject = f"chain {self.chain_id}"
        elif self.actor_id:
            subject = f"actor {self.actor_id}"
        else:
            subject = f"time {self.from_ts.isoformat()} .. {self.to_ts.isoformat()}"  # type: ignore[union-attr]
        return f"hold {self.id} on {subject} ({self.reason}; {self.created_by}, {self.created_at:%Y-%m-%d})"


def add_hold(
    conn: psycopg.Connection,
    *,
    reason: str,
    chain_id: str | None = None,
    actor_id: str | None = None,
    from_ts: datetime | None = None,
    to_ts: datetime | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO audit_legal_holds (chain_id, actor_id, from_ts, to_ts, reason) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING id",
        (chain_id, actor_id, from_ts, to_ts, reason),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def release_hold(conn: psycopg.Connection, hold_id: int, *, reason: str) -> None:
    if conn.execute("SELECT 1 FROM audit_legal_holds WHERE id = %s", (hold_id,)).fetchone() is None:
        raise NotFound(f"there is no legal hold {hold_id}; list them with `otel-audit retention holds`")
    conn.execute("INSERT INTO audit_legal_hold_releases (hold_id, reason) VALUES (%s, %s)", (hold_id, reason))


def holds(conn: psycopg.Connection, *, active_only: bool = True) -> list[Hold]:
    rows = conn.execute(
        "SELECT h.id, h.chain_id::text, h.actor_id, h.from_ts, h.to_ts, h.reason, h.created_at, h.created_by "
        "FROM audit_legal_holds h LEFT JOIN audit_legal_hold_releases r ON r.hold_id = h.id "
        + ("WHERE r.hold_id IS NULL " if active_only else "")
        + "ORDER BY h.id"
    ).fetchall()
    return [Hold(*r) for r in rows]


@dataclass
class PartitionCheck:
    name: str
    lower: datetime | None
    upper: datetime | None
    rows: int = 0
    bytes: int = 0
    chains: dict[str, tuple[int, int]] = field(default_factory=dict)  # chain -> (min seq, max seq) in it
    blocked: list[str] = field(default_factory=list)  # why it must stay

    @property
    def removable(self) -> bool:
        return not self.blocked


def check_partition(
    conn: psycopg.Connection,
    name: str,
    lower: datetime | None,
    upper: datetime | None,
    archived: Mapping[str, int],
    active_holds: list[Hold],
) -> PartitionCheck:
    """Whether every record of the partition is archived (seq within its chain's archived prefix) and unheld."""
    check = PartitionCheck(name, lower, upper)
    ident = sql.Identifier(name)
    for chain_id, low, high, count in conn.execute(
        sql.SQL("SELECT chain_id::text, min(seq), max(seq), count(*) FROM {} GROUP BY chain_id").format(ident)
    ):
        check.chains[chain_id] = (low, high)
        check.rows += count
        covered = archived.get(chain_id, 0)
        if high > covered:
            first = max(low, covered + 1)
            check.blocked.append(
                f"chain {chain_id} records {first}..{high} are not in the verified archive"
                + ("" if covered else " (the archive does not hold this chain)")
            )
    row = conn.execute("SELECT pg_catalog.pg_total_relation_size(%s::regclass)", (name,)).fetchone()
    check.bytes = int(row[0]) if row else 0
    held_chains = {h.chain_id for h in active_holds if h.chain_id}
    for chain_id in sorted(held_chains & set(check.chains)):
        hold = next(h for h in active_holds if h.chain_id == chain_id)
        check.blocked.append(f"under {hold.describe()}")
    actors = [h.actor_id for h in active_holds if h.actor_id]
    if actors:
        found = {
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT DISTINCT actor_id FROM {} WHERE actor_id = ANY(%s)").format(ident), (actors,)
            )
        }
        for hold in active_holds:
            if hold.actor_id in found:
                check.blocked.append(f"under {hold.describe()}")
    for hold in active_holds:
        if hold.from_ts is not None and hold.to_ts is not None:
            starts_before_end = lower is None or hold.to_ts > lower
            ends_after_start = upper is None or hold.from_ts < upper
            if starts_before_end and ends_after_start:
                check.blocked.append(f"under {hold.describe()}")
    return check


def drop_partitions(
    conn: psycopg.Connection,
    partitions: list[PartitionCheck],
    archived: Mapping[str, int],
    make_checkpoint: Callable[[int, str | None], RetentionCheckpoint],
    *,
    lock_timeout: str = "30s",
) -> RetentionCheckpoint:
    """Lock, re-check, record the signed checkpoint, drop; all or nothing. ``make_checkpoint(n, prev)`` signs."""
    with conn.transaction():
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (lock_timeout,))
        conn.execute("LOCK TABLE audit_retention IN EXCLUSIVE MODE")  # one retention run at a time
        active = holds(conn)
        for part in partitions:
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(part.name)))
            again = check_partition(conn, part.name, part.lower, part.upper, archived, active)
            if again.blocked:
                raise AuditError(f"{part.name} can no longer be removed: " + "; ".join(again.blocked))
        row = conn.execute("SELECT n, hash FROM audit_retention ORDER BY n DESC LIMIT 1").fetchone()
        n, prev = (int(row[0]) + 1, row[1]) if row else (1, None)
        checkpoint = make_checkpoint(n, prev)
        conn.execute(
            "INSERT INTO audit_retention (n, signed_at, key_id, body, signature, hash) "
            "VALUES (%s, %s::timestamptz, %s, %s, %s, %s)",
            (
                checkpoint.n,
                checkpoint.doc["time"],
                checkpoint.key_id,
                checkpoint.body,
                checkpoint.signature,
                checkpoint.hash,
            ),
        )
        for part in partitions:
            conn.execute(sql.SQL("ALTER TABLE audit_logs DETACH PARTITION {}").format(sql.Identifier(part.name)))
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
    return checkpoint
