"""``otel-audit``: set up the database, verify, query, run the demo.

Exit codes: 0 success (verification: intact), 1 integrity failure, 2 usage,
configuration or connection error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from otel_audit import __version__
from otel_audit.cli.common import EXIT_ERROR, CommandParser, UsageError
from otel_audit.errors import AuditError

__all__ = ["main"]

EXIT_BROKEN_PIPE = 128 + 13  # the status of a process killed by SIGPIPE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _error(command: str, message: str) -> None:
    # Messages may quote stored values (a proof's problems, a server's error detail): escaped.
    from otel_audit.cli.output import escape_text

    print(f"otel-audit {command}: {escape_text(message)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from otel_audit.cli import (
        archive,
        checkpoints,
        collector,
        db,
        demo,
        ingest,
        privacy,
        query,
        replay,
        report,
        retention,
        status,
        verify,
    )

    parser = CommandParser(
        prog="otel-audit",
        description="Tamper-evident compliance audit logging for OpenTelemetry.",
    )
    parser.add_argument("--version", action="version", version=f"otel-audit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what otel-audit does to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (
        db,
        verify,
        query,
        report,
        demo,
        status,
        replay,
        checkpoints,
        ingest,
        collector,
        archive,
        retention,
        privacy,
    )
    for module in modules:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Only otel-audit's own messages go to stderr; the demo's application logs
    # (and anything else on the root logger) stay out of the terminal.
    own = logging.getLogger("otel_audit")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    own.addHandler(stderr)
    own.setLevel(logging.INFO if args.verbose else logging.WARNING)
    own.propagate = False
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away (| head) is handled below
        return code
    except BrokenPipeError:
        # The reader stopped reading (`otel-audit query ... | head`): end quietly, as a Unix tool killed by
        # SIGPIPE does (status 128 + 13), and keep Python from complaining about stdout when it exits.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except UsageError as exc:
        _error(args.command, str(exc))
        return EXIT_ERROR
    except (AuditError, OSError) as exc:
        # Everything otel-audit raises on purpose is an AuditError (otel_audit.errors); OSError covers the
        # files a command reads or writes. Anything else is a bug and keeps its traceback.
        _error(args.command, str(exc))
        return EXIT_ERROR
    except Exception as exc:
        psycopg = sys.modules.get("psycopg")  # imported by the commands that talk to PostgreSQL, not here
        if psycopg is None or not isinstance(exc, psycopg.Error):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _error(args.command, f"PostgreSQL error: {text}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"otel-audit {args.command}: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover - `python -m otel_audit` is the supported form
    from otel_audit.cli.main import main as _main  # the importable module, not this __main__ copy

    sys.exit(_main())
