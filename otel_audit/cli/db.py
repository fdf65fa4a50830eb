"""``otel-audit db init``: create or upgrade the schema; optionally grant roles."""

from __future__ import annotations

import argparse

from otel_audit.cli.common import EXIT_OK, add_dsn, connect
from otel_audit.sink.schema import SCHEMA_VERSION, current_version, grant_reader, grant_writer, migrate


def register(sub: argparse._SubParsersAction) -> None:
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
    version = dbsub.add_parser("version", help="print the schema version of the database")
    add_dsn(version)
    version.set_defaults(handler=run_version)


def run_init(args: argparse.Namespace) -> int:
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
    with connect(args) as conn:
        print(current_version(conn))
    return EXIT_OK
