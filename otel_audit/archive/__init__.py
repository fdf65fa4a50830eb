"""Archives: signed Parquet bundles of sealed records in a directory or an S3 bucket (``otel-audit[archive]``)."""

from otel_audit.archive.format import RECORD_COLUMNS, Manifest, parse_manifest
from otel_audit.archive.store import DirectoryStore, S3Store, StoreError, open_store
from otel_audit.archive.verify import verify_archive
from otel_audit.archive.writer import ArchiveIntegrityError, ArchiveResult, archive_database, load_manifests

__all__ = [
    "RECORD_COLUMNS",
    "ArchiveIntegrityError",
    "ArchiveResult",
    "DirectoryStore",
    "Manifest",
    "S3Store",
    "StoreError",
    "archive_database",
    "load_manifests",
    "open_store",
    "parse_manifest",
    "verify_archive",
]
