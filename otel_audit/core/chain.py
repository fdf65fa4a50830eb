"""Hash chains: one per emitter, sealed under a lock, never forked.

A chain starts with a *genesis* document that names the emitter (service,
host, process). Its hash is the ``prev_hash`` of record 1, so the registry
entry is bound into the chain: replacing or deleting it breaks the first link.
Record ``n`` carries ``seq = n`` and ``prev_hash = hash(record n-1)``; both are
inside the hashed bytes.

The chain knows nothing of OTel or PostgreSQL. Sealed bytes go to a
:class:`FrameSink` (the durable spool) *inside* the lock, so the order of
frames on disk is the order of sequence numbers, and a refused append (spool
full) leaves no gap: the sequence number is only consumed once the frame is
accepted.

Checkpoint frames (signed chain heads) go through the same lock
(:meth:`Chain.append_checkpoint`), so they take their place in the spool
between records; :meth:`Chain.close` appends the closing checkpoint and
refuses every record after it.

A chain that signs checkpoints seals its *checkpoint policy* into its genesis
(``checkpoints``: key id, every N records, every T ms) and keeps it: no record
is sealed more than ``2 * N`` records after the newest checkpoint spooled
(a caller that would go past waits for the checkpointer). Because the sink
commits a spool in order, the database then never holds more than ``2 * N``
records after a chain's newest stored checkpoint, crash or not, which is what
the verifier holds it to (``unanchored_span``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import orjson

from otel_audit.core.canonical import canonical_json
from otel_audit.core.ids import MAX_SEQUENCE, new_chain_id, record_id_prefix
from otel_audit.core.record import (
    GENESIS_DOMAIN,
    RECORD_DOMAIN,
    RECORD_FORMAT,
    Draft,
    encode_draft,
    format_timestamp,
)
from otel_audit.errors import ChainClosed
from otel_audit.settings import DEFAULT_MAX_RECORD_BYTES

__all__ = [
    "KIND_CHECKPOINT",
    "KIND_GENESIS",
    "KIND_RECORD",
    "Chain",
    "FrameSink",
    "SealedRecord",
    "emitter_metadata",
    "genesis_hash",
]

KIND_GENESIS = ord("G")
KIND_RECORD = ord("R")
KIND_CHECKPOINT = ord("C")

#: How long a caller waits for a lagging checkpointer before sealing past the policy (logged).
DEFAULT_CHECKPOINT_WAIT = 5.0

_log = logging.getLogger("otel_audit")

_dumps = orjson.dumps
_SORT = orjson.OPT_SORT_KEYS
_sha256 = hashlib.sha256


class FrameSink(Protocol):
    """Where sealed frames go. ``append`` raises to refuse a frame."""

    def append(self, kind: int, payload: bytes, digest: bytes) -> Any: ...


class SealedRecord(NamedTuple):
    """The seal of one record (a tuple: cheap to build on the hot path)."""

    record_id: str
    chain_id: str
    seq: int
    prev_hash: str
    hash: str
    canonical: bytes
    position: Any  # where the sink put it (for fail-closed waits)


# tuple.__new__ skips the NamedTuple's Python-level constructor (hot path).
_new_sealed = tuple.__new__


def genesis_hash(genesis: bytes) -> str:
    return hashlib.sha256(GENESIS_DOMAIN + genesis).hexdigest()


class Chain:
    """Assigns sequence numbers and links; thread-safe, one per emitter."""

    def __init__(
        self,
        sink: FrameSink,
        *,
        emitter: Mapping[str, Any],
        chain_id: str | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        clock: Callable[[], int] = time.time_ns,
        privacy: Mapping[str, Any] | None = None,
        checkpoint_policy: Mapping[str, Any] | None = None,
        parent: str | None = None,
        checkpoint_wait: float = DEFAULT_CHECKPOINT_WAIT,
    ) -> None:
        """``privacy``: the privacy policy in force (rules and key ids, never keys), sealed into the genesis
        as ``privacy`` so that an auditor can see what this chain's records were protected by.
        ``checkpoint_policy``: ``{"key_id", "records", "interval_ms"}``, sealed into the genesis as
        ``checkpoints``; with a key id, records are held to ``2 * records`` after the newest checkpoint
        (see :meth:`append_checkpoint`). ``parent``: the chain id of the process this one was forked from."""
        self.chain_id = chain_id or new_chain_id()
        self.max_record_bytes = max_record_bytes
        self._sink = sink
        self._id_prefix = record_id_prefix()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        genesis_doc: dict[str, Any] = {
            "v": RECORD_FORMAT,
            "type": "chain",
            "chain_id": self.chain_id,
            "created": format_timestamp(clock()),
            "emitter": dict(emitter),
        }
        if privacy is not None:
            genesis_doc["privacy"] = dict(privacy)
        #: Records allowed after the newest spooled checkpoint (None: no limit, the chain signs nothing).
        self.max_unanchored: int | None = None
        if checkpoint_policy is not None:
            policy = dict(checkpoint_policy)
            genesis_doc["checkpoints"] = policy
            if policy.get("key_id") is not None:
                self.max_unanchored = 2 * int(policy["records"])
        if parent is not None:
            genesis_doc["parent"] = parent
        self.checkpoint_wait = checkpoint_wait
        self.genesis = canonical_json(genesis_doc)
        digest = hashlib.sha256(GENESIS_DOMAIN + self.genesis).digest()
        sink.append(KIND_GENESIS, self.genesis, digest)
        self.genesis_hash = digest.hex()
        self._seq = 0
        self._head = self.genesis_hash
        self.invalid = 0  # records sealed with validation problems
        self._closed = False
        # The highest sequence number that may be sealed now: the chain's end, the policy's
        # bound after the newest checkpoint, or -1 once closed (one comparison on the hot path).
        self._limit = MAX_SEQUENCE if self.max_unanchored is None else min(MAX_SEQUENCE, self.max_unanchored)

    def head(self) -> tuple[int, str]:
        """(sequence number, hash) of the newest sealed record (0, genesis hash at start)."""
        with self._lock:
            return self._seq, self._head

    def seal(self, draft: Draft) -> SealedRecord:
        doc = draft.doc
        doc["chain_id"] = self.chain_id
        with self._lock:
            seq = self._seq + 1
            if seq > self._limit:
                self._await_room(seq)
            prev = self._head
            record_id = doc["id"] = f"{self._id_prefix}{seq:012x}"
            doc["seq"] = seq
            doc["prev_hash"] = prev
            if draft.ascii_keys and not draft.has_float:  # the common case, inlined
                try:
                    canonical = _dumps(doc, option=_SORT)
                except TypeError:  # orjson refuses lone surrogates; encode_draft replaces them
                    canonical = None
                if canonical is None or b"\\u0000" in canonical or len(canonical) > self.max_record_bytes:
                    canonical = encode_draft(draft, self.max_record_bytes)
            else:
                canonical = encode_draft(draft, self.max_record_bytes)
            digest = _sha256(RECORD_DOMAIN + canonical).digest()
            position = self._sink.append(KIND_RECORD, canonical, digest)
            hex_digest = digest.hex()
            self._seq = seq
            self._head = hex_digest
            if doc["problems"]:
                self.invalid += 1
        return _new_sealed(SealedRecord, (record_id, self.chain_id, seq, prev, hex_digest, canonical, position))

    def _await_room(self, seq: int) -> None:
        """``seq`` is past the limit (lock held): closed, exhausted, or too far past the newest checkpoint."""
        if self._closed:
            raise ChainClosed(
                f"chain {self.chain_id} is closed (shut down); the record was not sealed. Log through "
                "a pipeline that is still open"
            )
        if seq > MAX_SEQUENCE:
            raise OverflowError("chain exhausted its 2**48 sequence numbers; start a new chain")
        # The checkpointer lags behind (a burst outran it): wait until it spools a checkpoint,
        # so that a crash never leaves more than the sealed policy unanchored.
        deadline = time.monotonic() + self.checkpoint_wait
        while seq > self._limit and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._limit = seq + (self.max_unanchored or 0)
                _log.error(
                    "otel-audit: chain %s: no checkpoint was spooled for %g s while records kept coming; record %d "
                    "is sealed beyond the chain's checkpoint policy, and `otel-audit verify --trusted-key` will "
                    "report the span as unanchored_span if this process stops before the next checkpoint. Check "
                    "the errors logged by the checkpointer",
                    self.chain_id,
                    self.checkpoint_wait,
                    seq,
                )
                break
            self._room.wait(remaining)
        if self._closed:
            self._await_room(seq)

    @property
    def closed(self) -> bool:
        return self._closed

    def append_checkpoint(self, payload: bytes, digest: bytes, seq: int | None = None) -> Any:
        """Spool a signed checkpoint frame between records (signing happens before, off the lock).

        The frame may land after records sealed since its head was read; that
        is fine, it names its own sequence number, ``seq``, from which the
        policy's bound on unanchored records counts again.
        """
        with self._lock:
            if self._closed:
                raise ChainClosed(f"chain {self.chain_id} is closed; no checkpoint follows the closing one")
            position = self._sink.append(KIND_CHECKPOINT, payload, digest)
            if seq is not None and self.max_unanchored is not None:
                limit = min(MAX_SEQUENCE, seq + self.max_unanchored)
                if limit > self._limit:
                    self._limit = limit
                    self._room.notify_all()
            return position

    def close(self, closing: Callable[[int, str], tuple[bytes, bytes]] | None = None) -> Any:
        """Close the chain: no record is sealed after this.

        ``closing(seq, head)`` builds the closing checkpoint frame (payload,
        digest) *under the lock*, so no record can slip in between the head it
        signs and its place in the spool. Returns the spool position of that
        frame (``None`` without one, or when the chain was already closed).
        """
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            self._limit = -1
            self._room.notify_all()
            if closing is None:
                return None
            payload, digest = closing(self._seq, self._head)
            return self._sink.append(KIND_CHECKPOINT, payload, digest)


def emitter_metadata(kind: str, **fields: Any) -> dict[str, Any]:
    """The genesis ``emitter`` object: who wrote this chain."""
    meta = {"kind": kind, "pid": os.getpid()}
    meta.update({k: v for k, v in fields.items() if v is not None})
    return meta
