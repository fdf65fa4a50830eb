"""Records that arrive already sealed by an otel-audit processor.

Such a record carries its seal (``audit.record.id``, ``audit.chain.id``,
``audit.sequence.number``, ``audit.sequence.prev_hash``,
``audit.integrity.algorithm``, ``audit.integrity.value``), the exact bytes that
were hashed (``audit.record.canonical``) and, for record 1 of its chain, the
chain's genesis (``audit.chain.genesis``). The ingest does not seal it again:
it checks that the bytes are a well-formed record document whose hash and
fields are the seal, then stores those bytes under the original chain.

A record that fails the check is *rejected* (reported to the sender through
OTLP ``partial_success``): its bytes cannot be stored as what they claim to be,
and sending them again will not change that.

Links between records of a chain are checked as records arrive
(:class:`LinkTracker`): a break is *flagged* (counted, logged, recorded in the
ingest's own chain) and the record is stored anyway; the verifier has the final
word, over everything PostgreSQL holds.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from otel_audit.core import attributes as A
from otel_audit.core.canonical import CanonicalEncodingError, canonical_json
from otel_audit.core.chain import genesis_hash
from otel_audit.core.ids import MAX_SEQUENCE
from otel_audit.core.record import (
    HASH_ALGORITHM,
    MAX_INDEXED_CHARS,
    RECORD_DOMAIN,
    RECORD_FIELDS,
    RECORD_FORMAT,
    _normalize_ip,
)

__all__ = ["LinkTracker", "SealRejected", "SealedInput", "has_seal", "read_seal"]

_REQUIRED = ("v", "id", "chain_id", "seq", "prev_hash", "timestamp", "actor_type", "attributes", "problems")
_FIELD_SET = frozenset(RECORD_FIELDS)
_TEXT_FIELDS = (
    "actor_id",
    "actor_type",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "user_agent",
    "session_id",
    "user_id",
    "reason",
    "service_name",
    "service_instance_id",
    "host_name",
    "scope",
    "severity_text",
    "event_name",
    "message",
)
_INDEXED = ("action", "actor_id", "resource_type", "resource_id")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_INT32 = (-(2**31), 2**31 - 1)
_SEAL_KEYS = frozenset(A.SEAL_ATTRIBUTES)


class SealRejected(Exception):
    """A pre-sealed record that cannot be stored as sealed; the message says why."""


@dataclass(frozen=True, slots=True)
class SealedInput:
    """A pre-sealed record that passed :func:`read_seal`."""

    record_id: str
    chain_id: str
    seq: int
    prev_hash: str
    hash: str
    digest: bytes
    canonical: bytes
    genesis: bytes | None  # only for seq 1, and only if it is this chain's genesis
    genesis_problem: str | None  # a genesis was attached but does not belong to this record
    service_name: Any = None  # the sealed document's service_name
    genesis_service: Any = None  # the genesis's emitter.service_name (with ``genesis`` only)

    @property
    def services(self) -> tuple[Any, ...]:
        """The service names this record claims: its own, and its chain's when the genesis came with it."""
        if self.genesis is None:
            return (self.service_name,)
        return (self.service_name, self.genesis_service)


def has_seal(keys: Any) -> bool:
    """Whether attribute ``keys`` include any of the seal attributes (``audit.chain.id``, ...)."""
    return not _SEAL_KEYS.isdisjoint(keys)


