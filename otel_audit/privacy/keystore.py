"""The subject key store: one data key per data subject, wrapped by a master key, kept apart from the trail.

Crypto-shredding needs a place where a key *can* be destroyed, which the
append-only audit tables are not. The key store is a separate table,
``audit_subject_keys`` (create it with ``otel-audit privacy init-keystore``,
in its own database or schema: ``OTEL_AUDIT_KEYSTORE_DSN``), written only by
this module; the sink stays the only writer of the audit tables.

Each row holds:

* ``key_ref``: a random id, the only thing records name (``aead:<key_ref>:...``);
* ``subject_tag``: HMAC-SHA-256 of the subject id under a key derived from the
  master key, so the key store does not hold the subject's identifier either;
* ``wrapped_key``: the subject's 256-bit AES-GCM data key, encrypted with the
  master key (envelope encryption; AES-256-GCM, the key ref as associated
  data), and ``master_key_id``, the master key that wrapped it;
* ``created``, ``erased_at``.

Erasure (:meth:`KeyStore.erase`) overwrites ``wrapped_key`` with NULL and the
subject tag with NULL, then VACUUMs the table so the old row versions do not
linger in the table's pages. What lingers elsewhere (WAL archives, backups of
the key store) is the operator's to expire: see docs/privacy.md.

The master key never enters PostgreSQL. Master key ring text has the pseudonym
key ring's format (``<id>:<base64 of 32 bytes>``, current key first); older
master keys unwrap older rows.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from otel_audit import settings
from otel_audit.errors import AuditConfigurationError, KeyErased, KeyStoreUnavailable
from otel_audit.privacy.pseudonym import PseudonymKey, load_key_ring, parse_key_ring

__all__ = [
    "KEYSTORE_TABLE",
    "KeyErased",
    "KeyStore",
    "KeyStoreUnavailable",
    "MasterKey",
    "init_keystore",
    "master_keys",
]

_log = logging.getLogger("otel_audit")

KEYSTORE_TABLE = "audit_subject_keys"
_WRAP_DOMAIN = b"otel-audit.subject-key.v1\x00"
_TAG_DOMAIN = b"otel-audit.subject-tag.v1\x00"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {KEYSTORE_TABLE} (
    key_ref       text PRIMARY KEY,
    subject_tag   text,
    wrapped_key   bytea,
    master_key_id text NOT NULL,
    created       timestamptz NOT NULL DEFAULT now(),
    erased_at     timestamptz,
    CHECK ((erased_at IS NULL) = (wrapped_key IS NOT NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS {KEYSTORE_TABLE}_live_subject
    ON {KEYSTORE_TABLE} (subject_tag) WHERE erased_at IS NULL;
"""


class MasterKey:
    """A master key (wraps subject keys; never stored in PostgreSQL)."""

    def __init__(self, key: PseudonymKey) -> None:
        if len(key.secret) != 32:
            raise AuditConfigurationError(
                f"master key {key.key_id!r} must be 32 bytes (256 bits), not {len(key.secret)}"
            )
        self.key_id = key.key_id
        self._aead = AESGCM(key.secret)
        self._tag_key = hmac.new(key.secret, _TAG_DOMAIN, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    def tag(self, subject: str) -> str:
        return hmac.new(self._tag_key, subject.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def wrap(self, key_ref: str, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data_key, _WRAP_DOMAIN + key_ref.encode())

    def unwrap(self, key_ref: str, wrapped: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:12], wrapped[12:], _WRAP_DOMAIN + key_ref.encode())


def master_keys(
    source: str | os.PathLike[str] | Sequence[MasterKey] | None = None, *, env: Mapping[str, str] | None = None
) -> list[MasterKey]:
    """The master key ring: ``source`` (a file or keys), else ``OTEL_AUDIT_MASTER_KEY_FILE`` (a file), else
    ``OTEL_AUDIT_MASTER_KEY`` (the ring text); empty when none is set."""
    if source is not None and not isinstance(source, (str, os.PathLike)):
        return list(source)
    path = source if source is not None else settings.MASTER_KEY_FILE.get(env)
    if path is not None:
        return [MasterKey(k) for k in load_key_ring(path)]
    inline = settings.MASTER_KEY.get(env)
    if inline:
        return [MasterKey(k) for k in parse_key_ring(inline, source=settings.MASTER_KEY.name)]
    return []


def init_keystore(conn: psycopg.Connection, *, writer_role: str | None = None, reader_role: str | None = None) -> None:
    """Create the key store table (idempotent). The writer may read and add keys; only the owner erases."""
    from psycopg import sql

    conn.execute(_SCHEMA)
    table = sql.Identifier(KEYSTORE_TABLE)
    if writer_role:
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(table, sql.Identifier(writer_role)))
    if reader_role:
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, sql.Identifier(reader_role)))


