"""Record proofs: self-contained evidence that one record is part of a signed chain.

A proof is one JSON object (UTF-8)::

    {"format": "otel-audit-record-proof", "v": 1,
     "record_id": "<id of the proven record>",
     "chain_id": "<uuid>", "seq": 17,
     "records": ["<canonical bytes of record 17, as text>", "<record 18>", ..., "<record S>"],
     "checkpoint": "<canonical body of a checkpoint with seq S>",
     "signature": "<standard base64 of its Ed25519 signature>",
     "created": "<when the proof was made>"}          (informational only)

Each string in ``records`` and ``checkpoint`` holds exactly the hashed bytes:
encode it as UTF-8 to get them back. The proof holds every record from the
proven one up to the checkpoint, because each record's hash can only be
recomputed from its bytes; a checkpoint follows at most ~1,000 records (the
default), which bounds the size (and means the proof discloses those
following records too).

To check a proof (:func:`verify_proof` does exactly this)::

    cp   = parse(checkpoint); key = trusted_keys[cp.key_id]     (else: untrusted)
    Ed25519-verify(key, signature, CHECKPOINT_DOMAIN || utf8(checkpoint))
    for i, text in enumerate(records):
        h[i] = hex(SHA-256(RECORD_DOMAIN || utf8(text)));  r = parse(text)
        r.chain_id == cp.chain_id;  r.seq == seq + i
        i == 0: r.id == record_id     i > 0: r.prev_hash == h[i-1]
    seq + len(records) - 1 == cp.seq  and  h[-1] == cp.head

with ``RECORD_DOMAIN = b"otel-audit.record.v1\\x00"`` and
``CHECKPOINT_DOMAIN = b"otel-audit.checkpoint.v1\\x00"``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from otel_audit.core.checkpoint import Checkpoint, CheckpointFormatError, SignatureStatus, parse_checkpoint
from otel_audit.core.keys import VerifyKey
from otel_audit.core.record import RECORD_DOMAIN, format_timestamp

__all__ = ["PROOF_FORMAT", "ProofResult", "build_proof", "verify_proof"]

PROOF_FORMAT = "otel-audit-record-proof"
PROOF_VERSION = 1


def build_proof(record_id: str, records: Sequence[bytes], checkpoint: Checkpoint, *, created_ns: int) -> dict[str, Any]:
    """A proof from the proven record's bytes, those that follow it up to the checkpoint, and the checkpoint."""
    first = orjson.loads(records[0])
    return {
        "format": PROOF_FORMAT,
        "v": PROOF_VERSION,
        "record_id": record_id,
        "chain_id": checkpoint.chain_id,
        "seq": first.get("seq"),
        "records": [r.decode("utf-8") for r in records],
        "checkpoint": checkpoint.body.decode("utf-8"),
        "signature": base64.b64encode(checkpoint.signature).decode("ascii"),
        "created": format_timestamp(created_ns),
    }


@dataclass
class ProofResult:
    valid: bool = False
    problems: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = None  # the proven record's document
    checkpoint: Checkpoint | None = None
    signature: SignatureStatus | None = None  # None when no keys were given (structure only)

    def to_dict(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "valid": self.valid,
            "problems": self.problems,
            "record": self.record,
            "checkpoint": None
            if cp is None
            else {
                "chain_id": cp.chain_id,
                "n": cp.n,
                "seq": cp.seq,
                "head": cp.head,
                "time": cp.time,
                "key_id": cp.key_id,
                "closed": cp.closed,
            },
            "signature": None if self.signature is None else self.signature.value,
        }


def verify_proof(proof: Any, trusted_keys: Mapping[str, VerifyKey] | None) -> ProofResult:
    """Check a parsed proof. ``trusted_keys=None`` checks everything but the signature."""
    result = ProofResult()
    problems = result.problems
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT:
        problems.append(f"not an otel-audit record proof (format must be {PROOF_FORMAT!r})")
        return result
    if proof.get("v") != PROOF_VERSION:
        problems.append(f"unsupported proof version {proof.get('v')!r} (this verifier reads version {PROOF_VERSION})")
        return result
    records, body, signature_text = proof.get("records"), proof.get("checkpoint"), proof.get("signature")
    if not isinstance(records, list) or not records or not all(isinstance(r, str) for r in records):
        problems.append("records must be a non-empty list of strings")
        return result
    if not isinstance(body, str) or not isinstance(signature_text, str):
        problems.append("checkpoint and signature must be strings")
        return result
    try:
        signature = base64.b64decode(signature_text, validate=True)
        checkpoint = parse_checkpoint(body.encode("utf-8"), signature)
    except (binascii.Error, ValueError, CheckpointFormatError, UnicodeEncodeError) as exc:
        problems.append(f"the checkpoint is malformed: {exc}")
        return result
    result.checkpoint = checkpoint
    if trusted_keys is not None:
        result.signature = checkpoint.signature_status(trusted_keys)
        if result.signature is SignatureStatus.UNTRUSTED_KEY:
            problems.append(
                f"the checkpoint is signed by key {checkpoint.key_id}, which is not among the trusted keys "
                "(pass the emitter's public key with --trusted-key)"
            )
        elif result.signature is SignatureStatus.BAD_SIGNATURE:
            problems.append(f"the checkpoint's signature does not verify under trusted key {checkpoint.key_id}")
    start = proof.get("seq")
    if type(start) is not int or start < 1:
        problems.append("seq must be a positive integer")
        return result
    if proof.get("chain_id") != checkpoint.chain_id:
        problems.append(f"chain_id {proof.get('chain_id')!r} is not the checkpoint's chain {checkpoint.chain_id}")
    previous_hash = None
    for i, text in enumerate(records):
        expected_seq = start + i
        try:
            data = text.encode("utf-8")
            doc = orjson.loads(data)
        except (UnicodeEncodeError, orjson.JSONDecodeError) as exc:
            problems.append(f"record {expected_seq} is not a JSON document: {exc}")
            return result
        if not isinstance(doc, dict):
            problems.append(f"record {expected_seq} is not a JSON object")
            return result
        digest = hashlib.sha256(RECORD_DOMAIN + data).hexdigest()
        if doc.get("chain_id") != checkpoint.chain_id:
            problems.append(
                f"record {expected_seq} belongs to chain {doc.get('chain_id')!r}, not {checkpoint.chain_id}"
            )
        if doc.get("seq") != expected_seq:
            problems.append(f"entry {i} of records has seq {doc.get('seq')!r}, expected {expected_seq}")
        if i == 0:
            result.record = doc
            if doc.get("id") != proof.get("record_id"):
                problems.append(f"the first record has id {doc.get('id')!r}, not the proven {proof.get('record_id')!r}")
        elif doc.get("prev_hash") != previous_hash:
            problems.append(
                f"record {expected_seq} does not link to record {expected_seq - 1} (prev_hash {doc.get('prev_hash')}, "
                f"but record {expected_seq - 1} hashes to {previous_hash}): a record was altered"
            )
        previous_hash = digest
    last_seq = start + len(records) - 1
    if last_seq != checkpoint.seq:
        problems.append(f"the records end at seq {last_seq}, but the checkpoint covers seq {checkpoint.seq}")
    elif previous_hash != checkpoint.head:
        problems.append(
            f"record {last_seq} hashes to {previous_hash}, but the checkpoint signed head {checkpoint.head}: "
            "a record was altered"
        )
    result.valid = not problems
    return result