def read_seal(attrs: Mapping[str, Any], *, max_record_bytes: int) -> SealedInput:
    """Check a pre-sealed record's bytes against its seal attributes.

    Raises :class:`SealRejected` naming the first problem found.
    """
    missing = [k for k in A.SEAL_ATTRIBUTES if k not in attrs]
    if missing:
        raise SealRejected(f"incomplete seal: missing {', '.join(missing)}")
    text = attrs.get(A.RECORD_CANONICAL)
    if text is None:
        raise SealRejected(
            f"sealed record {attrs.get(A.CHAIN_ID)!r}/{attrs.get(A.SEQUENCE_NUMBER)!r} has no "
            f"{A.RECORD_CANONICAL} attribute, so its exact sealed bytes are unknown (an otel-audit processor "
            "older than the ingest, or a collector processor removed it); its emitter's own sink stores it"
        )
    chain_id = attrs[A.CHAIN_ID]
    seq = attrs[A.SEQUENCE_NUMBER]
    prev_hash = attrs[A.SEQUENCE_PREV_HASH]
    record_id = attrs[A.RECORD_ID]
    claimed = attrs[A.INTEGRITY_VALUE]
    where = f"sealed record {_short(chain_id)}/{_short(seq)}"
    if not (
        type(text) is str
        and type(chain_id) is str
        and type(seq) is int
        and type(prev_hash) is str
        and type(record_id) is str
        and type(claimed) is str
    ):
        raise SealRejected(f"{where}: seal attributes have the wrong types (texts, and an integer sequence number)")
    algorithm = attrs[A.INTEGRITY_ALGORITHM]
    if algorithm != HASH_ALGORITHM:
        raise SealRejected(f"{where}: unsupported {A.INTEGRITY_ALGORITHM} {_short(algorithm)} (expected sha256)")
    try:
        canonical = text.encode("utf-8")
    except UnicodeEncodeError:
        raise SealRejected(f"{where}: {A.RECORD_CANONICAL} is not valid Unicode") from None
    if len(canonical) > max_record_bytes:
        raise SealRejected(
            f"{where}: {len(canonical)} bytes exceed the ingest's record size limit of {max_record_bytes} "
            "(`otel-audit serve --max-record-bytes`)"
        )
    digest = hashlib.sha256(RECORD_DOMAIN + canonical).digest()
    hex_digest = digest.hex()
    if hex_digest != claimed:
        raise SealRejected(
            f"{where}: the bytes in {A.RECORD_CANONICAL} hash to {hex_digest}, not to {A.INTEGRITY_VALUE} "
            f"{_short(claimed)}: altered in transit or forged"
        )
    try:
        doc = orjson.loads(canonical)
    except orjson.JSONDecodeError:
        raise SealRejected(f"{where}: {A.RECORD_CANONICAL} is not JSON") from None
    problem = document_problem(doc)
    if problem is None:
        try:
            if canonical_json(doc) != canonical:
                problem = "the bytes are not in canonical form (RFC 8785)"
        except CanonicalEncodingError as exc:
            problem = f"not canonical JSON ({exc})"
    if problem is None:
        for field, value in (("chain_id", chain_id), ("seq", seq), ("prev_hash", prev_hash), ("id", record_id)):
            if doc.get(field) != value:
                problem = f"the sealed document's {field} {_short(doc.get(field))} differs from the seal attribute"
                break
    if problem is not None:
        raise SealRejected(f"{where}: {problem}")

    genesis = genesis_problem = genesis_service = None
    raw_genesis = attrs.get(A.CHAIN_GENESIS)
    if raw_genesis is not None:
        genesis, genesis_problem, genesis_service = _check_genesis(raw_genesis, chain_id, seq, prev_hash)
    return SealedInput(
        record_id,
        chain_id,
        seq,
        prev_hash,
        hex_digest,
        digest,
        canonical,
        genesis,
        genesis_problem,
        doc.get("service_name"),
        genesis_service,
    )


