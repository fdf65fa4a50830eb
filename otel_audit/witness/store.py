"""Witness storage and format: where signed checkpoints are kept outside PostgreSQL, and how.

Whoever controls the database can delete rows, checkpoints included; a
witness is the copy they cannot reach. The verifier compares the two: a
checkpoint the witness holds and the database lacks is a deletion or a
rollback, a checkpoint whose head is no longer in the chain is a rewrite.

A witness is anything with ``write(checkpoint)`` and ``read()``
(:class:`Witness`). :class:`DirectoryWitness` is the one shipped here (and
:class:`otel_audit.witness_s3.S3Witness`): one file per checkpoint, meant to be
a WORM / object-lock volume (S3 Object Lock through a mount, NetApp SnapLock,
a ``chattr +a`` directory, a separate host's NFS export the application may
only create files on). The thread that copies committed checkpoints to the
witnesses is :mod:`otel_audit.witness.publisher`.

**Entry format.** A witness entry is the signed checkpoint's two-line envelope
followed by one line naming the previous entry written for the same chain::

    <checkpoint body>\n<base64 signature>\n
    previous <file name of that entry> <lowercase hex SHA-256 of its bytes>\n      (or: previous none)

so the entries of a chain form a hash chain of their own: a deleted or edited
entry in the middle is noticed by the verifier (``witness_gap``). Entries
written by earlier versions have no third line and are still read (with a
warning). Deleting the *newest* entries cannot be noticed from the entries
themselves: only storage the attacker cannot delete from makes that rollback
detectable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from otel_audit.core.checkpoint import Checkpoint, CheckpointFormatError, parse_envelope
from otel_audit.errors import WitnessError

__all__ = [
    "SUFFIX",
    "DirectoryWitness",
    "EntryLink",
    "Witness",
    "WitnessEntry",
    "WitnessError",
    "entry_bytes",
    "entry_name",
    "entry_place",
    "name_matches",
    "newest_entry",
    "split_entry",
]

SUFFIX = ".checkpoint"
_PREVIOUS = b"previous "
_NAME = re.compile(r"([0-9]{12})-([0-9a-f]{16})(?:\.([2-9]))?" + re.escape(SUFFIX))


@dataclass(frozen=True)
class EntryLink:
    """The previous entry an entry names: its file name and the SHA-256 of its bytes (``None``: the first)."""

    name: str | None
    sha256: str | None


def entry_name(checkpoint: Checkpoint, attempt: int = 1) -> str:
    """``<n:012d>-<first 16 hex of the checkpoint hash>[.<attempt>].checkpoint`` (attempt 2..9 after a torn write)."""
    return f"{checkpoint.n:012d}-{checkpoint.hash[:16]}" + (f".{attempt}" if attempt > 1 else "") + SUFFIX


def name_matches(name: str, checkpoint: Checkpoint) -> bool:
    """Whether a witness file's name is one :func:`entry_name` gives for this checkpoint."""
    match = _NAME.fullmatch(name)
    return match is not None and int(match.group(1)) == checkpoint.n and match.group(2) == checkpoint.hash[:16]


def entry_bytes(checkpoint: Checkpoint, previous: EntryLink) -> bytes:
    """The bytes of a witness entry: the envelope, then the link to the previous entry of the chain."""
    if previous.name is None:
        link = b"previous none\n"
    else:
        link = _PREVIOUS + previous.name.encode("ascii") + b" " + (previous.sha256 or "").encode("ascii") + b"\n"
    return checkpoint.envelope + link


def split_entry(data: bytes) -> tuple[bytes, EntryLink | None]:
    """(the checkpoint envelope, the link) of an entry; the link is ``None`` for an unchained (older) entry.

    Raises ``ValueError`` when a third line is there but is not a link (an edited or foreign file).
    """
    first = data.find(b"\n")
    second = data.find(b"\n", first + 1) if first >= 0 else -1
    if second < 0 or second + 1 == len(data):
        return data, None
    envelope, rest = data[: second + 1], data[second + 1 :]
    if not rest.endswith(b"\n") or b"\n" in rest[:-1] or not rest.startswith(_PREVIOUS):
        raise CheckpointFormatError("the line after the signature is not 'previous <name> <sha256>' or 'previous none'")
    words = rest[len(_PREVIOUS) : -1].decode("ascii", "replace").split(" ")
    if words == ["none"]:
        return envelope, EntryLink(None, None)
    if len(words) != 2 or not _NAME.fullmatch(words[0]) or not re.fullmatch(r"[0-9a-f]{64}", words[1]):
        raise CheckpointFormatError(f"malformed link to the previous entry: {rest[:-1]!r}")
    return envelope, EntryLink(words[0], words[1])


