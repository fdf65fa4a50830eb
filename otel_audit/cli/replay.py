"""``otel-audit replay --spool DIR --dsn DSN``: write a spool left by a process to a database now.

A running process replays the spools of dead processes that wrote to its own
database by itself. This command is for the rest: a spool whose process never
reached a database (a mistyped DSN), or one nobody will start a process for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from otel_audit.cli.common import EXIT_ERROR, EXIT_OK, UsageError, add_dsn, resolve_dsn
from otel_audit.cli.output import escape_text, print_json, write_line


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "replay",
        help="write the records of a spool left by a process to the database now",
        description="Writes the records waiting in a spool (left by a process that exited or crashed before "
        "PostgreSQL took them) to the database given by --dsn or $OTEL_AUDIT_DSN, and removes the spool once "
        "written. Records already stored are skipped, so it can be run again. A spool that was written to "
        "another database is refused unless --force.",
    )
    parser.add_argument(
        "--spool",
        type=Path,
        required=True,
        metavar="DIR",
        help="one process's spool (a directory with meta.json), or a spool directory: every spool in it whose "
        "process is gone",
    )
    add_dsn(parser)
    parser.add_argument("--force", action="store_true", help="also replay a spool written to another database")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from otel_audit.sink.writer import PostgresSink
    from otel_audit.spool.spool import SpoolConfig, list_chain_dirs

    dsn = resolve_dsn(args)
    spool: Path = args.spool
    if (spool / "meta.json").is_file():
        dirs, root = [spool], spool.parent
    elif spool.is_dir():
        dirs, root = list_chain_dirs(spool), spool
    else:
        raise UsageError(f"{spool}: no such spool directory")
    results = []
    if dirs:
        sink = PostgresSink(dsn, SpoolConfig(directory=root), adopt_orphans=False, application_name="otel-audit-replay")
        try:
            for path in dirs:
                results.append(sink.replay(path, force=args.force))
        finally:
            sink.disconnect()
    if args.json:
        print_json(results)
    elif not results:
        write_line(f"nothing to replay in {spool}")
    for result in results:
        path = result["spool"]
        if result["status"] == "replayed":
            line = (
                f"replayed {path}: {result['records']} record(s) written to {result['database']}, "
                f"{result['already_stored']} already there"
            )
            if result.get("note"):
                line += f" ({result['note']})"
        elif result["status"] == "in use":
            line = f"skipped {path}: {result['reason']}"
        else:
            line = f"refused {path}: {result['reason']}"
            print(f"otel-audit replay: {escape_text(line)}", file=sys.stderr)
        if not args.json:
            write_line(line)
    return EXIT_ERROR if any(r["status"] == "refused" for r in results) else EXIT_OK