def document_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a record document PostgreSQL and the verifier would take as is (None: it is)."""
    if type(doc) is not dict:
        return "the sealed bytes are not a JSON object"
    unknown = doc.keys() - _FIELD_SET
    if unknown:
        return f"unknown fields {sorted(unknown)[:5]}"
    absent = [k for k in _REQUIRED if k not in doc]
    if absent:
        return f"missing fields {absent}"
    if doc["v"] != RECORD_FORMAT or type(doc["v"]) is not int:
        return f"unsupported record format v={_short(doc['v'])}"
    for field in ("id", "chain_id"):
        if not _is_uuid(doc[field]):
            return f"{field} is not a lowercase UUID"
    seq = doc["seq"]
    if type(seq) is not int or not 1 <= seq <= MAX_SEQUENCE:
        return "seq is not a sequence number"
    if type(doc["prev_hash"]) is not str or not _HEX64.fullmatch(doc["prev_hash"]):
        return "prev_hash is not 64 lowercase hex digits"
    timestamp = doc["timestamp"]
    if type(timestamp) is not str or not _TIMESTAMP.fullmatch(timestamp) or not _valid_time(timestamp):
        return "timestamp is not YYYY-MM-DDTHH:MM:SS.ffffffZ"
    for field in _TEXT_FIELDS:
        value = doc.get(field)
        if value is not None and type(value) is not str:
            return f"{field} is not text"
    for field in _INDEXED:
        if len(doc.get(field) or "") > MAX_INDEXED_CHARS:
            return f"{field} is longer than {MAX_INDEXED_CHARS} characters"
    for field, pattern in (("trace_id", _HEX32), ("span_id", _HEX16)):
        value = doc.get(field)
        if value is not None and (type(value) is not str or not pattern.fullmatch(value)):
            return f"{field} is not lowercase hex of the right length"
    for field in ("trace_flags", "severity_number"):
        value = doc.get(field)
        if value is not None and (type(value) is not int or not _INT32[0] <= value <= _INT32[1]):
            return f"{field} is not a 32-bit integer"
    ip = doc.get("ip_address")
    if ip is not None and (type(ip) is not str or _normalize_ip(ip) != ip):
        return "ip_address is not a normalized IP address"
    changed = doc.get("changed_fields")
    if changed is not None and (type(changed) is not list or any(type(f) is not str for f in changed)):
        return "changed_fields is not a list of texts"
    if type(doc["attributes"]) is not dict:
        return "attributes is not an object"
    problems = doc["problems"]
    if type(problems) is not list or any(type(p) is not str for p in problems):
        return "problems is not a list of texts"
    if not problems and (
        not doc.get("actor_id")
        or not doc.get("action")
        or not doc.get("resource_type")
        or not doc.get("resource_id")
        or doc["actor_type"] not in A.ACTOR_TYPES
        or doc.get("result") not in A.RESULTS
    ):
        return "a record without problems must have actor, action, resource and a valid actor_type and result"
    return None


def _check_genesis(raw: Any, chain_id: str, seq: int, prev_hash: str) -> tuple[bytes | None, str | None, Any]:
    """(genesis bytes, problem, the genesis's emitter.service_name)."""
    if seq != 1:
        return None, f"{A.CHAIN_GENESIS} is attached to record {seq}, not to record 1; ignored", None
    if type(raw) is not str:
        return None, f"{A.CHAIN_GENESIS} is not text; ignored", None
    genesis = raw.encode("utf-8", "replace")
    computed = genesis_hash(genesis)
    if computed != prev_hash:
        return (
            None,
            (
                f"record 1 links to prev_hash {prev_hash}, but the attached {A.CHAIN_GENESIS} hashes to {computed}; "
                "the chain was not registered from it"
            ),
            None,
        )
    try:
        doc = orjson.loads(genesis)
        ok = (
            type(doc) is dict
            and doc.get("type") == "chain"
            and doc.get("chain_id") == chain_id
            and doc.get("v") == RECORD_FORMAT
            and type(doc.get("emitter")) is dict
            and type(doc.get("created")) is str
            and bool(_TIMESTAMP.fullmatch(doc["created"]))
            and _valid_time(doc["created"])
            and canonical_json(doc) == genesis
        )
    except (orjson.JSONDecodeError, CanonicalEncodingError):
        ok = False
    if not ok:
        return None, f"{A.CHAIN_GENESIS} is not a canonical otel-audit genesis of chain {chain_id}; ignored", None
    return genesis, None, doc["emitter"].get("service_name")


def _is_uuid(value: Any) -> bool:
    if type(value) is not str or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _valid_time(text: str) -> bool:
    """A real instant (the pattern is checked first; this rejects e.g. month 13)."""
    try:
        datetime.fromisoformat(text[:-1])
    except ValueError:
        return False
    return True


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class LinkTracker:
    """Checks the links of foreign chains as their records arrive, in any order.

    For each of the ``max_chains`` most recently seen chains it remembers the
    (hash, prev_hash) of the last ``window`` records that arrived. A new record
    is checked against its neighbours when they are known: its prev_hash
    against the hash of record seq-1, its hash against the prev_hash of record
    seq+1. A record seen before with the same hash is a redelivery (a retry),
    with a different hash a conflict. Records whose neighbours are not
    remembered are not checked here; ``otel-audit verify`` checks everything.
    """

    def __init__(self, max_chains: int = 4096, window: int = 64) -> None:
        self.max_chains = max_chains
        self.window = window
        self._chains: OrderedDict[str, dict[int, tuple[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, chain_id: str, seq: int, hash_hex: str, prev_hash: str) -> str | None:
        """Remember one arriving record; returns a description of a break it reveals, if any."""
        with self._lock:
            seen = self._chains.get(chain_id)
            if seen is None:
                seen = self._chains[chain_id] = {}
                if len(self._chains) > self.max_chains:
                    self._chains.popitem(last=False)
            else:
                self._chains.move_to_end(chain_id)
            known = seen.get(seq)
            if known is not None:
                if known[0] == hash_hex:
                    return None
                return (
                    f"conflict at seq {seq}: a record with hash {hash_hex} arrived after a different one "
                    f"({known[0]}) for the same position"
                )
            problem = None
            before = seen.get(seq - 1)
            if before is not None and before[0] != prev_hash:
                problem = (
                    f"broken link at seq {seq}: its prev_hash is {prev_hash}, but record {seq - 1} arrived with "
                    f"hash {before[0]}"
                )
            after = seen.get(seq + 1)
            if after is not None and after[1] != hash_hex:
                problem = (
                    f"broken link at seq {seq + 1}: its prev_hash is {after[1]}, but record {seq} arrived with "
                    f"hash {hash_hex}"
                )
            seen[seq] = (hash_hex, prev_hash)
            if len(seen) > self.window:
                del seen[next(iter(seen))]
            return problem
