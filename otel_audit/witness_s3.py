"""A witness in an S3 bucket with Object Lock: checkpoints the database's owner cannot delete.

``OTEL_AUDIT_WITNESS=s3://bucket/prefix`` (or ``configure(witnesses=[S3Witness(...)])``,
or ``otel-audit verify --witness s3://bucket/prefix``). Objects are named like the
files of :class:`~otel_audit.witness.DirectoryWitness`, so the verifier applies
the same rules to both::

    <prefix>/<chain_id>/<n:012d>-<first 16 hex of the checkpoint hash>.checkpoint

Each object holds a witness entry (the signed checkpoint and the link to the
previous entry of the chain, see :mod:`otel_audit.witness.store`) and is created
with ``If-None-Match: *`` (never replaced; an existing object with the same
bytes is a replay, a no-op) and, in a bucket with Object Lock, a retention
date in COMPLIANCE mode by default (``OTEL_AUDIT_WITNESS_RETAIN_DAYS``, 2,196
days unless set): not even the account's root user can delete or overwrite it
before then, so deleting the newest checkpoints to hide a truncation is not
possible. A bucket without versioning and Object Lock is refused unless
``allow_unlocked=True`` (``OTEL_AUDIT_WITNESS_ALLOW_UNLOCKED=1``); the
endpoint, region and credentials come from the usual AWS configuration.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime, timedelta, timezone

from otel_audit import settings
from otel_audit.archive.store import S3Store, StoreConflict, StoreError
from otel_audit.core.checkpoint import Checkpoint
from otel_audit.witness.store import (
    SUFFIX,
    DirectoryWitness,
    EntryLink,
    WitnessEntry,
    WitnessError,
    entry_bytes,
    entry_name,
    newest_entry,
    split_entry,
)

__all__ = ["DEFAULT_RETAIN_DAYS", "S3Witness", "open_witness", "witness_from_url"]

DEFAULT_RETAIN_DAYS = settings.DEFAULT_RETAIN_DAYS


class S3Witness:
    def __init__(
        self,
        url: str,
        *,
        retain_days: int = DEFAULT_RETAIN_DAYS,
        mode: str = "COMPLIANCE",
        allow_unlocked: bool = False,
        check: bool = True,
    ) -> None:
        self.url = url
        self.description = f"witness {url}"
        self.retain_days = retain_days
        try:
            self._store = S3Store(url, mode=mode, require_lock=not allow_unlocked, retain_until=self._until())
            if check:
                self._store.check_bucket()
        except StoreError as exc:
            raise WitnessError(str(exc)) from exc
        self._checked = check
        #: chain id -> (checkpoint number, object name, SHA-256) of the newest entry written
        self._last: dict[str, tuple[int, str | None, str | None]] = {}

    def __repr__(self) -> str:
        return f"S3Witness({self.url!r})"

    def _until(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(days=self.retain_days)

    def write(self, checkpoint: Checkpoint) -> None:
        if not self._checked:
            try:
                self._store.check_bucket()
            except StoreError as exc:
                raise WitnessError(str(exc)) from exc
            self._checked = True
        self._store.retain_until = self._until()
        chain_id = checkpoint.chain_id
        envelope = checkpoint.envelope
        try:
            previous = self._previous(chain_id)
            for attempt in range(1, 10):
                name = entry_name(checkpoint, attempt)
                data = entry_bytes(checkpoint, previous)
                try:
                    self._store.put(f"{chain_id}/{name}", data)
                except StoreConflict:
                    # An object is there (never replaced): the same checkpoint (a replay), or a torn one.
                    existing = self._store.get(f"{chain_id}/{name}")
                    try:
                        same = split_entry(existing)[0] == envelope
                    except ValueError:
                        same = False
                    if same:
                        self._remember(checkpoint, name, existing)
                        return
                    continue
                self._remember(checkpoint, name, data)
                return
        except (StoreError, FileNotFoundError) as exc:
            raise WitnessError(str(exc)) from exc
        raise WitnessError(f"{self.url}: 9 different objects claim checkpoint {checkpoint.n} of {checkpoint.chain_id}")

    def _previous(self, chain_id: str) -> EntryLink:
        known = self._last.get(chain_id)
        if known is None:
            names = [n.partition("/")[2] for n in self._store.list(f"{chain_id}/")]
            known = self._last[chain_id] = newest_entry(
                (name, functools.partial(self._store.get, f"{chain_id}/{name}")) for name in names
            )
        return EntryLink(known[1], known[2])

    def _remember(self, checkpoint: Checkpoint, name: str, data: bytes) -> None:
        known = self._last.get(checkpoint.chain_id)
        if known is None or known[1] is None or checkpoint.n >= known[0]:
            self._last[checkpoint.chain_id] = (checkpoint.n, name, hashlib.sha256(data).hexdigest())

    def read(self, chain_ids: Collection[str] | None = None) -> Iterator[WitnessEntry]:
        wanted = set(chain_ids) if chain_ids else None
        try:
            names = self._store.list()
        except StoreError as exc:
            raise WitnessError(f"cannot list {self.url}: {exc}") from exc
        for name in names:
            chain_id, _, rest = name.partition("/")
            if not rest.endswith(SUFFIX) or "/" in rest:
                continue
            if wanted is not None and chain_id not in wanted:
                continue
            location = f"{self.url.rstrip('/')}/{name}"
            try:
                yield WitnessEntry(location, self._store.get(name))
            except (StoreError, FileNotFoundError) as exc:
                yield WitnessEntry(location, None, f"cannot read: {exc}")


def witness_from_url(url: str, *, env: Mapping[str, str] | None = None) -> S3Witness:
    """An S3 witness at ``url`` with the retention and lock settings of ``env`` (default ``os.environ``)."""
    days = settings.WITNESS_RETAIN_DAYS.get(env)
    allow = settings.WITNESS_ALLOW_UNLOCKED.get(env)
    return S3Witness(url, retain_days=days, allow_unlocked=allow, check=False)


def open_witness(
    spec: str, *, for_reading: bool = False, env: Mapping[str, str] | None = None
) -> S3Witness | DirectoryWitness:
    """``s3://bucket/prefix`` or a directory (the forms of OTEL_AUDIT_WITNESS and ``verify --witness``)."""
    if spec.startswith("s3://"):
        if for_reading:
            return S3Witness(spec, allow_unlocked=True, check=False)
        return witness_from_url(spec, env=env)
    return DirectoryWitness(spec, create=not for_reading)
