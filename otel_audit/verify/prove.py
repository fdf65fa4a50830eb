"""Build a record proof from the database (``otel-audit prove``).

The database is only a source of bytes here: the proof is checked before it
is handed out (structure always; the signature too when trusted keys are
given), and the auditor checks it again offline with ``verify-proof``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg

from otel_audit.core.checkpoint import CheckpointFormatError, parse_checkpoint
from otel_audit.core.keys import VerifyKey
from otel_audit.core.proof import ProofResult, build_proof, verify_proof
from otel_audit.errors import NotAnchoredError, ProofUnavailable

__all__ = ["NotAnchoredError", "ProofUnavailable", "prove_record"]

#: Candidate checkpoints tried (nearest first) before giving up.
_CANDIDATES = 20


def prove_record(
    conn: psycopg.Connection, record_id: str, *, trusted_keys: Mapping[str, VerifyKey] | None = None
) -> tuple[dict[str, Any], ProofResult]:
    try:
        uuid.UUID(record_id)
    except ValueError:
        raise ProofUnavailable(
            f"{record_id!r} is not a record id (a UUID, the audit.record.id attribute); find one with "
            "`otel-audit query ...`"
        ) from None
    row = conn.execute("SELECT chain_id::text, seq FROM audit_logs WHERE id = %s", (record_id,)).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT chain_id::text, seq FROM audit_quarantine "
            "WHERE pg_catalog.convert_from(canonical, 'UTF8')::jsonb->>'id' = %s",
            (record_id,),
        ).fetchone()
    if row is None:
        raise ProofUnavailable(f"no record with id {record_id} in audit_logs or audit_quarantine; check --dsn")
    chain_id, seq = row
    candidates = conn.execute(
        "SELECT body, signature FROM audit_checkpoints WHERE chain_id = %s AND seq >= %s ORDER BY seq, n LIMIT %s",
        (chain_id, seq, _CANDIDATES),
    ).fetchall()
    if not candidates:
        newest = conn.execute("SELECT max(seq) FROM audit_checkpoints WHERE chain_id = %s", (chain_id,)).fetchone()[0]  # type: ignore[index]
        if newest is None:
            raise NotAnchoredError(
                f"chain {chain_id} has no checkpoint: its emitter ran without a signing key "
                "(OTEL_AUDIT_SIGNING_KEY), so its records cannot be proven"
            )
        raise NotAnchoredError(
            f"record {record_id} (chain {chain_id}, seq {seq}) comes after the newest checkpoint (seq {newest}); "
            "a running emitter signs the next one within its checkpoint interval (10 s by default): retry then"
        )
    first_failure: ProofResult | None = None
    for body, signature in candidates:
        try:
            checkpoint = parse_checkpoint(bytes(body), bytes(signature))
        except CheckpointFormatError:
            continue
        records = [
            bytes(r[0])
            for r in conn.execute(
                "SELECT canonical FROM (SELECT seq, canonical FROM audit_logs WHERE chain_id = %(c)s "
                "AND seq BETWEEN %(a)s AND %(b)s UNION ALL SELECT seq, canonical FROM audit_quarantine "
                "WHERE chain_id = %(c)s AND seq BETWEEN %(a)s AND %(b)s) r ORDER BY seq",
                {"c": chain_id, "a": seq, "b": checkpoint.seq},
            )
        ]
        proof = build_proof(record_id, records, checkpoint, created_ns=time.time_ns())
        result = verify_proof(proof, trusted_keys)
        if result.valid:
            return proof, result
        first_failure = first_failure or result
    raise ProofUnavailable(
        f"the database's records of chain {chain_id} from seq {seq} do not lead to a valid checkpoint: "
        + ("; ".join(first_failure.problems) if first_failure else "every candidate checkpoint is malformed")
        + ". Run `otel-audit verify --trusted-key ...` to see what was changed",
        first_failure,
    )