class KeyStore:
    """Subject data keys in PostgreSQL, wrapped by the master key; thread-safe, cached.

    ``cache_seconds``: how long a process reuses a subject key it has looked
    up. A record sealed within that time after an erasure is encrypted under
    the erased key, i.e. unreadable from the start (never readable).
    """

    def __init__(
        self, dsn: str, masters: Sequence[MasterKey], *, cache_seconds: float = 60.0, cache_size: int = 10_000
    ) -> None:
        if not masters:
            raise AuditConfigurationError(
                "the key store needs a master key: set OTEL_AUDIT_MASTER_KEY_FILE (a file with one line "
                "'<id>:<base64 of 32 random bytes>'; `otel-audit privacy new-key --id m1` prints one)"
            )
        self.dsn = dsn
        self.masters = {m.key_id: m for m in masters}
        self.current = masters[0]
        self.cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._subjects: OrderedDict[str, tuple[float, str, AESGCM]] = OrderedDict()
        self._refs: OrderedDict[str, AESGCM | None] = OrderedDict()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()
        #: After a failure, calls fail at once for this long instead of each waiting for a connect timeout.
        self.retry_seconds = 5.0
        self._down_until = 0.0
        self._down_logged = False

    def __repr__(self) -> str:
        return f"KeyStore(master_key_id={self.current.key_id!r})"

    # ------------------------------------------------------------------ connection
    def _connection(self) -> psycopg.Connection:
        if self._pid != os.getpid():  # forked: never share the parent's socket
            self._conn, self._pid = None, os.getpid()
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=3, application_name="otel-audit-keystore"
            )
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _tags(self, subject: str) -> list[str]:
        return [m.tag(subject) for m in self.masters.values()]

    # ------------------------------------------------------------------ writers
    def key_for_subject(self, subject: str) -> tuple[str, AESGCM]:
        """The subject's live data key (created on first use): ``(key_ref, AESGCM)``.

        Raises :class:`KeyStoreUnavailable` when PostgreSQL cannot be reached.
        """
        now = time.monotonic()
        with self._lock:
            hit = self._subjects.get(subject)
            if hit is not None and now - hit[0] < self.cache_seconds:
                return hit[1], hit[2]
            if now < self._down_until:
                # Do not stall every logging call on a connect timeout while the store is down.
                raise KeyStoreUnavailable(
                    f"the subject key store is unavailable (retried every {self.retry_seconds:g} s)"
                )
            try:
                key_ref, aead = self._lookup_or_create(subject)
            except psycopg.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self._down_until = time.monotonic() + self.retry_seconds
                if not self._down_logged:
                    self._down_logged = True
                    _log.error(
                        "otel-audit: the subject key store is unavailable (%s); encrypted fields are withheld "
                        "from the records sealed until it is back",
                        type(exc).__name__,
                    )
                raise KeyStoreUnavailable(f"the subject key store is unavailable ({type(exc).__name__})") from None
            self._down_logged = False
            self._subjects[subject] = (now, key_ref, aead)
            self._subjects.move_to_end(subject)
            while len(self._subjects) > self._cache_size:
                self._subjects.popitem(last=False)
            return key_ref, aead

    def _lookup_or_create(self, subject: str) -> tuple[str, AESGCM]:
        conn = self._connection()
        tags = self._tags(subject)
        for _ in range(3):
            row = conn.execute(
                f"SELECT key_ref, wrapped_key, master_key_id FROM {KEYSTORE_TABLE} "  # a fixed name
                "WHERE subject_tag = ANY(%s) AND erased_at IS NULL ORDER BY created LIMIT 1",
                (tags,),
            ).fetchone()
            if row is not None:
                return row[0], AESGCM(self._unwrap(row[0], bytes(row[1]), row[2]))
            data_key = AESGCM.generate_key(bit_length=256)
            key_ref = secrets.token_hex(16)
            inserted = conn.execute(
                f"INSERT INTO {KEYSTORE_TABLE} (key_ref, subject_tag, wrapped_key, master_key_id) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (subject_tag) WHERE erased_at IS NULL DO NOTHING "
                "RETURNING key_ref",
                (key_ref, self.current.tag(subject), self.current.wrap(key_ref, data_key), self.current.key_id),
            ).fetchone()
            if inserted is not None:
                return key_ref, AESGCM(data_key)
            # Another process created it meanwhile: read theirs.
        raise KeyStoreUnavailable("could not create or read the subject key (concurrent erasure?)")

    def _unwrap(self, key_ref: str, wrapped: bytes, master_key_id: str) -> bytes:
        master = self.masters.get(master_key_id)
        if master is None:
            raise AuditConfigurationError(
                f"subject key {key_ref} is wrapped by master key {master_key_id!r}, which is not in the master key "
                "ring: add it (after the current key) to OTEL_AUDIT_MASTER_KEY_FILE"
            )
        return master.unwrap(key_ref, wrapped)

    # ------------------------------------------------------------------ readers
    def key_by_ref(self, key_ref: str) -> AESGCM:
        """The data key a record names. Raises :class:`KeyErased` when it was destroyed (or never existed)."""
        with self._lock:
            if key_ref in self._refs:
                aead = self._refs[key_ref]
            else:
                row = (
                    self._connection()
                    .execute(
                        f"SELECT wrapped_key, master_key_id FROM {KEYSTORE_TABLE} WHERE key_ref = %s",
                        (key_ref,),
                    )
                    .fetchone()
                )
                aead = None if row is None or row[0] is None else AESGCM(self._unwrap(key_ref, bytes(row[0]), row[1]))
                self._refs[key_ref] = aead
                while len(self._refs) > self._cache_size:
                    self._refs.popitem(last=False)
        if aead is None:
            raise KeyErased(key_ref)
        return aead

    def refs_of_subject(self, subject: str) -> list[str]:
        """The live key refs of a subject (what records of theirs name)."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT key_ref FROM {KEYSTORE_TABLE} WHERE subject_tag = ANY(%s) AND erased_at IS NULL",
                    (self._tags(subject),),
                )
                .fetchall()
            )
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ erasure
    def erase(self, subject: str, *, conn: psycopg.Connection | None = None) -> list[str]:
        """Destroy every live key of ``subject``; returns their refs (empty: nothing to erase).

        With ``conn`` (not autocommit) the change is part of the caller's
        transaction, so it can be committed only once the erasure is recorded.
        """
        target = conn if conn is not None else self._connection()
        rows = target.execute(
            f"UPDATE {KEYSTORE_TABLE} SET wrapped_key = NULL, subject_tag = NULL, erased_at = now() "
            "WHERE subject_tag = ANY(%s) AND erased_at IS NULL RETURNING key_ref",
            (self._tags(subject),),
        ).fetchall()
        with self._lock:
            self._subjects.pop(subject, None)
            for (ref,) in rows:
                self._refs[ref] = None
        return sorted(r[0] for r in rows)

    def vacuum(self) -> None:
        """Rewrite the table so destroyed keys do not linger in old row versions (VACUUM FULL)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"VACUUM FULL {KEYSTORE_TABLE}")

    def describe(self) -> dict[str, Any]:
        return {"store": "postgresql", "table": KEYSTORE_TABLE, "master_key_id": self.current.key_id}
