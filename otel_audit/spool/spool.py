"""A durable, append-only local spool: one directory per chain, mmap'd segments.

Why mmap: the hot path must make a record survive a process crash (SIGKILL)
before the logging call returns, in well under a microsecond. Copying the
frame into a ``MAP_SHARED`` mapping puts it in the kernel's page cache with no
system call; the kernel writes it back even if the process dies a moment
later. Power loss is covered by ``msync`` on a background thread (``fsync``
setting), so callers share each sync instead of paying one each.

Segments are filled with zeros before they are mapped: a sparse mapping would
turn a full disk into a SIGBUS inside the application; allocating first turns
it into a clean :class:`~otel_audit.errors.SpoolFull`. (Not ``MAP_POPULATE``:
pre-faulting read-only makes every first store take a write fault, measured
8x slower than letting the store fault the page in.)

Layout::

    <root>/<chain-id>/lock          flock()ed by the owning process while it lives
    <root>/<chain-id>/meta.json     chain id, the database it is written to, owner pid
    <root>/<chain-id>/00000001.seg  segments, oldest first; deleted once committed
    <root>/<chain-id>/committed     how far the records are known to be in PostgreSQL
    <root>/<chain-id>/genesis       the chain's genesis document (written once)
    <root>/<chain-id>/checkpoint.json  the newest checkpoint spooled, with the head at that moment
    <root>/<chain-id>/closing.json  written by a process that adopted the spool: the closing checkpoint it signed

The notes let a process that adopts the spool of a dead emitter close its chain
with a signed checkpoint that continues its numbering, even when the segments
holding the genesis and the older checkpoints were already committed and deleted.

A process drains its own chain and adopts the directories of dead processes
(their lock is free) that target the same database, so records left by a
crashed process are written by the next one. "The same database" is the
database's identity, recorded in ``meta.json`` once the sink has reached it
(``database``: see :func:`otel_audit.sink.writer.database_identity`), whatever
DSN spelling reached it; a spool whose process never reached a database has
only the fingerprint of its DSN (``target``) and is adopted by the same DSN or
replayed explicitly with ``otel-audit replay``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from otel_audit import settings
from otel_audit.errors import AuditConfigurationError, SpoolFull
from otel_audit.spool.frames import FRAME_HEADER, HEADER_TAIL, MAGIC, Frame, iter_frames

__all__ = ["ChainSpool", "SpoolConfig", "SpoolPosition", "list_chain_dirs", "read_committed"]

_log = logging.getLogger("otel_audit.spool")

FsyncMode = Literal["interval", "always", "never"]
FullPolicy = Literal["block", "drop"]

_HEADER_SIZE = FRAME_HEADER.size
_pack_tail = HEADER_TAIL.pack_into

#: A position is a logical byte offset: segment number * segment size + offset.
SpoolPosition = int


@dataclass(frozen=True)
class SpoolConfig:
    """How the spool behaves. Defaults favour never losing a record.

    ``fsync``: ``"interval"`` msyncs every ``fsync_interval`` seconds (a power
    loss can cost the last interval; a process crash costs nothing),
    ``"always"`` makes each logging call wait for the msync covering its record
    (power-loss safe; calls share syncs), ``"never"`` leaves write-back to the
    kernel (process-crash safe only).

    ``when_full``: ``"block"`` waits up to ``block_timeout`` seconds for the
    sink to free space, then raises :class:`SpoolFull` at the call site;
    ``"drop"`` drops the record at once with a counted, logged loss and a
    ``records dropped`` marker record in the chain when space returns.
    """

    directory: Path
    segment_bytes: int = settings.DEFAULT_SPOOL_SEGMENT_BYTES
    max_bytes: int = settings.DEFAULT_SPOOL_MAX_BYTES
    fsync: FsyncMode = "interval"
    fsync_interval: float = 0.2
    when_full: FullPolicy = "block"
    block_timeout: float = settings.DEFAULT_BLOCK_TIMEOUT

    def __post_init__(self) -> None:
        if self.fsync not in ("interval", "always", "never"):
            raise AuditConfigurationError(f"spool fsync must be interval, always or never, not {self.fsync!r}")
        if self.when_full not in ("block", "drop"):
            raise AuditConfigurationError(f"spool when_full must be block or drop, not {self.when_full!r}")
        if self.segment_bytes < 1024 * 1024:
            raise AuditConfigurationError("spool segment_bytes must be at least 1 MiB")
        if self.max_bytes < 2 * self.segment_bytes:
            raise AuditConfigurationError(
                f"spool max_bytes ({self.max_bytes}) must hold at least two segments of {self.segment_bytes} bytes"
            )


def list_chain_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists())


def read_committed(path: Path) -> SpoolPosition:
    """The position up to which a chain directory's records are known to be in PostgreSQL (0: none).

    Written by the sink after each commit (see :meth:`ChainSpool.note_committed`), so
    it may lag behind, never run ahead: what lies before it is stored, what lies after
    it may be. ``otel-audit status`` counts only the records after it as waiting.
    """
    try:
        text = (path / _COMMITTED).read_text()
        return max(0, int(text.split()[0]))
    except (OSError, ValueError, IndexError):
        return 0


_COMMITTED = "committed"


class _Segment:
    __slots__ = ("fd", "mm", "number", "path")

    def __init__(self, path: Path, number: int, fd: int, mm: mmap.mmap) -> None:
        self.path = path
        self.number = number
        self.fd = fd
        self.mm = mm

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class ChainSpool:
    """The spool directory of one chain.

    Created with :meth:`create` by the process that owns the chain (it appends
    and reads back), or with :meth:`adopt` by a process draining the spool of a
    dead one (read-only). Appends must be serialized by the caller (the chain
    holds its lock around them); reads and releases come from the sink thread.
    """

    def __init__(self, path: Path, config: SpoolConfig, lock_fd: int, *, owner: bool, meta: dict[str, Any]) -> None:
        self.path = path
        self.config = config
        self.owner = owner
        self.meta = meta
        self.chain_id: str = meta["chain_id"]
        self._lock_fd = lock_fd
        self._seg_size = config.segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._space = threading.Condition(threading.Lock())
        self._synced = threading.Condition(threading.Lock())
        self._released_before = 1  # segment numbers below this are gone
        self._closed = False
        self._sync_thread: threading.Thread | None = None
        # Writer state (owner only): active segment and logical end of data.
        self._active: _Segment | None = None
        self._mm: mmap.mmap | None = None
        self._base = 0
        self._spare: _Segment | None = None
        self._spare_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._write_off = 0
        self.end: SpoolPosition = 0
        self.synced_end: SpoolPosition = 0
        self._orphan_ends: dict[int, int] = {}
        self._committed_fd: int | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        config: SpoolConfig,
        chain_id: str,
        target: str,
        *,
        relay: bool = False,
        database: dict[str, Any] | None = None,
        dsn: str | None = None,
    ) -> ChainSpool:
        """A new spool directory owned by this process.

        ``relay=True``: a spool of records sealed by *other* emitters (the OTLP
        ingest's), possibly of many chains; ``chain_id`` then only names the
        directory. Marked in ``meta.json`` so that a process adopting it after a
        crash treats it as such.
        """
        root = Path(config.directory)
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / chain_id
            path.mkdir(mode=0o700)
            lock_fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditConfigurationError(
                f"cannot create the audit spool in {root}: {exc}. Set OTEL_AUDIT_SPOOL_DIR (or spool_dir=) "
                "to a writable directory on local disk."
            ) from exc
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        meta: dict[str, Any] = {"chain_id": chain_id, "target": target, "pid": os.getpid(), "created": time.time()}
        if relay:
            meta["relay"] = True
        if database is not None:
            meta["database"] = database
        if dsn is not None:
            meta["dsn"] = dsn  # without its password: for people reading status
        _write_json_atomic(path / "meta.json", meta)
        _fsync_dir(path)
        _fsync_dir(root)
        spool = cls(path, config, lock_fd, owner=True, meta=meta)
        spool._open_new_segment(1)
        spool.end = spool._position(1, len(MAGIC))
        spool.synced_end = spool.end
        spool._sync_thread = threading.Thread(
            target=spool._maintenance_loop, name=f"otel-audit-spool-{chain_id[:8]}", daemon=True
        )
        spool._sync_thread.start()
        return spool

    @classmethod
    def adopt(
        cls, path: Path, config: SpoolConfig, target: str | Callable[[dict[str, Any]], bool]
    ) -> ChainSpool | None:
        """Take over a dead process's chain directory, or ``None`` if it is alive or foreign.

        ``target``: the DSN fingerprint its ``meta.json`` must name, or a function that
        says from ``meta.json`` whether it belongs to this process's database.
        """
        try:
            meta = json.loads((path / "meta.json").read_text())
            lock_fd = os.open(path / "lock", os.O_RDWR)
        except (OSError, ValueError):
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            return None  # its owner is alive
        accept = target(meta) if callable(target) else meta.get("target") == target
        if not accept:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
            return None
        spool = cls(path, config, lock_fd, owner=False, meta=meta)
        numbers = spool._segment_numbers()
        spool._released_before = numbers[0] if numbers else 1
        return spool

    def record_database(self, database: dict[str, Any]) -> None:
        """Note in ``meta.json`` which database this spool's records go to (owner, once known)."""
        if self.meta.get("database") == database or self._closed:
            return
        meta = {**self.meta, "database": database}
        try:
            _write_json_atomic(self.path / "meta.json", meta)
        except OSError as exc:
            _log.warning("spool %s: cannot record its database in meta.json: %s", self.path, exc)
            return
        self.meta = meta

    # ------------------------------------------------------------------ writing
    def append(self, kind: int, payload: bytes, digest: bytes) -> SpoolPosition:
        """Copy one frame into the spool; returns the position just past it.

        Raises :class:`SpoolFull` when no space can be had (see ``when_full``).
        """
        size = _HEADER_SIZE + len(payload)
        off = self._write_off
        end = off + size
        if end > self._seg_size:
            if size + len(MAGIC) > self._seg_size:
                raise SpoolFull(
                    f"a {size}-byte audit frame is larger than a spool segment ({self._seg_size} bytes); "
                    "raise spool segment_bytes or lower max_record_bytes"
                )
            self._roll()
            off = self._write_off
            end = off + size
        mm = self._mm
        assert mm is not None  # _roll() above maps a segment
        mm[off + _HEADER_SIZE : end] = payload
        _pack_tail(mm, off + 1, len(payload), digest)
        mm[off] = kind  # last: a frame is complete once its kind byte is set
        self._write_off = end
        self.end = position = self._base + end
        return position

    def _roll(self) -> None:
        number = self._active.number + 1  # type: ignore[union-attr]
        deadline = None
        while True:
            live = number - self._released_before
            if (live + 1) * self._seg_size <= self.config.max_bytes:
                try:
                    with self._spare_lock:  # waits for an allocation already under way
                        spare, self._spare = self._spare, None
                        if spare is None or spare.number != number:
                            if spare is not None:
                                self._discard(spare)
                            spare = self._allocate_segment(number)
                    full = self._active
                    self._activate(spare)
                    self._wakeup.set()
                    if full is not None:
                        # Drop the full segment's pages from this process's mapping: they
                        # stay in the page cache (dirty ones are still written back and
                        # msynced), but a long outage no longer shows up as resident memory.
                        with contextlib.suppress(OSError, ValueError, AttributeError):
                            full.mm.madvise(mmap.MADV_DONTNEED)
                    break
                except OSError as exc:  # ENOSPC from fallocate: the disk, not the limit, is full
                    reason = f"cannot allocate a new spool segment in {self.path}: {exc}"
            else:
                reason = (
                    f"audit spool {self.path} is full ({self.config.max_bytes} bytes of records not yet "
                    "committed to PostgreSQL)"
                )
            if self.config.when_full == "drop":
                raise SpoolFull(reason)
            if deadline is None:
                deadline = time.monotonic() + self.config.block_timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SpoolFull(
                    f"{reason}; waited {self.config.block_timeout:g}s for the sink to free space. "
                    "Check that PostgreSQL is reachable (otel-audit status), or raise the spool's max_bytes."
                )
            with self._space:
                self._space.wait(min(remaining, 0.25))
        # The sync thread msyncs every mapped segment, the old one included.

    def _open_new_segment(self, number: int) -> None:
        self._activate(self._allocate_segment(number))

    def _allocate_segment(self, number: int) -> _Segment:
        """Create, allocate and map a segment.

        The file is filled with zeros rather than ``posix_fallocate``d: both
        reserve the blocks (a full disk fails here, cleanly, instead of as a
        SIGBUS on a later store into the mapping), but fallocate leaves
        *unwritten* extents whose conversion on first store costs several
        times more than the store itself, on the caller's thread.
        """
        path = self.path / f"{number:08d}.seg"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _zero_fill(fd, self._seg_size)
            mm = mmap.mmap(fd, self._seg_size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        mm[: len(MAGIC)] = MAGIC
        if self.config.fsync != "never":
            _fsync_dir(self.path)
        return _Segment(path, number, fd, mm)

    @staticmethod
    def _discard(segment: _Segment) -> None:
        segment.close()
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    def _activate(self, segment: _Segment) -> None:
        self._segments[segment.number] = segment
        self._active = segment
        self._mm = segment.mm
        self._base = segment.number * self._seg_size
        self._write_off = len(MAGIC)

    def _prepare_spare(self) -> None:
        """Allocate the next segment ahead of time, off the caller's thread.

        Allocating 16 MiB takes milliseconds; done on the hot path it would
        stall one logging call in every few thousand.
        """
        active = self._active
        if self._spare is not None or active is None or self._closed:
            return
        number = active.number + 1
        if (number + 1 - self._released_before) * self._seg_size > self.config.max_bytes:
            return
        try:
            with self._spare_lock:
                if self._spare is None and self._active is active:
                    self._spare = self._allocate_segment(number)
        except (OSError, ValueError) as exc:
            _log.warning("otel-audit spool: cannot pre-allocate a segment in %s: %s", self.path, exc)

    # ------------------------------------------------------------------ syncing
    def _maintenance_loop(self) -> None:
        mode = self.config.fsync
        interval = self.config.fsync_interval if mode == "interval" else 0.1
        while not self._closed:
            # In "always" mode a waiting caller wakes this loop at once: the msync
            # latency, not a polling interval, is what each call waits for.
            self._wakeup.wait(interval)
            self._wakeup.clear()
            if mode != "never":
                self.sync()
            self._prepare_spare()

    def sync(self) -> None:
        """msync everything appended so far; only the pages written since the last sync."""
        end = self.end
        start = self.synced_end
        if end == start:
            return
        first, last = start // self._seg_size, end // self._seg_size
        for number, segment in list(self._segments.items()):
            if number < first or number > last:
                continue
            lo = start - number * self._seg_size if number == first else 0
            hi = end - number * self._seg_size if number == last else self._seg_size
            lo -= lo % mmap.PAGESIZE
            with contextlib.suppress(ValueError):  # closed concurrently by release()
                segment.mm.flush(lo, max(hi - lo, 1))
        with self._synced:
            self.synced_end = end
            self._synced.notify_all()

    def wait_synced(self, position: SpoolPosition, timeout: float) -> bool:
        if self.synced_end >= position:
            return True
        self._wakeup.set()
        with self._synced:
            return self._synced.wait_for(lambda: self.synced_end >= position, timeout)

    # ------------------------------------------------------------------ reading
    def start(self) -> SpoolPosition:
        """The first position still held (start of the oldest live segment)."""
        return self._position(self._released_before, len(MAGIC))

    def read(self, start: SpoolPosition, max_frames: int, max_bytes: int) -> list[tuple[Frame, SpoolPosition]]:
        """Frames from ``start`` on, with the position just past each one."""
        out: list[tuple[Frame, SpoolPosition]] = []
        total = 0
        number, offset = divmod(start, self._seg_size)
        # One snapshot of the writer's end: frames before it are complete. A
        # segment is finished only if the end had already moved past it at the
        # snapshot; deciding that later would skip frames written meanwhile.
        live_end = self.end
        end_segment = live_end // self._seg_size
        while len(out) < max_frames and total < max_bytes:
            if self.owner and number > end_segment:
                return out
            segment = self._segment(number)
            if segment is None:
                return out
            if offset < len(MAGIC):
                offset = len(MAGIC)
            if self.owner:
                stop = live_end - number * self._seg_size if number == end_segment else self._seg_size
                check = False
            else:
                stop = self._seg_size
                check = True
            last_end = offset
            for frame in iter_frames(segment.mm, offset, stop, check=check):
                out.append((frame, number * self._seg_size + frame.end))
                total += len(frame.payload)
                last_end = frame.end
                if len(out) >= max_frames or total >= max_bytes:
                    return out
            if self.owner and number == end_segment:
                return out
            if not self.owner and not self._has_segment(number + 1):
                if last_end < self._seg_size - FRAME_HEADER.size and segment.mm[last_end] != 0:
                    _log.warning(
                        "spool %s: segment %s ends in an incomplete frame at offset %d (a write cut short "
                        "by a crash before its logging call returned); ignored",
                        self.path,
                        segment.path.name,
                        last_end,
                    )
                return out
            number, offset = number + 1, len(MAGIC)
        return out

    def release_before(self, position: SpoolPosition) -> None:
        """Everything before ``position`` is committed: drop segments wholly before it."""
        number = position // self._seg_size
        if self.owner and self._active is not None:
            number = min(number, self._active.number)
        freed = False
        for old in sorted(n for n in self._segments if n < number):
            segment = self._segments.pop(old)
            segment.close()
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            freed = True
        if not self.owner:  # an adopted spool may hold segments never mapped here
            for old in self._segment_numbers():
                if old < number:
                    with contextlib.suppress(FileNotFoundError):
                        (self.path / f"{old:08d}.seg").unlink()
                    freed = True
        if number > self._released_before:
            self._released_before = number
        if freed:
            with self._space:
                self._space.notify_all()

    def note_committed(self, position: SpoolPosition) -> None:
        """Record that everything before ``position`` is in PostgreSQL (for ``otel-audit status``).

        Only a hint for readers outside this process: a replay still asks the
        database what it has. One small ``pwrite`` per committed batch, no fsync: a
        crash can only leave it behind, which makes status count too many, never
        too few.
        """
        if self._closed:
            return
        try:
            if self._committed_fd is None:
                self._committed_fd = os.open(self.path / _COMMITTED, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self._committed_fd, b"%020d\n" % position, 0)
        except OSError as exc:
            _log.debug("spool %s: cannot record the committed position: %s", self.path, exc)

    def pending_bytes(self, committed: SpoolPosition) -> int:
        return max(0, self.end - committed) if self.owner else self.used_bytes()

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("*.seg"))

    # ------------------------------------------------------------------ internals
    def _position(self, number: int, offset: int) -> SpoolPosition:
        return number * self._seg_size + offset

    def _segment_numbers(self) -> list[int]:
        numbers = []
        for p in self.path.glob("*.seg"):
            with contextlib.suppress(ValueError):
                numbers.append(int(p.stem))
        return sorted(numbers)

    def _has_segment(self, number: int) -> bool:
        return number in self._segments or (self.path / f"{number:08d}.seg").exists()

    def _segment(self, number: int) -> _Segment | None:
        segment = self._segments.get(number)
        if segment is not None:
            return segment
        if self.owner:
            return None
        path = self.path / f"{number:08d}.seg"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size <= len(MAGIC):
                os.close(fd)
                return None
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            os.close(fd)
            return None
        if mm[: len(MAGIC)] != MAGIC:
            _log.error("spool %s: %s is not a spool segment; left in place", self.path, path.name)
            mm.close()
            os.close(fd)
            return None
        segment = _Segment(path, number, fd, mm)
        self._segments[number] = segment
        return segment

    def close(self, *, remove: bool = False) -> None:
        """Stop syncing and unmap. ``remove=True`` deletes the directory (all committed)."""
        if self._closed:
            return
        if self.owner and self.config.fsync != "never":
            self.sync()
        self._closed = True
        self._wakeup.set()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=2)
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            self._discard(spare)
        if self._committed_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._committed_fd)
            self._committed_fd = None
        if remove:
            for p in list(self.path.iterdir()):
                if p.name != "lock":
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.path / "lock").unlink()
            with contextlib.suppress(OSError):
                self.path.rmdir()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def abandon_after_fork(self) -> None:
        """In a forked child: forget this spool without touching the parent's files or lock.

        The child's copy of the lock descriptor is closed: the parent's own keeps the lock
        while the parent lives, and once it dies the spool can be adopted even if the child
        still runs.
        """
        self._closed = True
        self._segments = {}
        self._active = None
        self._spare = None
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    # ------------------------------------------------------------------ notes
    def write_note(self, name: str, data: bytes) -> None:
        """Replace the small file ``name`` in the spool directory atomically (write, fsync, rename)."""
        path = self.path / name
        tmp = self.path / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.config.fsync != "never":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def read_note(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except OSError:
            return None

    def frames_from(self, start: SpoolPosition, batch: int = 4096) -> Iterator[tuple[Frame, SpoolPosition]]:
        position = start
        while True:
            chunk = self.read(position, batch, 64 * 1024 * 1024)
            if not chunk:
                return
            yield from chunk
            position = chunk[-1][1]


def _zero_fill(fd: int, size: int) -> None:
    chunk = bytes(min(size, 1024 * 1024))
    written = 0
    while written < size:
        written += os.write(fd, chunk[: size - written])
    os.fsync(fd)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
