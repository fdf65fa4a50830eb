"""Build audit trails with chosen timestamps: seal with the core, store exactly as the sink does.

The processor stamps records with the time of the logging call; partition,
archive and retention tests need records spread over months and years. Records
are sealed by :class:`otel_audit.core.chain.Chain` (the same code the processor
uses) and written with the sink's own SQL (stage COPY, projection, chain
registration, checkpoint rows), so the database holds what a real emitter
would have left there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg

from otel_audit.checkpointer import checkpoint_policy
from otel_audit.core.chain import KIND_CHECKPOINT, KIND_GENESIS, KIND_RECORD, Chain
from otel_audit.core.checkpoint import Checkpoint, sign_checkpoint
from otel_audit.core.keys import SigningKey
from otel_audit.core.record import RecordBuilder
from otel_audit.sink.checkpoints import store_checkpoints
from otel_audit.sink.rows import CREATE_STAGE, INSERT_CHAINS, PROJECT_STAGE
from otel_audit.sink.writer import _COPY_STAGE, stage_copy_data

__all__ = ["TrailChain", "ns", "store"]

_BUILDER = RecordBuilder()

BASE = {
    "audit.action": "read",
    "audit.actor.id": "user-123",
    "audit.resource.type": "patient_record",
    "audit.resource.id": "patient-456",
    "audit.result": "success",
    "client.address": "10.1.2.3",
}


def ns(text: str) -> int:
    """Unix nanoseconds of an ISO time (UTC when no zone is given)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1_000_000) * 1000


class _Frames:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes, bytes]] = []

    def append(self, kind: int, payload: bytes, digest: bytes) -> int:
        self.frames.append((kind, payload, digest))
        return len(self.frames)


@dataclass
class TrailChain:
    """One emitter's chain; records and checkpoints accumulate until :func:`store`."""

    key: SigningKey | None = None
    interval_ms: int = 10_000
    policy_records: int | None = None  # seal a checkpoint policy (every N records) into the genesis
    created: str = "2024-01-01T00:00:00Z"
    frames: _Frames = field(default_factory=_Frames)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    canonical: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        policy = None
        if self.policy_records is not None:
            policy = checkpoint_policy(self.key, self.policy_records, self.interval_ms / 1000)
        self.chain = Chain(
            self.frames,
            emitter={"kind": "sdk", "service_name": "billing"},
            clock=lambda: ns(self.created),
            checkpoint_policy=policy,
        )
        if self.key is not None:
            self.checkpoint(ns(self.created))

    @property
    def chain_id(self) -> str:
        return self.chain.chain_id

    def log(self, when: str | int, **attrs: Any) -> bytes:
        attributes = {**BASE, **attrs}
        t = when if isinstance(when, int) else ns(when)
        sealed = self.chain.seal(_BUILDER.build(attributes, time_unix_nano=t, service_name="billing"))
        self.canonical.append(sealed.canonical)
        return sealed.canonical

    def log_many(self, start: str, count: int, step_seconds: float = 60.0, **attrs: Any) -> None:
        t0 = ns(start)
        for i in range(count):
            self.log(t0 + int(i * step_seconds * 1e9), **attrs)

    def checkpoint(
        self,
        time_ns: int,
        *,
        closed: bool = False,
        key: SigningKey | None = None,
        adopted_by: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """Sign the chain's head (with ``key`` instead of the chain's own, as an adopter would)."""
        key = key or self.key
        assert key is not None
        seq, head = self.chain.head()
        prev = self.checkpoints[-1] if self.checkpoints else None
        cp = sign_checkpoint(
            key,
            chain_id=self.chain_id,
            n=len(self.checkpoints) + 1,
            seq=seq,
            head=head,
            genesis=self.chain.genesis_hash,
            prev=prev.hash if prev else None,
            time_ns=time_ns,
            interval_ms=self.interval_ms,
            closed=closed,
            adopted_by=adopted_by,
        )
        self.checkpoints.append(cp)
        self.frames.append(KIND_CHECKPOINT, cp.envelope, b"")
        return cp


def store(dsn: str, *chains: TrailChain) -> None:
    """Write everything the chains accumulated since the last call, as the sink would (one transaction)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_STAGE)
        with conn.transaction():
            cur = conn.cursor()
            for chain in chains:
                frames, chain.frames.frames = chain.frames.frames, []
                genesis = [{"g": p, "h": d.hex()} for k, p, d in frames if k == KIND_GENESIS]
                records = [(p, d) for k, p, d in frames if k == KIND_RECORD]
                checkpoints = [(p, d) for k, p, d in frames if k == KIND_CHECKPOINT]
                if genesis:
                    cur.executemany(INSERT_CHAINS, genesis)
                if records:
                    with cur.copy(_COPY_STAGE) as copy:
                        copy.write(stage_copy_data(records))
                    cur.execute(PROJECT_STAGE)
                    cur.execute("TRUNCATE otel_audit_stage")
                if checkpoints:
                    store_checkpoints(checkpoints, conn)
