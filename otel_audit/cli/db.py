"""``otel-audit db init``: create or upgrade the schema; optionally grant roles."""

from __future__ import annotations

import argparse

from otel_audit.cli.common import EXIT_OK, Deferred, UsageError, add_dsn, connect, resolve_deferred
from otel_audit.cli.output import print_json
from otel_audit.errors import DatabaseNotReady


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="create or upgrade the otel-audit schema")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    init = dbsub.add_parser(
        "init",
        help="apply missing migrations (idempotent)",
        description="Create or upgrade the otel-audit tables in the first schema of the search_path. "
        "Safe to run again and concurrently.",
    )
    add_dsn(init)
    init.add_argument("--writer-role", metavar="ROLE", help="grant ROLE insert-only access (it must exist)")
    init.add_argument("--reader-role", metavar="ROLE", help="grant ROLE read-only access (auditors, verify)")
    init.set_defaults(handler=run_init)
    maintain = dbsub.add_parser(
        "maintain",
        help="create the coming months' partitions of audit_logs; list partitions",
        description="Create the partitions of audit_logs from last month to --ahead months ahead (the sink does "
        "this too, hourly), give rows that landed in the default partition a partition of their own when their "
        "month is plausible, and list every partition. Run it daily from cron. Idempotent.",
    )
    add_dsn(maintain)
    maintain.add_argument(
        "--ahead",
        type=int,
        default=Deferred("otel_audit.sink.partitions", "DEFAULT_AHEAD_MONTHS"),
        metavar="MONTHS",
        help="months to create ahead of the current one (default %(default)s)",
    )
    maintain.add_argument("--json", action="store_true", help="print the partitions as JSON")
    maintain.set_defaults(handler=run_maintain)
    version = dbsub.add_parser("version", help="print the schema version of the database")
    add_dsn(version)
    version.set_defaults(handler=run_version)


def run_init(args: argparse.Namespace) -> int:
    from otel_audit.sink.schema import SCHEMA_VERSION, grant_reader, grant_writer, migrate

    with connect(args) as conn:
        applied = migrate(conn)
        for migration in applied:
            print(f"applied migration {migration.version}: {migration.description}")
        if not applied:
            print(f"schema is up to date (version {SCHEMA_VERSION})")
        if args.writer_role:
            grant_writer(conn, args.writer_role)
            print(f"granted insert-only access to {args.writer_role}")
        if args.reader_role:
            grant_reader(conn, args.reader_role)
            print(f"granted read-only access to {args.reader_role}")
    return EXIT_OK


def run_version(args: argparse.Namespace) -> int:
    from otel_audit.sink.schema import current_version

    with connect(args) as conn:
        print(current_version(conn))
    return EXIT_OK


def run_maintain(args: argparse.Namespace) -> int:
    from otel_audit.sink.partitions import ensure_partitions, is_partitioned, list_partitions, rehome_default_rows
    from otel_audit.sink.schema import current_version

    resolve_deferred(args)

    if args.ahead < 0:
        raise UsageError("--ahead must be 0 or more")
    with connect(args) as conn:
        if current_version(conn) < 3 or not is_partitioned(conn):
            raise DatabaseNotReady(
                "audit_logs is not partitioned in this database (schema version "
                f"{current_version(conn)}); upgrade it with `otel-audit db init --dsn ...`"
            )
        made = ensure_partitions(conn, ahead=args.ahead, lock_timeout="30s")
        made += rehome_default_rows(conn, lock_timeout="30s")
        parts = list_partitions(conn)
    if args.json:
        print_json(
            {
                "created": made,
                "partitions": [
                    {
                        "name": p.name,
                        "from": p.lower.isoformat() if p.lower else None,
                        "to": p.upper.isoformat() if p.upper else None,
                        "default": p.default,
                        "rows_estimate": p.rows,
                        "bytes": p.bytes,
                    }
                    for p in parts
                ],
            }
        )
        return EXIT_OK
    for name in made:
        print(f"created partition {name}")
    for p in parts:
        span = (
            "default (no partition for their month)"
            if p.default
            else (
                f"{p.lower.isoformat() if p.lower else 'all time'} .. {p.upper.isoformat() if p.upper else 'all time'}"
            )
        )
        print(f"{p.name:28} {span:60} ~{p.rows:,} rows  {p.bytes / 1048576:,.1f} MiB")
    return EXIT_OK
