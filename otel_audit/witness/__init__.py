"""Witnesses: copies of signed checkpoints kept outside PostgreSQL.

:mod:`otel_audit.witness.store` is the storage and format (the :class:`Witness`
protocol, :class:`DirectoryWitness`, entries and how they chain);
:mod:`otel_audit.witness.publisher` the thread that writes committed
checkpoints to them (:class:`WitnessPublisher`). Both are importable from here.
"""

from otel_audit.witness.publisher import WitnessPublisher
from otel_audit.witness.store import (
    SUFFIX,
    DirectoryWitness,
    EntryLink,
    Witness,
    WitnessEntry,
    WitnessError,
    entry_bytes,
    entry_name,
    name_matches,
    split_entry,
)

__all__ = [
    "SUFFIX",
    "DirectoryWitness",
    "EntryLink",
    "Witness",
    "WitnessEntry",
    "WitnessError",
    "WitnessPublisher",
    "entry_bytes",
    "entry_name",
    "name_matches",
    "split_entry",
]
