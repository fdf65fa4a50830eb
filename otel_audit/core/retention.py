"""Retention checkpoints: signed statements of which chain prefixes left PostgreSQL, and where they went.

No OTel, no PostgreSQL. ``otel-audit retention apply`` writes one (table
``audit_retention``) in the transaction that drops partitions; ``otel-audit
verify`` reads them, trusting only the keys it is given, and reports the
records they cover as archived instead of missing. A deletion no trusted
retention checkpoint covers stays an error.

The body is canonical JSON (RFC 8785) of exactly these members::

    {"v": 1, "type": "retention",
     "n": 3,                          number: 1, 2, 3, ... without gaps
     "prev": "<64 hex>" | null,       hash of retention checkpoint n-1 (null for n = 1)
     "time": "2026-12-02T06:50:00.000000Z",
     "policy": "pci-dss" | "hipaa" | "soc2" | "<N>d",
     "cutoff": "<RFC 3339 µs Z>",     partitions ending at or before this were eligible
     "partitions": ["audit_logs_p202401", ...],          dropped by this run
     "archive": {"url": "s3://bucket/prefix", "archive_id": "<uuid>", "run": 7,
                 "manifest": "<64 hex: hash of that run's manifest>"},
     "chains": {"<chain id>": {"seq": 123456, "head": "<64 hex>"}, ...},
     "key_id": "<32 hex>"}

``chains`` holds, per chain, the archived prefix ``1..seq`` and the hash of
record ``seq`` (the archive's state as of that manifest), for every chain the
archive holds. Signature and hash as for checkpoints, with the domain tag
``otel-audit.retention.v1\\x00``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from otel_audit.core.canonical import canonical_json
from otel_audit.core.keys import KEY_ID_HEX_CHARS, SigningKey, VerifyKey
from otel_audit.errors import RetentionFormatError

__all__ = ["RETENTION_DOMAIN", "RetentionCheckpoint", "RetentionFormatError", "parse_retention", "sign_retention"]

RETENTION_DOMAIN = b"otel-audit.retention.v1\x00"
_MEMBERS = frozenset(
    {"v", "type", "n", "prev", "time", "policy", "cutoff", "partitions", "archive", "chains", "key_id"}
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{%d}" % KEY_ID_HEX_CHARS)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class RetentionCheckpoint:
    n: int
    doc: dict[str, Any]
    body: bytes
    signature: bytes
    hash: str

    @property
    def key_id(self) -> str:
        return str(self.doc["key_id"])

    @property
    def chains(self) -> dict[str, dict[str, Any]]:
        chains: dict[str, dict[str, Any]] = self.doc["chains"]
        return chains

    def describe(self) -> str:
        archive = self.doc["archive"]
        return f"retention checkpoint {self.n} ({self.doc['time']}; archive {archive['url']} run {archive['run']})"

    def signature_valid(self, trusted: Mapping[str, VerifyKey]) -> bool | None:
        key = trusted.get(self.key_id)
        if key is None:
            return None
        return key.verify(self.signature, RETENTION_DOMAIN + self.body)

    @property
    def envelope(self) -> bytes:
        return self.body + b"\n" + base64.b64encode(self.signature) + b"\n"


def retention_hash(body: bytes) -> str:
    return hashlib.sha256(RETENTION_DOMAIN + body).hexdigest()


def sign_retention(key: SigningKey, doc: dict[str, Any]) -> RetentionCheckpoint:
    doc = {**doc, "v": 1, "type": "retention", "key_id": key.key_id}
    body = canonical_json(doc)
    parsed = parse_retention(body, key.sign(RETENTION_DOMAIN + body))
    return parsed


def parse_retention(body: bytes, signature: bytes) -> RetentionCheckpoint:
    """Validate the structure (the signature is checked by the caller against its trusted keys)."""
    if len(signature) != 64:
        raise RetentionFormatError(f"an Ed25519 signature is 64 bytes, not {len(signature)}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RetentionFormatError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "retention" or doc.get("v") != 1:
        raise RetentionFormatError("body is not an otel-audit retention checkpoint of format v1")
    if set(doc) != _MEMBERS:
        raise RetentionFormatError(f"members differ from the format: {sorted(set(doc) ^ _MEMBERS)}")
    if type(doc["n"]) is not int or doc["n"] < 1 or (doc["n"] == 1) != (doc["prev"] is None):
        raise RetentionFormatError("n must be an integer >= 1, and prev null exactly for n = 1")
    if doc["prev"] is not None and not (isinstance(doc["prev"], str) and _HEX64.fullmatch(doc["prev"])):
        raise RetentionFormatError("prev is malformed")
    if not (isinstance(doc["key_id"], str) and _KEY_ID.fullmatch(doc["key_id"])):
        raise RetentionFormatError("key_id is malformed")
    if not isinstance(doc["partitions"], list) or not all(isinstance(p, str) for p in doc["partitions"]):
        raise RetentionFormatError("partitions must be a list of names")
    archive = doc["archive"]
    if not isinstance(archive, dict) or set(archive) != {"url", "archive_id", "run", "manifest"}:
        raise RetentionFormatError("archive must name url, archive_id, run and manifest")
    chains = doc["chains"]
    if not isinstance(chains, dict):
        raise RetentionFormatError("chains must be an object")
    for chain_id, entry in chains.items():
        if (
            not _UUID.fullmatch(chain_id)
            or not isinstance(entry, dict)
            or set(entry) != {"seq", "head"}
            or type(entry["seq"]) is not int
            or entry["seq"] < 1
            or not (isinstance(entry["head"], str) and _HEX64.fullmatch(entry["head"]))
        ):
            raise RetentionFormatError(f"chain entry {chain_id!r} is malformed")
    if canonical_json(doc) != body:
        raise RetentionFormatError("body is not in canonical JSON form")
    return RetentionCheckpoint(doc["n"], doc, bytes(body), bytes(signature), retention_hash(body))
