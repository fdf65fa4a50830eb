"""Signed checkpoints: the chain head, committed where the database cannot rewrite it.

A checkpoint is one JSON document, encoded with the same canonical JSON as
records (:mod:`otel_audit.core.canonical`, RFC 8785)::

    {"v": 1, "type": "checkpoint",
     "chain_id": "<uuid>",          the chain it anchors
     "n": 7,                        checkpoint number in this chain: 1, 2, 3, ... without gaps
     "seq": 5000,                   sequence number of the newest record covered (0: none yet)
     "head": "<64 hex>",            hash of record `seq` (the genesis hash when seq is 0)
     "genesis": "<64 hex>",         the chain's genesis hash (binds the registry entry)
     "prev": "<64 hex>" | null,     checkpoint hash of checkpoint n-1 (null for n = 1)
     "time": "2026-11-28T08:50:47.123456Z",  when it was signed (UTC, microseconds)
     "interval_ms": 10000,          the emitter's promise: the next checkpoint follows within this
     "closed": false,               true only on the last checkpoint of a chain
     "key_id": "<32 hex>"}          the signing key (see :mod:`otel_audit.core.keys`)

plus, only on a closing checkpoint signed by a process that replayed the spool
of a dead emitter (not by the chain's owner), ``"adopted_by": {"chain_id":
"<uuid>", "host_name": "...", "pid": 123}``: who adopted and closed it.

With ``body`` the canonical bytes of that document::

    signature       = Ed25519-sign(private key, CHECKPOINT_DOMAIN || body)
    checkpoint hash = lowercase_hex(SHA-256(CHECKPOINT_DOMAIN || body))

``CHECKPOINT_DOMAIN`` is ``b"otel-audit.checkpoint.v1\\x00"``. A *signed
checkpoint* travels as two lines of ASCII-compatible UTF-8 (the spool frame,
the witness file, the database columns ``body`` and ``signature``)::

    <body>\\n<standard base64 of the 64-byte signature, padded>\\n

The body never holds a raw newline (canonical JSON escapes control
characters), so the first newline splits the two unambiguously.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from otel_audit.core.canonical import canonical_json
from otel_audit.core.keys import KEY_ID_HEX_CHARS, SigningKey, VerifyKey
from otel_audit.core.record import CHECKPOINT_DOMAIN, format_timestamp
from otel_audit.errors import CheckpointFormatError, InvalidInput

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointFormatError",
    "SignatureStatus",
    "checkpoint_hash",
    "frame_digest",
    "parse_checkpoint",
    "parse_envelope",
    "sign_checkpoint",
]

CHECKPOINT_FORMAT = 1
_FIELDS = frozenset(
    {"v", "type", "chain_id", "n", "seq", "head", "genesis", "prev", "time", "interval_ms", "closed", "key_id"}
)
_ADOPTED_BY = "adopted_by"
_ADOPTER_FIELDS = frozenset({"chain_id", "host_name", "pid"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{%d}" % KEY_ID_HEX_CHARS)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


class SignatureStatus(str, Enum):
    VALID = "valid"
    UNTRUSTED_KEY = "untrusted_key"  # the named key is not among the trusted ones
    BAD_SIGNATURE = "bad_signature"  # the named key is trusted but the signature does not verify


def checkpoint_hash(body: bytes) -> str:
    return hashlib.sha256(CHECKPOINT_DOMAIN + body).hexdigest()


def frame_digest(envelope: bytes) -> bytes:
    """The spool frame digest of a signed checkpoint (see :mod:`otel_audit.spool.frames`)."""
    return hashlib.sha256(CHECKPOINT_DOMAIN + envelope).digest()


@dataclass(frozen=True)
class Checkpoint:
    chain_id: str
    n: int
    seq: int
    head: str
    genesis: str
    prev: str | None
    time: str
    interval_ms: int
    closed: bool
    key_id: str
    body: bytes
    signature: bytes
    hash: str
    #: Set on the closing checkpoint a process signed for a dead emitter's chain it replayed.
    adopted_by: Mapping[str, Any] | None = None

    @property
    def envelope(self) -> bytes:
        return self.body + b"\n" + base64.b64encode(self.signature) + b"\n"

    def signature_status(self, trusted: Mapping[str, VerifyKey]) -> SignatureStatus:
        key = trusted.get(self.key_id)
        if key is None:
            return SignatureStatus.UNTRUSTED_KEY
        if not key.verify(self.signature, CHECKPOINT_DOMAIN + self.body):
            return SignatureStatus.BAD_SIGNATURE
        return SignatureStatus.VALID

    def describe(self) -> str:
        state = ", closing" if self.closed else ""
        if self.adopted_by is not None:
            state = f", closing, adopted by pid {self.adopted_by['pid']} on {self.adopted_by['host_name']}"
        return f"checkpoint {self.n} (seq {self.seq}, signed {self.time} by key {self.key_id}{state})"


def sign_checkpoint(
    key: SigningKey,
    *,
    chain_id: str,
    n: int,
    seq: int,
    head: str,
    genesis: str,
    prev: str | None,
    time_ns: int,
    interval_ms: int,
    closed: bool = False,
    adopted_by: Mapping[str, Any] | None = None,
) -> Checkpoint:
    if adopted_by is not None and not closed:
        raise InvalidInput("adopted_by is only for the closing checkpoint of an adopted chain")
    doc: dict[str, Any] = {
        "v": CHECKPOINT_FORMAT,
        "type": "checkpoint",
        "chain_id": chain_id,
        "n": n,
        "seq": seq,
        "head": head,
        "genesis": genesis,
        "prev": prev,
        "time": format_timestamp(time_ns),
        "interval_ms": interval_ms,
        "closed": closed,
        "key_id": key.key_id,
    }
    if adopted_by is not None:
        doc[_ADOPTED_BY] = dict(adopted_by)
    body = canonical_json(doc, has_float=False, ascii_keys=adopted_by is None)
    signature = key.sign(CHECKPOINT_DOMAIN + body)
    return Checkpoint(
        chain_id,
        n,
        seq,
        head,
        genesis,
        prev,
        doc["time"],
        interval_ms,
        closed,
        key.key_id,
        body,
        signature,
        checkpoint_hash(body),
        doc.get(_ADOPTED_BY),
    )


def parse_envelope(data: bytes) -> Checkpoint:
    """A signed checkpoint from its two-line form; raises :class:`CheckpointFormatError`."""
    body, sep, rest = data.partition(b"\n")
    if not sep:
        raise CheckpointFormatError("no signature line (expected '<body>\\n<base64 signature>\\n')")
    line = rest[:-1] if rest.endswith(b"\n") else rest
    if b"\n" in line:
        raise CheckpointFormatError("more than two lines")
    try:
        signature = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointFormatError(f"signature line is not base64: {exc}") from None
    return parse_checkpoint(body, signature)


def parse_checkpoint(body: bytes, signature: bytes) -> Checkpoint:
    """Validate a checkpoint body (canonical, complete, well-typed); the signature is not checked here."""
    if len(signature) != 64:
        raise CheckpointFormatError(f"an Ed25519 signature is 64 bytes, not {len(signature)}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CheckpointFormatError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointFormatError("body is not a JSON object")
    if doc.get("type") != "checkpoint" or doc.get("v") != CHECKPOINT_FORMAT:
        raise CheckpointFormatError("body is not an otel-audit checkpoint of format v1")
    adopted_by = doc.get(_ADOPTED_BY)
    fields = set(doc) - {_ADOPTED_BY}
    if fields != _FIELDS:
        raise CheckpointFormatError(f"body fields differ from the v1 checkpoint: {sorted(fields ^ _FIELDS)}")
    if _ADOPTED_BY in doc:
        if (
            not isinstance(adopted_by, dict)
            or set(adopted_by) != _ADOPTER_FIELDS
            or type(adopted_by["chain_id"]) is not str
            or not _UUID.fullmatch(adopted_by["chain_id"])
            or type(adopted_by["host_name"]) is not str
            or type(adopted_by["pid"]) is not int
        ):
            raise CheckpointFormatError("adopted_by must be {chain_id: uuid, host_name: text, pid: integer}")
        if doc["closed"] is not True:
            raise CheckpointFormatError("adopted_by is only allowed on a closing checkpoint")
    _check(doc, "chain_id", str, _UUID)
    _check(doc, "head", str, _HEX64)
    _check(doc, "genesis", str, _HEX64)
    _check(doc, "time", str, _TIME)
    _check(doc, "key_id", str, _KEY_ID)
    if doc["prev"] is not None:
        _check(doc, "prev", str, _HEX64)
    for name, minimum in (("n", 1), ("seq", 0), ("interval_ms", 1)):
        value = doc[name]
        if type(value) is not int or value < minimum:
            raise CheckpointFormatError(f"{name} must be an integer >= {minimum}")
    if type(doc["closed"]) is not bool:
        raise CheckpointFormatError("closed must be true or false")
    if (doc["n"] == 1) != (doc["prev"] is None):
        raise CheckpointFormatError("prev must be null exactly for checkpoint 1")
    if canonical_json(doc) != body:
        raise CheckpointFormatError("body is not in canonical JSON form")
    return Checkpoint(
        doc["chain_id"],
        doc["n"],
        doc["seq"],
        doc["head"],
        doc["genesis"],
        doc["prev"],
        doc["time"],
        doc["interval_ms"],
        doc["closed"],
        doc["key_id"],
        bytes(body),
        bytes(signature),
        checkpoint_hash(body),
        adopted_by,
    )


def _check(doc: dict[str, Any], name: str, kind: type, pattern: re.Pattern[str]) -> None:
    value: Any = doc[name]
    if type(value) is not kind or not pattern.fullmatch(str(value)):
        raise CheckpointFormatError(f"{name} is malformed: {value!r}")
