"""Storing signed checkpoints in ``audit_checkpoints``, in the transaction of their batch.

The sink calls :func:`store_checkpoints` inside the transaction that commits
the records before them in the spool, so a stored checkpoint never names a
head the database does not hold. Replays are idempotent (``ON CONFLICT
(chain_id, n) DO NOTHING``). Columns are a projection of the signed body, for
queries; the verifier reads the body and the signature, not the columns.
"""

from __future__ import annotations

import logging

import psycopg

from otel_audit.core.checkpoint import Checkpoint, CheckpointFormatError, parse_envelope

__all__ = ["INSERT_CHECKPOINT", "decode_checkpoints", "store_checkpoints"]

_log = logging.getLogger("otel_audit.sink")

INSERT_CHECKPOINT = (
    "INSERT INTO audit_checkpoints (chain_id, n, seq, head, signed_at, key_id, closed, body, signature, hash) "
    "VALUES (%s, %s, %s, %s, %s::timestamptz, %s, %s, %s, %s, %s) ON CONFLICT (chain_id, n) DO NOTHING"
)


def decode_checkpoints(frames: list[tuple[bytes, bytes]]) -> list[Checkpoint]:
    """Checkpoint frames (payload, digest) to :class:`Checkpoint` objects; damaged ones are logged and skipped."""
    out = []
    for payload, _digest in frames:
        try:
            out.append(parse_envelope(payload))
        except CheckpointFormatError as exc:
            _log.error("otel-audit: a checkpoint frame in the spool is not a signed checkpoint (%s); skipped", exc)
    return out


def store_checkpoints(frames: list[tuple[bytes, bytes]], conn: psycopg.Connection) -> None:
    checkpoints = decode_checkpoints(frames)
    if not checkpoints:
        return
    with conn.cursor() as cur:
        cur.executemany(
            INSERT_CHECKPOINT,
            [
                (c.chain_id, c.n, c.seq, c.head, c.time, c.key_id, c.closed, c.body, c.signature, c.hash)
                for c in checkpoints
            ],
        )
