"""The checkpointer: signs the chain head every N records and every T seconds, on its own thread.

Timing: a checkpoint is signed when ``every_records`` records were sealed
since the last one (the pipeline pokes the thread with the sequence number and
hash of the record that reached the count, and that is the head signed, so
checkpoints fall every N records even when the thread wakes late; the
caller's thread never signs), and whenever ``every_seconds`` passed without one, *even if nothing
was logged*: an idle chain keeps proving that it had nothing more (the
counter-example is journald's unsealed idle epochs, CVE-2023-31438). The
first checkpoint is signed at start (seq 0, the genesis), so a chain is
anchored from its first moment; :meth:`Checkpointer.close` appends the closing
one.

Signing happens off the chain lock: the head is read under the lock, signed,
and the frame appended under the lock, possibly after records sealed
meanwhile (it names its own sequence number). Only the closing checkpoint is
built under the lock, so that nothing can follow it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from otel_audit import settings
from otel_audit.core.chain import Chain
from otel_audit.core.checkpoint import Checkpoint, frame_digest, sign_checkpoint
from otel_audit.core.keys import SigningKey
from otel_audit.errors import ChainClosed, InvalidInput
from otel_audit.stats import PipelineStats

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_CHECKPOINT_RECORDS",
    "Checkpointer",
    "checkpoint_policy",
    "interval_ms",
]

_log = logging.getLogger("otel_audit")

DEFAULT_CHECKPOINT_RECORDS = settings.DEFAULT_CHECKPOINT_RECORDS
DEFAULT_CHECKPOINT_INTERVAL = settings.DEFAULT_CHECKPOINT_INTERVAL


def interval_ms(every_seconds: float) -> int:
    """The checkpoint interval as checkpoints and genesis policies state it (milliseconds, at least 1)."""
    return max(1, round(every_seconds * 1000))


def checkpoint_policy(key: SigningKey | None, every_records: int, every_seconds: float) -> dict[str, object]:
    """The ``checkpoints`` member a chain seals into its genesis: the promise the verifier holds it to.

    ``key_id`` is null when the emitter has no signing key (it promises no checkpoints).
    """
    return {
        "key_id": key.key_id if key is not None else None,
        "records": every_records,
        "interval_ms": interval_ms(every_seconds),
    }


#: ``due_seq`` while no record-count trigger is armed.
_NEVER = float("inf")


class Checkpointer:
    def __init__(
        self,
        chain: Chain,
        key: SigningKey,
        *,
        every_records: int = DEFAULT_CHECKPOINT_RECORDS,
        every_seconds: float = DEFAULT_CHECKPOINT_INTERVAL,
        stats: PipelineStats | None = None,
        retry_delay: float = 1.0,
        on_spooled: Callable[[Checkpoint, int, str], None] | None = None,
    ) -> None:
        """``on_spooled(checkpoint, seq, head)``: called on this thread after each checkpoint is spooled,
        with the chain's head at that moment (the pipeline notes both in the spool directory, for
        whoever adopts the spool if this process dies)."""
        if every_records < 1:
            raise InvalidInput("every_records must be at least 1")
        if every_seconds <= 0:
            raise InvalidInput("every_seconds must be positive")
        self.chain = chain
        self.key = key
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.interval_ms = interval_ms(every_seconds)
        self.stats = stats or PipelineStats()
        self.retry_delay = retry_delay
        self.on_spooled = on_spooled
        #: The pipeline pokes the thread once a sealed record reaches this sequence number.
        self.due_seq: float = _NEVER
        self.last: Checkpoint | None = None
        self._event = threading.Event()
        self._poked: tuple[int, str] | None = None
        self._emit_lock = threading.Lock()
        self._stopping = False
        self._next_at = 0.0  # monotonic time of the next interval checkpoint
        self._backoff_until = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otel-audit-checkpointer", daemon=True)
        self._thread.start()

    def poke(self, seq: int | None = None, head: str | None = None) -> None:
        """N records since the last checkpoint: wake the thread to sign ``(seq, head)`` (or the current head).

        Cheap; called on the caller's thread by the record that reached ``due_seq``.
        """
        self.due_seq = _NEVER
        if seq is not None and head is not None:
            self._poked = (seq, head)
        self._event.set()

    def checkpoint_now(self) -> Checkpoint | None:
        """Sign and spool a checkpoint of the current head at once (also used by tests and flushes)."""
        seq, head = self.chain.head()
        return self._emit(seq, head)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        self.checkpoint_now()
        # Records sealed while the first checkpoint was signed saw no due_seq yet and poked nobody:
        # look at the head before the first wait, or they would wait for the interval timer.
        self._catch_up()
        while not self._stopping:
            timeout = self._next_at - time.monotonic()
            if timeout > 0:
                self._event.wait(timeout)
            self._event.clear()
            if self._stopping:
                return
            poked, self._poked = self._poked, None
            if time.monotonic() < self._backoff_until:
                continue  # the last attempt failed: the retry waits for the interval timer
            if time.monotonic() >= self._next_at:
                self._emit(*self.chain.head())
            elif poked is not None and poked[0] - self._last_seq() >= self.every_records:
                self._emit(*poked)
            self._catch_up()

    def _catch_up(self) -> None:
        # Re-arm first, then look at the head: a record sealed after this line pokes, one
        # sealed before it is seen here (records sealed while the thread signed count too).
        if self._stopping or time.monotonic() < self._backoff_until:
            return  # a failed attempt is retried by the interval timer, not at once
        self.due_seq = self._last_seq() + self.every_records
        seq, head = self.chain.head()
        if seq - self._last_seq() >= self.every_records:
            self._emit(seq, head)

    def _last_seq(self) -> int:
        last = self.last
        return last.seq if last is not None else -self.every_records

    def _emit(self, seq: int, head: str) -> Checkpoint | None:
        with self._emit_lock:
            if self.chain.closed:
                self._stopping = True
                return None
            last = self.last
            try:
                checkpoint = self._sign(seq, head, closed=False)
                envelope = checkpoint.envelope
                self.chain.append_checkpoint(envelope, frame_digest(envelope), checkpoint.seq)
            except ChainClosed:
                self._stopping = True
                return None
            except Exception as exc:  # spool full, a signing failure: loud, retried soon, never fatal
                self._next_at = self._backoff_until = time.monotonic() + self.retry_delay
                self.due_seq = _NEVER
                self.stats.note_error(f"checkpoint: {exc}")
                _log.error(
                    "otel-audit: could not write checkpoint %d of chain %s: %s; retrying in %gs",
                    (last.n + 1) if last else 1,
                    self.chain.chain_id,
                    exc,
                    self.retry_delay,
                )
                return None
            self.last = checkpoint
            self.stats.checkpoints += 1
            self._next_at = time.monotonic() + self.every_seconds
            self.due_seq = seq + self.every_records
            self._spooled(checkpoint)
            return checkpoint

    def _spooled(self, checkpoint: Checkpoint) -> None:
        if self.on_spooled is None:
            return
        try:
            self.on_spooled(checkpoint, *self.chain.head())
        except Exception as exc:  # the note only helps an adopter; never fatal
            _log.warning("otel-audit: could not note checkpoint %d in the spool: %s", checkpoint.n, exc)

    def _sign(self, seq: int, head: str, *, closed: bool) -> Checkpoint:
        last = self.last
        return sign_checkpoint(
            self.key,
            chain_id=self.chain.chain_id,
            n=(last.n + 1) if last else 1,
            seq=seq,
            head=head,
            genesis=self.chain.genesis_hash,
            prev=last.hash if last else None,
            time_ns=time.time_ns(),
            interval_ms=self.interval_ms,
            closed=closed,
        )

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 10.0) -> Checkpoint | None:
        """Stop the thread, close the chain and spool the closing checkpoint (returned)."""
        self._stopping = True
        self._event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        closing: list[Checkpoint] = []

        def build(seq: int, head: str) -> tuple[bytes, bytes]:
            checkpoint = self._sign(seq, head, closed=True)
            closing.append(checkpoint)
            envelope = checkpoint.envelope
            return envelope, frame_digest(envelope)

        with self._emit_lock:
            try:
                self.chain.close(build)
            except Exception as exc:
                _log.error(
                    "otel-audit: could not write the closing checkpoint of chain %s: %s; the chain will verify as "
                    "stopped without a closing checkpoint (like a crash)",
                    self.chain.chain_id,
                    exc,
                )
                return None
            if closing:
                self.last = closing[0]
                self.stats.checkpoints += 1
                self._spooled(closing[0])
        return closing[0] if closing else None

    def abandon_after_fork(self) -> None:
        """In a forked child: the thread does not exist here; the child builds its own chain."""
        self._stopping = True
