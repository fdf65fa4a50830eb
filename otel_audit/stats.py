"""Counters of the audit pipeline itself, for metrics and ``otel-audit status``.

A compliance pipeline must be able to say how many records it accepted, wrote,
quarantined and lost; these counters are that account. Increments happen
under the GIL from a known thread each (callers under the chain lock, the sink
on its own thread), so plain integers suffice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PipelineStats"]


@dataclass
class PipelineStats:
    accepted: int = 0  # audit records sealed and spooled
    relayed: int = 0  # records sealed by other emitters, spooled by the OTLP ingest for storage
    invalid: int = 0  # of which flagged invalid (still stored)
    dropped: int = 0  # refused because the spool was full (when_full="drop"), or lost to an internal error
    committed: int = 0  # written to PostgreSQL by this process (own and adopted chains)
    quarantined: int = 0  # refused permanently by PostgreSQL, kept in audit_quarantine
    replayed: int = 0  # written from spools left by earlier processes
    checkpoints: int = 0  # signed checkpoints written
    witness_failures: int = 0  # checkpoints a witness could not store
    spool_bytes: int = 0  # bytes appended to spools and not yet committed
    oldest_uncommitted_unix: float | None = None  # time of the oldest record not yet committed
    last_commit_unix: float | None = None
    last_error: str | None = None
    last_error_unix: float | None = None
    database_up: bool | None = None
    # Set while PostgreSQL refuses for a reason retrying will not fix (privileges, login): what it said.
    configuration_error: str | None = None
    started_unix: float = field(default_factory=time.time)

    def note_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_unix = time.time()

    def snapshot(self) -> dict[str, Any]:
        data = asdict(self)
        oldest = self.oldest_uncommitted_unix
        data["oldest_uncommitted_age_seconds"] = None if oldest is None else max(0.0, time.time() - oldest)
        return data
