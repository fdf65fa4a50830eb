"""``otel-audit retention apply``: remove old partitions from PostgreSQL once an archive that verifies holds them.

A partition is removed only when all of these hold:

* its month ended before the policy's cutoff (``now - hot days``);
* the archive verifies (``verify-archive`` with the trusted keys, and its
  join with this database) with no error;
* every record in it lies within the archived prefix of its chain (per chain,
  at most the last archived sequence number of the newest manifest);
* no active legal hold covers one of its chains, actors or its time range.

The default partition is never removed (its rows have no month of their own).
What is removed is recorded in a signed retention checkpoint, stored in the
same transaction (:mod:`otel_audit.core.retention`), so that ``otel-audit
verify`` reports those records as archived rather than missing, and still
reports any deletion no retention checkpoint covers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from otel_audit.archive.store import ArchiveStore
from otel_audit.archive.verify import verify_archive
from otel_audit.archive.writer import load_manifests
from otel_audit.core.keys import SigningKey, VerifyKey
from otel_audit.core.record import format_timestamp
from otel_audit.core.retention import RetentionCheckpoint, sign_retention
from otel_audit.errors import InvalidInput
from otel_audit.sink.partitions import list_partitions
from otel_audit.sink.retention import PartitionCheck, check_partition, drop_partitions, holds
from otel_audit.verify.report import VerificationReport

__all__ = ["POLICIES", "Policy", "RetentionPlan", "apply_retention", "parse_policy", "plan_retention"]


@dataclass(frozen=True)
class Policy:
    name: str
    hot_days: int  # records stay in PostgreSQL at least this long
    archive_days: int | None  # how long the archive should keep them (the Object Lock retention to choose)
    source: str


POLICIES: dict[str, Policy] = {
    "pci-dss": Policy(
        "pci-dss",
        92,
        366,
        "PCI DSS v4.0.1 req. 10.5.1: retain audit logs at least 12 months, the most recent three "
        "months immediately available for analysis",
    ),
    "hipaa": Policy(
        "hipaa",
        366,
        6 * 366,
        "HIPAA §164.312(b) requires audit controls; the usual six years is the documentation retention "
        "of §164.316(b)(2)(i). One year in PostgreSQL is otel-audit's choice",
    ),
    "soc2": Policy("soc2", 366, 366, "SOC 2 sets no period; one year is common practice"),
}


def parse_policy(text: str) -> Policy:
    if text in POLICIES:
        return POLICIES[text]
    match = re.fullmatch(r"(\d+)d?", text.strip())
    if not match or int(match.group(1)) < 1:
        raise InvalidInput(f"{text!r} is not a policy: use pci-dss, hipaa, soc2 or a number of days (e.g. 400)")
    return Policy(f"{int(match.group(1))}d", int(match.group(1)), None, "site policy")


@dataclass
class RetentionPlan:
    policy: Policy
    cutoff: datetime
    archive: VerificationReport | None = None
    archive_url: str = ""
    archive_id: str | None = None
    run: int | None = None
    manifest: str | None = None
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    partitions: list[PartitionCheck] = field(default_factory=list)
    kept_default_rows: int = 0

    @property
    def archive_ok(self) -> bool:
        return self.archive is not None and self.archive.ok

    @property
    def removable(self) -> list[PartitionCheck]:
        return [p for p in self.partitions if p.removable] if self.archive_ok else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "cutoff": self.cutoff.isoformat(),
            "archive": self.archive_url,
            "archive_verified": self.archive_ok,
            "archive_run": self.run,
            "partitions": [
                {
                    "name": p.name,
                    "from": p.lower.isoformat() if p.lower else None,
                    "to": p.upper.isoformat() if p.upper else None,
                    "rows": p.rows,
                    "bytes": p.bytes,
                    "removable": p.removable and self.archive_ok,
                    "blocked": p.blocked,
                }
                for p in self.partitions
            ],
            "default_partition_rows_kept": self.kept_default_rows,
        }


def plan_retention(
    conn: psycopg.Connection,
    store: ArchiveStore,
    trusted_keys: Mapping[str, VerifyKey],
    policy: Policy,
    *,
    now: datetime | None = None,
    workers: int | None = None,
) -> RetentionPlan:
    now = now or datetime.now(timezone.utc)
    plan = RetentionPlan(policy, now - timedelta(days=policy.hot_days), archive_url=store.url)
    candidates = [p for p in list_partitions(conn) if not p.default and p.upper is not None and p.upper <= plan.cutoff]
    row = conn.execute("SELECT count(*) FROM audit_logs_default WHERE timestamp < %s", (plan.cutoff,)).fetchone()
    plan.kept_default_rows = int(row[0]) if row else 0
    if not candidates:
        return plan
    plan.archive = verify_archive(store, trusted_keys, conn=conn, workers=workers)
    manifests = load_manifests(store) if plan.archive.ok else []
    if manifests:
        newest = manifests[-1]
        plan.archive_id, plan.run, plan.manifest = newest.doc["archive_id"], newest.run, newest.hash
        plan.state = newest.doc["state"]["chains"]
    archived = {c: v["last_seq"] for c, v in plan.state.items()}
    active = holds(conn)
    for part in candidates:
        plan.partitions.append(check_partition(conn, part.name, part.lower, part.upper, archived, active))
    return plan


def apply_retention(
    conn: psycopg.Connection, plan: RetentionPlan, key: SigningKey, *, now: int | None = None
) -> RetentionCheckpoint | None:
    """Drop the plan's removable partitions under a signed retention checkpoint; None when nothing goes."""
    removable = plan.removable
    if not removable:
        return None
    archived = {c: v["last_seq"] for c, v in plan.state.items()}
    chains = {c: {"seq": v["last_seq"], "head": v["last_hash"]} for c, v in sorted(plan.state.items()) if v["last_seq"]}
    time_ns = now if now is not None else time.time_ns()

    def make(n: int, prev: str | None) -> RetentionCheckpoint:
        return sign_retention(
            key,
            {
                "n": n,
                "prev": prev,
                "time": format_timestamp(time_ns),
                "policy": plan.policy.name,
                "cutoff": format_timestamp(int(plan.cutoff.timestamp() * 1_000_000) * 1000),
                "partitions": [p.name for p in removable],
                "archive": {
                    "url": plan.archive_url,
                    "archive_id": plan.archive_id,
                    "run": plan.run,
                    "manifest": plan.manifest,
                },
                "chains": chains,
            },
        )

    return drop_partitions(conn, removable, archived, make)