def entry_place(location: str) -> tuple[str, str]:
    """(chain directory name, file name) of an entry's location (a path, or an ``s3://`` URL)."""
    path = PurePosixPath(location.replace(os.sep, "/"))
    return path.parent.name, path.name


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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

    The file holds an entry (the signed checkpoint and the link to the previous
    entry, see the module docstring). Writing a checkpoint that is there already
    is a no-op (replays); a file cut short by
    a crash cannot be replaced on a WORM volume, so the write goes to a name
    with ``.2``, ``.3``... before the suffix instead. File and directory are
    fsynced before :meth:`write` returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self.description = f"witness directory {self.path}"
        self._create = create
        self._known_dirs: set[str] = set()
        #: chain id -> (checkpoint number, file name, SHA-256) of the newest entry written
        self._last: dict[str, tuple[int, str | None, str | None]] = {}

    def __repr__(self) -> str:
        return f"DirectoryWitness({str(self.path)!r})"

    # ------------------------------------------------------------------ writing
    def write(self, checkpoint: Checkpoint) -> None:
        directory = self._chain_dir(checkpoint.chain_id)
        envelope = checkpoint.envelope
        previous = self._previous(checkpoint.chain_id, directory)
        for attempt in range(1, 10):
            name = entry_name(checkpoint, attempt)
            path = directory / name
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except FileExistsError:
                try:
                    existing = path.read_bytes()
                except OSError as exc:
                    raise WitnessError(f"cannot read back {path}: {exc}") from exc
                if _envelope_of(existing) == envelope:
                    self._remember(checkpoint, name, existing)
                    return  # already witnessed (a replay)
                continue  # a torn earlier attempt: leave it, write beside it
            except OSError as exc:
                raise WitnessError(f"cannot create {path}: {exc}") from exc
            data = entry_bytes(checkpoint, previous)
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
            self._remember(checkpoint, name, data)
            return
        raise WitnessError(f"{directory} holds 9 damaged copies of checkpoint {checkpoint.n}; inspect the volume")

    def _previous(self, chain_id: str, directory: Path) -> EntryLink:
        """The newest entry written for the chain (by checkpoint number), from memory or the directory."""
        known = self._last.get(chain_id)
        if known is None:
            known = self._last[chain_id] = newest_entry(
                (p.name, p.read_bytes) for p in directory.iterdir() if p.name.endswith(SUFFIX)
            )
        return EntryLink(known[1], known[2]) if known[1] is not None else EntryLink(None, None)

    def _remember(self, checkpoint: Checkpoint, name: str, data: bytes) -> None:
        known = self._last.get(checkpoint.chain_id)
        if known is None or known[1] is None or checkpoint.n >= known[0]:
            self._last[checkpoint.chain_id] = (checkpoint.n, name, _sha256(data))

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


def _envelope_of(data: bytes) -> bytes | None:
    try:
        return split_entry(data)[0]
    except ValueError:
        return None


def newest_entry(files: Iterable[tuple[str, Callable[[], bytes]]]) -> tuple[int, str | None, str | None]:
    """(n, name, sha256) of the newest well-formed entry among ``(name, read the bytes)`` pairs.

    ``(0, None, None)`` when there is none. A writer links its first entry of a chain to it.
    """
    # Names start with the checkpoint number: the first entry that parses, newest name first, is the one.
    for name, read in sorted(files, key=lambda item: item[0], reverse=True):
        if not _NAME.fullmatch(name):
            continue
        try:
            data = read()
            checkpoint = parse_envelope(split_entry(data)[0])
        except (OSError, ValueError, CheckpointFormatError):
            continue  # torn or foreign: never linked to
        return checkpoint.n, name, _sha256(data)
    return 0, None, None
