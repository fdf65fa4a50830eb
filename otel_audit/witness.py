"""Witnesses: copies of signed checkpoints kept outside PostgreSQL.

Whoever controls the database can delete rows, checkpoints included; a
witness is the copy they cannot reach. The verifier compares the two: a
checkpoint the witness holds and the database lacks is a deletion or a
rollback, a checkpoint whose head is no longer in the chain is a rewrite.

A witness is anything with ``write(checkpoint)`` and ``read()``
(:class:`Witness`). :class:`DirectoryWitness` is the one shipped: an
append-only directory, meant to be a WORM / object-lock volume (S3 Object Lock
through a mount, NetApp SnapLock, a ``chattr +a`` directory, a separate host's
NFS export the application may only create files on).

Witness writes happen off every application thread, after the checkpoint is
committed to PostgreSQL (:class:`WitnessPublisher`), so a witness never holds
a head the database could not have. A witness that cannot be written is loud
(logged at ERROR, counted in ``witness_failures``) and retried with the next
checkpoint; it never stops the application.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from otel_audit.core.checkpoint import Checkpoint
from otel_audit.errors import AuditError
from otel_audit.stats import PipelineStats

__all__ = ["DirectoryWitness", "Witness", "WitnessEntry", "WitnessError", "WitnessPublisher"]

_log = logging.getLogger("otel_audit.witness")

SUFFIX = ".checkpoint"


class WitnessError(AuditError):
    """A witness could not store or read checkpoints."""


@dataclass(frozen=True)
class WitnessEntry:
    """One stored signed checkpoint, as raw bytes (the verifier parses and checks them)."""

    location: str
    data: bytes | None
    error: str | None = None  # why ``data`` could not be read


@runtime_checkable
class Witness(Protocol):
    """Where checkpoints are copied. ``write`` must be idempotent and must never replace
    what is stored; it raises to report a failure."""

    description: str

    def write(self, checkpoint: Checkpoint) -> None: ...

    def read(self, chain_ids: Collection[str] | None = None) -> Iterator[WitnessEntry]: ...


class DirectoryWitness:
    """One file per checkpoint, created with ``O_EXCL`` and never rewritten::

        <dir>/<chain_id>/<n:012d>-<first 16 hex of the checkpoint hash>.checkpoint

    The file holds the signed checkpoint in its two-line form. Creating a file
    that exists with the same bytes is a no-op (replays); a file cut short by
    a crash cannot be replaced on a WORM volume, so the write goes to a name
    with ``.2``, ``.3``... before the suffix instead. File and directory are
    fsynced before :meth:`write` returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self.description = f"witness directory {self.path}"
        self._create = create
        self._known_dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"DirectoryWitness({str(self.path)!r})"

    # ------------------------------------------------------------------ writing
    def write(self, checkpoint: Checkpoint) -> None:
        directory = self._chain_dir(checkpoint.chain_id)
        data = checkpoint.envelope
        stem = f"{checkpoint.n:012d}-{checkpoint.hash[:16]}"
        for attempt in range(1, 10):
            name = stem + (f".{attempt}" if attempt > 1 else "") + SUFFIX
            path = directory / name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except FileExistsError:
                try:
                    if path.read_bytes() == data:
                        return  # already witnessed (a replay)
                except OSError as exc:
                    raise WitnessError(f"cannot read back {path}: {exc}") from exc
                continue  # a torn earlier attempt: leave it, write beside it
            except OSError as exc:
                raise WitnessError(f"cannot create {path}: {exc}") from exc
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                raise WitnessError(f"cannot write {path}: {exc}") from exc
            finally:
                os.close(fd)
            _fsync_dir(directory)
            return
        raise WitnessError(f"{directory} holds 9 damaged copies of checkpoint {checkpoint.n}; inspect the volume")

    def _chain_dir(self, chain_id: str) -> Path:
        directory = self.path / chain_id
        if chain_id in self._known_dirs:
            return directory
        try:
            if not self.path.is_dir():
                if not self._create:
                    raise WitnessError(f"{self.path} does not exist; create it or mount the witness volume there")
                self.path.mkdir(parents=True, exist_ok=True)
            if not directory.is_dir():
                directory.mkdir(exist_ok=True)
                _fsync_dir(self.path)
        except OSError as exc:
            raise WitnessError(f"cannot create {directory}: {exc}") from exc
        self._known_dirs.add(chain_id)
        return directory

    # ------------------------------------------------------------------ reading
    def read(self, chain_ids: Collection[str] | None = None) -> Iterator[WitnessEntry]:
        if not self.path.is_dir():
            raise WitnessError(
                f"witness directory {self.path} does not exist or is not a directory; check --witness (and that "
                "the witness volume is mounted)"
            )
        wanted = set(chain_ids) if chain_ids else None
        try:
            chain_dirs = sorted(p for p in self.path.iterdir() if p.is_dir())
        except OSError as exc:
            raise WitnessError(f"cannot list {self.path}: {exc}") from exc
        for chain_dir in chain_dirs:
            if wanted is not None and chain_dir.name not in wanted:
                continue
            try:
                files = sorted(p for p in chain_dir.iterdir() if p.name.endswith(SUFFIX))
            except OSError as exc:
                yield WitnessEntry(str(chain_dir), None, f"cannot list: {exc}")
                continue
            for file in files:
                try:
                    yield WitnessEntry(str(file), file.read_bytes())
                except OSError as exc:
                    yield WitnessEntry(str(file), None, f"cannot read: {exc}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise WitnessError(f"cannot open {path} to sync it: {exc}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some FUSE / object-store mounts cannot fsync a directory; their creates are durable on close.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise WitnessError(f"cannot sync {path}: {exc}") from exc
    finally:
        os.close(fd)


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

