"""Exceptions a caller of otel-audit can meet. Each message says what to do next."""

from __future__ import annotations

__all__ = [
    "AuditConfigurationError",
    "AuditError",
    "AuditNotCommitted",
    "AuditRecordInvalid",
    "ChainClosed",
    "SpoolFull",
]


class AuditError(Exception):
    """Base class of every otel-audit error."""


class AuditConfigurationError(AuditError):
    """otel-audit was set up inconsistently (bad option, missing DSN, unusable directory)."""


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
