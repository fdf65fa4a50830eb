"""The runtime side of witnesses: the thread that copies committed checkpoints to them.

Witness writes happen off every application thread, after the checkpoint is
committed to PostgreSQL, so a witness never holds a head the database could
not have. A witness that cannot be written is loud (logged at ERROR, counted
in ``witness_failures``) and retried with the next checkpoint; it never stops
the application. Storage and format: :mod:`otel_audit.witness.store`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence

from otel_audit.core.checkpoint import Checkpoint
from otel_audit.stats import PipelineStats
from otel_audit.witness.store import Witness

__all__ = ["WitnessPublisher"]

_log = logging.getLogger("otel_audit.witness")


class _Pending:
    __slots__ = ("checkpoint", "failed")

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.failed = False


class WitnessPublisher:
    """Copies committed checkpoints to every witness on a thread of its own.

    :meth:`submit` is called by the sink after each commit and never blocks on
    a witness. Per witness, checkpoints are written in order; after a failure
    the rest waits and is retried when the next checkpoint arrives (at least
    every checkpoint interval), and once more at :meth:`close`. At most
    ``max_pending`` checkpoints wait per witness; older ones are then given up
    (they stay in PostgreSQL; ``otel-audit verify --witness`` reports them as
    not witnessed).
    """

    def __init__(
        self,
        witnesses: Sequence[Witness],
        stats: PipelineStats,
        *,
        max_pending: int = 100_000,
        log_every: float = 60.0,
    ) -> None:
        self.witnesses = list(witnesses)
        self.stats = stats
        self.max_pending = max_pending
        self.log_every = log_every
        self._queues: list[collections.deque[_Pending]] = [collections.deque() for _ in self.witnesses]
        self._failing: list[tuple[float, int] | None] = [None for _ in self.witnesses]  # (last log, count)
        self._cond = threading.Condition(threading.Lock())
        self._new = False
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="otel-audit-witness", daemon=True)
        self._thread.start()

    def submit(self, checkpoints: Sequence[Checkpoint]) -> None:
        if not checkpoints:
            return
        with self._cond:
            for index, queue in enumerate(self._queues):
                for checkpoint in checkpoints:
                    queue.append(_Pending(checkpoint))
                overflow = len(queue) - self.max_pending
                if overflow > 0:
                    for _ in range(overflow):
                        given_up = queue.popleft()
                        if not given_up.failed:
                            self.stats.witness_failures += 1
                    _log.error(
                        "otel-audit: %s: gave up %d checkpoint(s) after %d waited; they remain in PostgreSQL "
                        "but are not witnessed. Fix the witness (see the errors above)",
                        self.witnesses[index].description,
                        overflow,
                        self.max_pending,
                    )
            self._new = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues)

    def flush(self, timeout: float) -> bool:
        """Wait until every submitted checkpoint was attempted once (``True`` if all are written)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._new = True
            self._cond.notify_all()
            while (self._new or self._busy) and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return not any(self._queues)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is pending (one more attempt), then stop. ``True`` if nothing is left."""
        done = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=max(0.1, timeout))
        left = self.pending()
        if left:
            _log.error(
                "otel-audit: %d checkpoint(s) could not be written to the witness before shutdown; they are in "
                "PostgreSQL (and in its spool until committed) but not witnessed",
                left,
            )
        return done and not left

    def abandon_after_fork(self) -> None:
        """In a forked child: the thread does not exist here; the parent writes its own checkpoints."""
        self._queues = [collections.deque() for _ in self.witnesses]
        self._stopping = True

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._new and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._new:
                    return
                self._new = False
                self._busy = True
            try:
                for index in range(len(self.witnesses)):
                    self._drain(index)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _drain(self, index: int) -> None:
        witness = self.witnesses[index]
        queue = self._queues[index]
        written = 0
        while True:
            with self._cond:
                if not queue:
                    break
                item = queue[0]
            try:
                witness.write(item.checkpoint)
            except Exception as exc:  # any failure: loud, counted, retried later; never fatal
                self._failed(index, item, exc)
                return
            with self._cond:
                if queue and queue[0] is item:
                    queue.popleft()
            written += 1
        if self._failing[index] is not None and written:
            _log.warning("otel-audit: %s works again; delayed checkpoints written", witness.description)
            self._failing[index] = None

    def _failed(self, index: int, item: _Pending, exc: Exception) -> None:
        witness = self.witnesses[index]
        with self._cond:
            fresh = [p for p in self._queues[index] if not p.failed]
            for pending in fresh:
                pending.failed = True
            waiting = len(self._queues[index])
            self.stats.witness_failures += len(fresh)
            self.stats.note_error(f"witness: {exc}")
        now = time.monotonic()
        state = self._failing[index]
        if state is None or now - state[0] >= self.log_every:
            _log.error(
                "otel-audit: cannot write checkpoint %d of chain %s to the %s: %s. The application continues; "
                "%d checkpoint(s) wait and are retried with the next one. Fix the witness (mount, permissions, "
                "space) so that truncation of the database stays detectable",
                item.checkpoint.n,
                item.checkpoint.chain_id,
                witness.description,
                exc,
                waiting,
            )
            self._failing[index] = (now, 0)
        else:
            self._failing[index] = (state[0], state[1] + 1)
