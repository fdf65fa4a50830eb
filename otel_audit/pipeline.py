"""One emitter's path from a record draft to PostgreSQL: chain -> spool -> sink.

Shared by the in-process OTel processor and the OTLP ingest service (one
pipeline per ingest worker). It knows neither OTel nor HTTP; it wires the
sealing core to the durable spool and the PostgreSQL sink, and owns the
lifecycle: start, flush, fail-closed waits, shutdown, and what a forked child
must do (start a chain of its own).

With a signing key it also owns the checkpointer thread (signed chain heads
every N records and every T seconds, a closing one at shutdown) and, with
witnesses, the thread that copies committed checkpoints to them.

The ingest also *relays* records that arrived already sealed by another
emitter: they go, unchanged, into a second spool of the same sink and are
stored under their original chain (:meth:`AuditPipeline.relay`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from otel_audit import settings
from otel_audit.checkpointer import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CHECKPOINT_RECORDS,
    Checkpointer,
    checkpoint_policy,
    interval_ms,
)
from otel_audit.core.chain import KIND_GENESIS, KIND_RECORD, Chain, SealedRecord, emitter_metadata, genesis_hash
from otel_audit.core.checkpoint import (
    Checkpoint,
    CheckpointFormatError,
    frame_digest,
    parse_envelope,
    sign_checkpoint,
)
from otel_audit.core.ids import new_chain_id
from otel_audit.core.keys import SigningKey
from otel_audit.core.record import Draft
from otel_audit.diagnostics import install_stderr_fallback
from otel_audit.errors import AuditConfigurationError, SpoolFull
from otel_audit.sink.checkpoints import decode_checkpoints
from otel_audit.sink.writer import PostgresSink
from otel_audit.spool.frames import KIND_DELIVERED_GENESIS, delivered_genesis_frame
from otel_audit.spool.spool import ChainSpool, SpoolConfig, SpoolPosition
from otel_audit.stats import PipelineStats
from otel_audit.witness import Witness, WitnessPublisher

__all__ = ["AuditPipeline", "PipelineConfig", "default_spool_dir"]

_log = logging.getLogger("otel_audit")

#: Notes kept beside a chain's spool for a process that adopts it (see otel_audit.spool.spool).
NOTE_GENESIS = "genesis"
NOTE_CHECKPOINT = "checkpoint.json"
NOTE_CLOSING = "closing.json"


def default_spool_dir() -> Path:
    """``$OTEL_AUDIT_SPOOL_DIR``, else ``$XDG_STATE_HOME/otel-audit/spool`` (``~/.local/state/...``)."""
    return settings.SPOOL_DIR.get()


@dataclass(frozen=True)
class PipelineConfig:
    dsn: str
    spool: SpoolConfig
    max_record_bytes: int = settings.DEFAULT_MAX_RECORD_BYTES
    batch_records: int = 10_000
    adopt_orphans: bool = True
    application_name: str = "otel-audit-sink"
    #: Signs checkpoints; ``None`` turns checkpoints off (verify --trusted-key then fails the chain).
    signing_key: SigningKey | None = None
    checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    witnesses: tuple[Witness, ...] = ()
    #: The privacy policy in force, as :meth:`otel_audit.privacy.PrivacyPolicy.describe` gives it (no keys):
    #: sealed into each chain's genesis. ``None``: no ``privacy`` member (records sealed without a policy).
    privacy: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_records < 1:
            raise AuditConfigurationError(
                f"checkpoint_records must be at least 1, not {self.checkpoint_records} (default 1000)"
            )
        if not self.checkpoint_interval > 0:
            raise AuditConfigurationError(
                f"checkpoint_interval must be a positive number of seconds, not {self.checkpoint_interval} (default 10)"
            )
        if not self.dsn:
            raise AuditConfigurationError(
                "no PostgreSQL DSN: pass dsn= or set OTEL_AUDIT_DSN (e.g. postgresql://user@host/db)"
            )
        if self.spool.segment_bytes < 2 * self.max_record_bytes + 4096:
            raise AuditConfigurationError(
                f"spool segment_bytes ({self.spool.segment_bytes}) must be at least twice max_record_bytes "
                f"({self.max_record_bytes})"
            )


class AuditPipeline:
    """Seal -> spool -> PostgreSQL for one chain. Thread-safe :meth:`seal`."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        emitter: Mapping[str, Any],
        emitter_kind: str = "sdk",
        sink_hooks: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.config = config
        self._emitter = dict(emitter)
        self._emitter_kind = emitter_kind
        self._sink_hooks = dict(sink_hooks or {})
        self._counter_lock = threading.Lock()
        self._relay_lock = threading.Lock()
        self._closed = False
        self._dormant = False
        # Its warnings (database unreachable, records left at exit) must reach someone.
        install_stderr_fallback()
        self._parent_chain: str | None = None  # set in a forked child: the chain of the process it forked from
        self._build()

    def _build(self) -> None:
        self._relay_spool: ChainSpool | None = None
        self.stats = PipelineStats()
        config = self.config
        self.witness = WitnessPublisher(config.witnesses, self.stats) if config.witnesses else None
        hooks: dict[str, Any] = dict(self._sink_hooks)
        hooks.setdefault("close_adopted", self._close_adopted)
        user_after_commit = hooks.pop("after_commit", None)
        if self.witness is not None or user_after_commit is not None:
            hooks["after_commit"] = self._after_commit_hook(self.witness, user_after_commit)
        self.sink = PostgresSink(
            config.dsn,
            config.spool,
            stats=self.stats,
            batch_records=config.batch_records,
            adopt_orphans=config.adopt_orphans,
            application_name=config.application_name,
            **hooks,
        )
        chain_id = new_chain_id()
        spool = self.sink.open_spool(chain_id)
        self.spool = spool
        self._host_name = str(self._emitter.get("host_name") or socket.gethostname())
        self.chain = Chain(
            spool,
            emitter=emitter_metadata(self._emitter_kind, **self._emitter),
            chain_id=chain_id,
            max_record_bytes=self.config.max_record_bytes,
            privacy=config.privacy,
            checkpoint_policy=checkpoint_policy(
                config.signing_key, config.checkpoint_records, config.checkpoint_interval
            ),
            parent=self._parent_chain,
            checkpoint_wait=config.spool.block_timeout,
        )
        # For whoever adopts this spool if the process dies (see _close_adopted).
        spool.write_note(NOTE_GENESIS, self.chain.genesis)
        self.checkpointer: Checkpointer | None = None
        if config.signing_key is not None:
            self.checkpointer = Checkpointer(
                self.chain,
                config.signing_key,
                every_records=config.checkpoint_records,
                every_seconds=config.checkpoint_interval,
                stats=self.stats,
                on_spooled=self._note_checkpoint,
            )
        # The hot path: without a checkpointer to poke and with no msync to wait
        # for, sealing is exactly the chain's seal (one call less per record).
        fast = self.config.spool.fsync != "always" and self.checkpointer is None
        self.seal = self.chain.seal if fast else self._seal_checked  # type: ignore[method-assign]
        self.sink.start()
        if self.checkpointer is not None:
            self.checkpointer.start()

    def _note_checkpoint(self, checkpoint: Checkpoint, seq: int, head: str) -> None:
        """Keep the newest spooled checkpoint, and the head at that moment, beside the spool."""
        note = {"checkpoint": checkpoint.envelope.decode("ascii"), "seq": seq, "head": head}
        self.spool.write_note(NOTE_CHECKPOINT, orjson.dumps(note))

    def _close_adopted(self, spool: ChainSpool, replayed: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """Close the chain of a dead emitter whose spool this process replayed (on the sink thread).

        Signs a closing checkpoint of the newest record the dead process sealed, continuing its
        checkpoint numbering and naming this process in ``adopted_by``: adopted, not closed by its
        owner. Returns the frame to store (nothing when the owner had closed it, when this process
        has no key, or when the chain's state cannot be known without trusting the database).
        The signed checkpoint is noted in the spool first, so a retry never signs a second one.
        """
        noted = spool.read_note(NOTE_CLOSING)
        if noted is not None:
            envelope = orjson.loads(noted)["checkpoint"].encode("ascii")
            return [(envelope, frame_digest(envelope))]
        chain_id = spool.chain_id
        newest: Checkpoint | None = None
        heads: list[tuple[int, str]] = []
        envelopes = list(replayed.get("checkpoints", ()))
        note = spool.read_note(NOTE_CHECKPOINT)
        if note is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = orjson.loads(note)
                envelopes.append(data["checkpoint"].encode("ascii"))
                heads.append((int(data["seq"]), str(data["head"])))
        for envelope in envelopes:
            try:
                checkpoint = parse_envelope(envelope)
            except CheckpointFormatError:
                continue
            if checkpoint.chain_id == chain_id and (newest is None or checkpoint.n > newest.n):
                newest = checkpoint
        if newest is not None and newest.closed:
            return []  # its owner closed it (the spool only waited for PostgreSQL)
        genesis_bytes = spool.read_note(NOTE_GENESIS)
        genesis = newest.genesis if newest is not None else replayed.get("genesis_hash")
        if genesis is None and genesis_bytes is not None:
            genesis = genesis_hash(genesis_bytes)
        if genesis is None or (newest is None and genesis_bytes is None):
            _log.warning(
                "otel-audit: the spool %s of a dead process (written by an older otel-audit) was replayed, but its "
                "chain cannot be closed: its genesis and checkpoints are not noted beside it. It verifies as "
                "unclosed",
                spool.path,
            )
            return []
        heads.append((0, genesis))
        if newest is not None:
            heads.append((newest.seq, newest.head))
        if "last_seq" in replayed:
            heads.append((replayed["last_seq"], replayed["last_hash"]))
        seq, head = max(heads)
        stored_n = replayed.get("stored_max_n")
        next_n = newest.n + 1 if newest is not None else 1
        if stored_n is not None and stored_n >= next_n:
            _log.warning(
                "otel-audit: the dead chain %s has checkpoint %d in PostgreSQL, newer than any its spool notes; it is "
                "left unclosed rather than closed from what the database says",
                chain_id,
                stored_n,
            )
            return []
        key = self.config.signing_key
        if key is None:
            _log.warning(
                "otel-audit: replayed the spool of a dead process (chain %s) but cannot close its chain: this process "
                "has no signing key (OTEL_AUDIT_SIGNING_KEY). It verifies as unclosed",
                chain_id,
            )
            return []
        checkpoint = sign_checkpoint(
            key,
            chain_id=chain_id,
            n=next_n,
            seq=seq,
            head=head,
            genesis=genesis,
            prev=newest.hash if newest is not None else None,
            time_ns=time.time_ns(),
            interval_ms=newest.interval_ms if newest is not None else interval_ms(self.config.checkpoint_interval),
            closed=True,
            adopted_by={"chain_id": self.chain.chain_id, "host_name": self._host_name, "pid": os.getpid()},
        )
        envelope = checkpoint.envelope
        spool.write_note(NOTE_CLOSING, orjson.dumps({"checkpoint": envelope.decode("ascii")}))
        _log.info("otel-audit: closed chain %s of a dead process at seq %d (adopted)", chain_id, seq)
        return [(envelope, frame_digest(envelope))]

    @staticmethod
    def _after_commit_hook(
        witness: WitnessPublisher | None, user: Callable[[list[tuple[bytes, bytes]]], None] | None
    ) -> Callable[[list[tuple[bytes, bytes]]], None]:
        """Runs on the sink thread after a batch holding checkpoints committed: hand them to the witnesses."""

        def after_commit(frames: list[tuple[bytes, bytes]]) -> None:
            if witness is not None:
                witness.submit(decode_checkpoints(frames))
            if user is not None:
                user(frames)

        return after_commit

    @property
    def chain_id(self) -> str:
        return self.chain.chain_id

    # ------------------------------------------------------------------ hot path
    def seal(self, draft: Draft) -> SealedRecord:
        """Seal and spool one record; durable against a process crash on return.

        Raises :class:`SpoolFull` if the spool cannot take it (nothing is sealed
        then). :meth:`_build` replaces this method per instance with the fastest
        correct variant: the chain's own ``seal``, or :meth:`_seal_checked`.
        """
        return self._seal_checked(draft)

    def _seal_checked(self, draft: Draft) -> SealedRecord:
        sealed = self.chain.seal(draft)
        checkpointer = self.checkpointer
        if checkpointer is not None and sealed.seq >= checkpointer.due_seq:
            checkpointer.poke(sealed.seq, sealed.hash)
        if self.config.spool.fsync == "always":
            self._require_synced(self.spool, sealed.position)
        return sealed

    def _require_synced(self, spool: ChainSpool, position: SpoolPosition) -> None:
        """``fsync="always"``: return only once the msync covering ``position`` is done."""
        timeout = self.config.spool.block_timeout
        if not spool.wait_synced(position, timeout):
            raise SpoolFull(
                f"the spool {spool.path} could not be synced to disk within {timeout:g}s; the record is "
                "spooled but may not survive a power loss. Check the disk, or use spool_fsync='interval'."
            )

    def relay(
        self, canonical: bytes, digest: bytes, *, genesis: bytes | None = None, delivered_by: str | None = None
    ) -> SpoolPosition:
        """Spool a record sealed by another emitter; it is stored under its own chain.

        The caller (the OTLP ingest) has checked that ``digest`` is the SHA-256
        of the record (with its domain tag) and that ``genesis``, if given, is
        the genesis of the record's chain; ``delivered_by`` names the ingest token
        that delivered it, stored with the chain's registry entry
        (``audit_chains.delivered_by``). Durable against a process crash on
        return, like :meth:`seal`; returns the position to wait for with
        :meth:`wait_position`. Raises :class:`SpoolFull` if the spool cannot
        take it.
        """
        with self._relay_lock:
            spool = self._relay_spool
            if spool is None:
                spool = self._relay_spool = self.sink.open_relay_spool()
            if genesis is not None:
                if delivered_by is None:
                    spool.append(KIND_GENESIS, genesis, bytes.fromhex(genesis_hash(genesis)))
                else:
                    spool.append(KIND_DELIVERED_GENESIS, *delivered_genesis_frame(genesis, delivered_by))
            position = spool.append(KIND_RECORD, canonical, digest)
            self.stats.relayed += 1
        if self.config.spool.fsync == "always":
            self._require_synced(spool, position)
        return position

    def count_dropped(self, n: int = 1) -> None:
        with self._counter_lock:
            self.stats.dropped += n

    # ------------------------------------------------------------------ waiting
    def wait_committed(self, sealed: SealedRecord, timeout: float) -> bool:
        return self.wait_position(sealed.position, timeout)

    def wait_position(self, position: SpoolPosition, timeout: float, *, relay: bool = False) -> bool:
        """Block until everything up to ``position`` of the own (or the relay) spool is committed."""
        return self.sink.wait_committed(position, timeout, relay=relay)

    @property
    def backlog_bytes(self) -> int:
        """Bytes sealed or relayed by this pipeline and not yet committed."""
        own = self.spool.end - self.sink.committed_position
        relay = self._relay_spool
        if relay is not None:
            own += relay.end - self.sink.relay_committed_position
        return max(0, own)

    def flush(self, timeout: float = 30.0) -> bool:
        return self.sink.flush(timeout)

    def snapshot(self) -> dict[str, Any]:
        self.stats.accepted = self.chain.head()[0]
        self.stats.invalid = self.chain.invalid
        data = self.stats.snapshot()
        data["chain_id"] = self.chain_id
        data["spool_dir"] = str(self.spool.path)
        checkpointer = self.checkpointer
        last = checkpointer.last if checkpointer is not None else None
        data["checkpoint_key_id"] = checkpointer.key.key_id if checkpointer is not None else None
        data["last_checkpoint"] = (
            {"n": last.n, "seq": last.seq, "time": last.time, "closed": last.closed} if last is not None else None
        )
        return data

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float = 30.0) -> bool:
        """Close the chain (closing checkpoint), commit everything, witness it, stop.

        Returns whether everything was committed to PostgreSQL within ``timeout``.
        """
        if self._closed:
            return True
        self._closed = True
        if self._dormant:
            return True  # a forked child that never audited: nothing of its own to close
        deadline = time.monotonic() + timeout
        if self.checkpointer is not None:
            self.checkpointer.close(timeout=min(10.0, timeout))
        else:
            self.chain.close()
        self.stats.accepted = self.chain.head()[0]
        committed = self.sink.close(max(0.0, deadline - time.monotonic()))
        if not committed:
            self._report_left_in_spool()
        if self.witness is not None:
            self.witness.close(max(1.0, deadline - time.monotonic()))
        return committed

    def _report_left_in_spool(self) -> None:
        """Say at shutdown what did not reach PostgreSQL, where it is and what happens to it."""
        left = max(0, self.chain.head()[0] - self.sink.records_passed())
        if self._relay_spool is not None:
            left += max(0, self.stats.relayed - self.sink.records_passed(relay=True))
        what = f"{left} audit record(s)" if left else "the end of the chain (its last frames, no record)"
        reason = self.stats.last_error or "PostgreSQL did not answer in time"
        _log.warning(
            "otel-audit: %s not yet written to PostgreSQL at shutdown (%s). They are safe in the spool %s "
            "and will be replayed by the next process that uses the spool directory %s and writes to the "
            "same database, or now with: otel-audit replay --spool %s --dsn DSN",
            what,
            reason,
            self.spool.path,
            self.config.spool.directory,
            self.spool.path,
        )

    def restart_after_fork(self) -> None:
        """In a forked child: leave the parent's chain, spool and connection alone.

        The child's own chain starts with its first audit record, not at the
        fork: a worker that never audits (a multiprocessing helper, a fork
        followed by exec) leaves no empty chain, spool directory or connection.
        """
        self._parent_chain = self.chain.chain_id
        if self.checkpointer is not None:
            self.checkpointer.abandon_after_fork()
        if self.witness is not None:
            self.witness.abandon_after_fork()
        self.sink.abandon_after_fork()
        self._counter_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._dormant = True
        self._closed = False
        self.seal = self._seal_after_fork  # type: ignore[method-assign]

    def _seal_after_fork(self, draft: Draft) -> SealedRecord:
        with self._start_lock:
            if self._dormant:
                self._build()  # rebinds self.seal
                self._dormant = False
        return self.seal(draft)
