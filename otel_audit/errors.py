"""Exceptions a caller of otel-audit can meet. Each message says what to do next.

Every exception otel-audit raises on purpose derives from :class:`AuditError`, so
``except otel_audit.AuditError`` catches them all. Where a builtin says the same
thing, it is a second base, so code catching ``ValueError`` (a bad value) or
``LookupError`` (something missing) keeps working. Programming errors stay
builtins: a ``TypeError`` for an argument of the wrong type, the ``LookupError``
of ``update_audit_context()`` called outside an audit context.

All of them are defined here, in a module that imports nothing, and exported
by :mod:`otel_audit`: catching the archive's errors does not need pyarrow, nor
catching the verifier's psycopg. The modules that raise them re-export their
own (``otel_audit.archive.store.StoreError`` is this ``StoreError``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArchiveError",
    "ArchiveIntegrityError",
    "AuditConfigurationError",
    "AuditError",
    "AuditNotCommitted",
    "AuditRecordInvalid",
    "CanonicalEncodingError",
    "ChainClosed",
    "CheckpointFormatError",
    "CollectorConfigError",
    "DatabaseNotReady",
    "DatabaseUnavailable",
    "InvalidInput",
    "KeyErased",
    "KeyStoreUnavailable",
    "ManifestError",
    "MissingTablesError",
    "NotAnchoredError",
    "NotFound",
    "ProofUnavailable",
    "RetentionFormatError",
    "SpoolFull",
    "StoreConflict",
    "StoreError",
    "WitnessError",
]


class AuditError(Exception):
    """Base class of every otel-audit error."""


# ---------------------------------------------------------------------- set-up and arguments
class AuditConfigurationError(AuditError):
    """otel-audit was set up inconsistently (bad option or variable, missing DSN, unusable directory or key)."""


class InvalidInput(AuditError, ValueError):
    """A value given to otel-audit (a filter, a duration, a limit, an option) is not valid.

    The message says what was expected. Also a :class:`ValueError`.
    """


class NotFound(AuditError, LookupError):
    """What was asked for (a legal hold, a chain, a record) does not exist. Also a :class:`LookupError`."""


class CollectorConfigError(AuditError, ValueError):
    """The file cannot be read or is not a collector configuration (YAML mapping, unique keys)."""


# ---------------------------------------------------------------------- the database
class DatabaseUnavailable(AuditError, ConnectionError):
    """PostgreSQL could not be reached or refused the connection. Also a :class:`ConnectionError`."""


class DatabaseNotReady(AuditError, LookupError):
    """The database lacks the otel-audit tables a command needs, or has a schema this otel-audit cannot use.

    The message says which ``otel-audit db init`` (or upgrade) to run. Also a
    :class:`LookupError`.
    """


class MissingTablesError(DatabaseNotReady):
    """The otel-audit tables are not in this database / search_path."""


# ---------------------------------------------------------------------- writing records
class AuditRecordInvalid(AuditError):
    """An audit record failed validation and the processor runs with ``strict=True``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "audit record rejected (strict mode): "
            + "; ".join(self.problems)
            + ". Fix the extra= attributes of the logging call, or configure strict=False to store"
            " invalid records flagged instead."
        )


class SpoolFull(AuditError):
    """The local spool could not take a record within the configured time.

    Raised at the logging call site when the spool is full (``when_full="block"``
    and the wait timed out) so the action does not proceed unaudited.
    """


class AuditNotCommitted(AuditError):
    """A fail-closed record was not committed to PostgreSQL within the timeout.

    The record is safe in the local spool and will still be written; what failed
    is the promise that it was stored *before* the action went ahead.
    """


class ChainClosed(AuditError):
    """The chain was closed (its closing checkpoint is written); it takes no more records.

    A record logged after shutdown would follow the signed end of its chain. Log
    it through a new pipeline (a new process or ``otel_audit.configure()``).
    """


class CanonicalEncodingError(AuditError, ValueError):
    """The value is outside the canonical JSON domain (normalize it first)."""


# ---------------------------------------------------------------------- checkpoints, witnesses, proofs
class CheckpointFormatError(AuditError, ValueError):
    """The bytes are not a signed otel-audit checkpoint."""


class WitnessError(AuditError):
    """A witness could not store or read checkpoints."""


class ProofUnavailable(AuditError, LookupError):
    """No proof can be built (unknown record, or the database's data does not hold together).

    ``result`` is the :class:`~otel_audit.verify.prove.ProofResult` found so far, when there is one.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class NotAnchoredError(ProofUnavailable):
    """The record exists but no checkpoint covers it yet."""


# ---------------------------------------------------------------------- privacy
class KeyStoreUnavailable(AuditError, RuntimeError):
    """The key store could not be read or written (the caller withholds the fields, never stores them plain)."""


class KeyErased(AuditError, LookupError):
    """The subject key was destroyed: what it encrypted is unreadable for good."""


# ---------------------------------------------------------------------- archives and retention
class ArchiveIntegrityError(AuditError):
    """The database's records do not form an intact chain; they were not archived."""


class ArchiveError(AuditError):
    """The archive cannot be extended (its manifests are inconsistent, another run holds the lock, ...)."""


class StoreError(AuditError):
    """The archive destination cannot be used (the message says why and what to do)."""


class StoreConflict(StoreError):
    """An object exists with other bytes than those being written."""


class ManifestError(AuditError, ValueError):
    """The bytes are not a signed otel-audit archive manifest."""


class RetentionFormatError(AuditError, ValueError):
    """The bytes are not a retention checkpoint."""
