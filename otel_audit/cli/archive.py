"""``otel-audit archive`` and ``otel-audit verify-archive``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from otel_audit import settings
from otel_audit.cli.common import EXIT_ERROR, EXIT_INTEGRITY, EXIT_OK, UsageError, add_dsn, connect
from otel_audit.cli.output import print_json
from otel_audit.query import parse_duration

if TYPE_CHECKING:
    from otel_audit.archive.store import ArchiveStore

#: Object Lock retention when none is given: the common reading of HIPAA's six years, plus a margin.
DEFAULT_RETAIN_DAYS = settings.DEFAULT_RETAIN_DAYS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "archive",
        help="write records older than a date to signed Parquet bundles (directory or S3 Object Lock)",
        description="Archive every record older than --before as Parquet bundles with the records' sealed bytes, "
        "their signed checkpoints and a signed manifest chained to the previous run's. Resumable: rerun the same "
        "command after a crash. Exit 0 done (or nothing due), 1 a chain does not verify (nothing of it archived), "
        "2 error.",
    )
    add_dsn(parser)
    parser.add_argument(
        "--before",
        required=True,
        metavar="DATE",
        help="archive records older than this: an ISO date/time (UTC unless given) or an age such as 365d",
    )
    parser.add_argument("--to", required=True, metavar="DEST", help="a directory, or s3://BUCKET/PREFIX")
    parser.add_argument(
        "--signing-key", metavar="PATH", help="Ed25519 key that signs the manifest (default: $OTEL_AUDIT_SIGNING_KEY)"
    )
    parser.add_argument(
        "--retain-days",
        type=int,
        default=DEFAULT_RETAIN_DAYS,
        metavar="DAYS",
        help=f"S3 Object Lock retention per object (default {DEFAULT_RETAIN_DAYS} days)",
    )
    parser.add_argument(
        "--lock-mode",
        choices=("COMPLIANCE", "GOVERNANCE"),
        default="COMPLIANCE",
        help="S3 Object Lock mode (default COMPLIANCE: nobody can delete before the date)",
    )
    parser.add_argument(
        "--allow-unlocked",
        action="store_true",
        help="archive to a bucket without versioning and Object Lock (objects can then be deleted)",
    )
    parser.add_argument("--records-per-file", type=int, default=None, metavar="N", help="records per bundle")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run_archive)

    check = sub.add_parser(
        "verify-archive",
        help="check an archive offline: manifests, digests, every hash, link, column and checkpoint",
        description="Verify an archive with no database: signed manifests chained run to run, every file's "
        "digest, every record's hash, columns and links, the checkpoints' signatures and heads. With --dsn, "
        "also where the archive meets the live database. Exit 0 intact, 1 integrity failure, 2 error.",
    )
    check.add_argument("dest", metavar="DEST", help="the archive: a directory, or s3://BUCKET/PREFIX")
    check.add_argument(
        "--trusted-key",
        action="append",
        required=True,
        metavar="PATH.pub",
        help="public key trusted for manifests and checkpoints (repeatable: the archive key and the emitters' keys)",
    )
    check.add_argument("--dsn", default=None, help="also check the join with this live database")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--strict", action="store_true", help="also fail (exit 1) on warnings")
    check.add_argument("--workers", type=int, default=None, metavar="N", help="processes checking bundles")
    check.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    check.set_defaults(handler=run_verify_archive)


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    now = now or datetime.now(timezone.utc)
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is neither an ISO date/time nor an age such as 365d") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _store(dest: str, *, create: bool, args: argparse.Namespace | None = None) -> ArchiveStore:
    from otel_audit.archive.store import open_store

    if args is None:
        return open_store(dest, create=create, require_lock=False)
    return open_store(
        dest,
        create=create,
        retain_until=datetime.now(timezone.utc) + timedelta(days=args.retain_days),
        mode=args.lock_mode,
        require_lock=not args.allow_unlocked,
    )


@contextmanager
def _bar(total: int | None, enabled: bool, desc: str) -> Iterator[Callable[[int], None]]:
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="rec", unit_scale=True, desc=desc, file=sys.stderr, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


def run_archive(args: argparse.Namespace) -> int:
    from otel_audit.archive.writer import DEFAULT_RECORDS_PER_FILE, ArchiveIntegrityError, archive_database
    from otel_audit.core.keys import load_signing_key

    key_path = args.signing_key or settings.SIGNING_KEY.get()
    if not key_path:
        raise UsageError(
            "the archive's manifest must be signed: pass --signing-key PATH (or set "
            "OTEL_AUDIT_SIGNING_KEY); create one with `otel-audit keygen --out PATH`"
        )
    if args.retain_days < 1:
        raise UsageError("--retain-days must be at least 1")
    key = load_signing_key(key_path)
    before = parse_when(args.before)
    store = _store(args.to, create=True, args=args)
    with connect(args) as conn, _bar(None, True, "archiving") as tick:
        try:
            result = archive_database(
                conn,
                store,
                before=before,
                key=key,
                records_per_file=args.records_per_file or DEFAULT_RECORDS_PER_FILE,
                progress=tick,
            )
        except ArchiveIntegrityError as exc:
            print(f"otel-audit archive: INTEGRITY FAILURE: {exc}", file=sys.stderr)
            return EXIT_INTEGRITY
    if args.json:
        print_json(result.to_dict())
    elif result.run is None:
        print(f"nothing to archive before {before.isoformat()} in {store.description}")
    else:
        state = "resumed and finished" if result.resumed else "wrote"
        print(
            f"{state} archive run {result.run}: {result.records:,} records of {result.chains} chain(s), "
            f"{result.checkpoints:,} checkpoints, {len(result.files)} file(s), {result.bytes:,} bytes "
            f"({result.written} object(s) written now) in {store.description}; manifest {result.manifest} "
            f"(sha256 {result.manifest_hash}) in {result.seconds:.1f}s"
        )
    return EXIT_OK


def run_verify_archive(args: argparse.Namespace) -> int:
    from otel_audit.archive.verify import verify_archive
    from otel_audit.cli.verify import print_text
    from otel_audit.core.keys import load_trusted_keys

    keys = load_trusted_keys(args.trusted_key)
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    store = _store(args.dest, create=False)
    conn = connect(args) if args.dsn else None
    try:
        with _bar(None, not args.no_progress, "verifying archive") as tick:
            report = verify_archive(store, keys, conn=conn, workers=args.workers, progress=tick)
    finally:
        if conn is not None:
            conn.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print_text(report)
    code = report.exit_code(strict=args.strict)
    return code if code else EXIT_OK


__all__ = ["EXIT_ERROR", "parse_when", "register"]
