"""``otel-audit status``: spool backlog, live counters, database heads."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from otel_audit import settings
from otel_audit.cli.common import EXIT_ERROR, EXIT_OK, add_dsn, connect
from otel_audit.cli.output import escape_text, print_json, write_line


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "status",
        help="what is waiting in the spool, what the processes counted, what the database holds",
        description="Reads the spool directory (default $OTEL_AUDIT_SPOOL_DIR) and, with --dsn or "
        "$OTEL_AUDIT_DSN, the database.",
    )
    parser.add_argument("--spool-dir", type=Path, default=None, help="spool directory to inspect")
    add_dsn(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from otel_audit.sink.writer import database_identity
    from otel_audit.status import database_status, spool_status

    result: dict[str, Any] = {}
    spool_dir = args.spool_dir or settings.SPOOL_DIR.get()
    identity = None
    if args.dsn or settings.DSN.get():
        with connect(args) as conn:
            result["database"] = database_status(conn)
            identity = database_identity(conn)
    result["spool"] = spool_status(spool_dir, identity=identity, dsn_argument=_dsn_argument(args))
    if args.json:
        print_json(result)
    else:
        _print(result)
    misconfigured = [
        chain
        for chain in result["spool"]["chains"]
        if chain["owner_alive"] and (chain.get("process") or {}).get("configuration_error")
    ]
    for chain in misconfigured:
        # A live process PostgreSQL refuses for good (privileges, login): said where scripts look too.
        print(
            f"otel-audit status: CONFIGURATION ERROR in process {chain.get('pid')}: "
            f"{escape_text(chain['process']['configuration_error'])}; its records wait in {escape_text(chain['path'])}",
            file=sys.stderr,
        )
    database = result.get("database")
    if database is not None and database.get("missing_tables"):
        # Said on stderr too, so that scripts reading only the exit code and stderr see why.
        print(f"otel-audit status: {database['note']}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR if misconfigured else EXIT_OK


def _dsn_argument(args: argparse.Namespace) -> str:
    """How the suggested `otel-audit replay` command should name the database: as given, unless
    that would print a password."""
    if args.dsn:
        from psycopg.conninfo import conninfo_to_dict

        # connect() has parsed it already.
        return "DSN" if conninfo_to_dict(args.dsn).get("password") else shlex.quote(args.dsn)
    if settings.DSN.get():
        return '"$OTEL_AUDIT_DSN"'
    return "DSN"


def _print(result: dict[str, Any]) -> None:
    # Every line may hold stored values (service and host names from the registry, error texts): escaped.
    spool = result["spool"]
    if not spool["exists"]:
        write_line(f"spool {spool['spool_dir']}: no such directory (no process on this host has spooled there)")
    else:
        write_line(
            f"spool {spool['spool_dir']}: {len(spool['chains'])} chain dir(s), {spool['total_bytes']:,} bytes, "
            f"{spool['orphaned_chains']} waiting for replay, {spool['quarantine_files']} quarantine file(s)"
        )
    for chain in spool["chains"]:
        state = "live" if chain["owner_alive"] else "ORPHANED"
        kind = "  relay (sealed elsewhere, via the OTLP ingest)" if chain.get("relay") else ""
        pid = f"  pid {chain['pid']}" if chain.get("pid") is not None else ""
        line = f"  {chain['chain_id']}{pid}  {state}{kind}  {chain['bytes']:,} bytes"
        process = chain.get("process")
        if process:
            line += (
                f"  accepted {process.get('accepted')} committed {process.get('committed')} "
                f"dropped {process.get('dropped')} quarantined {process.get('quarantined')} "
                f"db_up {process.get('database_up')} spool_pending {process.get('spool_bytes')}B"
            )
            if process.get("checkpoint_key_id") or process.get("checkpoints"):
                line += f"  checkpoints {process.get('checkpoints')}"
            if process.get("witness_failures"):
                line += f"  WITNESS FAILURES {process['witness_failures']}"
            age = process.get("oldest_uncommitted_age_seconds")
            if age:
                line += f" oldest_uncommitted {age:.1f}s"
            if process.get("configuration_error"):
                line += f"  CONFIGURATION ERROR: {process['configuration_error']}"
            elif process.get("last_error"):
                line += f"  last error: {process['last_error']}"
        if "records_in_spool" in chain:
            line += f"  {chain['records_in_spool']} record(s) to replay"
            if chain["oldest_record"]:
                line += f", oldest {chain['oldest_record']}"
        write_line(line)
        if chain.get("note"):
            write_line(f"    {chain['note']}")
    db = result.get("database")
    if db:
        if db.get("missing_tables"):
            write_line(f"database: {db['note']}")
            return
        last = f"last commit {db['last_commit']}" if db["last_commit"] else "no record committed yet"
        write_line(
            f"database: schema v{db['schema_version']}, {db['chains_registered']} chain(s), {last}, "
            f"{db['quarantined_records']} quarantined record(s)"
        )
        for chain in db["recent_chains"][:10]:
            who = f"{chain['service'] or 'unknown service'}@{chain['host'] or 'unknown host'}"
            if chain["pid"] is not None:
                who += f" pid {chain['pid']}"
            if chain["head_seq"] is None:
                state = "no records committed yet"
            else:
                state = f"head seq {chain['head_seq']}  last commit {chain['last_commit']}"
            write_line(f"  {chain['chain_id']}  {who}  {state}")
        if db["chains_registered"] > 10:
            write_line(f"  ... and {db['chains_registered'] - 10} more chain(s) (`--json` lists the 50 newest)")
