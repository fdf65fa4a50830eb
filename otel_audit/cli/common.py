"""What every ``otel-audit`` command shares: exit codes, the usage error, the DSN option and connecting.

It lives apart from :mod:`otel_audit.cli.main` (which imports every command
module to build the parser) so that command modules never import ``main``
back: the CLI has no import cycle.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from otel_audit import settings
from otel_audit.errors import DatabaseUnavailable

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTEGRITY",
    "EXIT_OK",
    "CommandParser",
    "Deferred",
    "UsageError",
    "add_dsn",
    "connect",
    "resolve_deferred",
    "resolve_dsn",
]

EXIT_OK, EXIT_INTEGRITY, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    """A problem with how the command was called; the message says how to fix it."""


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose unknown options are reported by the (sub)command they were given to.

    argparse hands a subcommand's unrecognized arguments back to the top-level
    parser, which then prints the top-level usage: a typo in ``otel-audit verify
    --trusted-kee`` would show the list of commands instead of verify's options.
    Each parser here refuses its own leftovers, with its own usage.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error("unrecognized arguments: " + " ".join(extras))
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


class Deferred:
    """A default that lives in a module the command imports only when it runs.

    Building the parser registers every command, so a default read from, say,
    the ingest's configuration would import psycopg and the pipeline for
    ``otel-audit keygen`` too. argparse keeps a default that is not a string as
    it is and shows it in ``--help`` with ``str()``: this one imports its module
    then. The command calls :func:`resolve_deferred` before using its arguments.
    """

    def __init__(self, module: str, name: str, attribute: str | None = None, *, spec: str = "") -> None:
        self.module, self.name, self.attribute, self.spec = module, name, attribute, spec

    def value(self) -> Any:
        import importlib

        found = getattr(importlib.import_module(self.module), self.name)
        return getattr(found(), self.attribute) if self.attribute else found

    def __str__(self) -> str:
        return format(self.value(), self.spec)


def resolve_deferred(args: argparse.Namespace) -> argparse.Namespace:
    """Replace each :class:`Deferred` default left in ``args`` by its value."""
    for name, value in vars(args).items():
        if isinstance(value, Deferred):
            setattr(args, name, value.value())
    return args


def add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=None,
        help=f"PostgreSQL connection string (default: {settings.DSN.cli_help()})",
    )


def resolve_dsn(args: argparse.Namespace) -> str:
    dsn = getattr(args, "dsn", None) or settings.DSN.get()
    if not dsn:
        raise UsageError("no database given: pass --dsn postgresql://user@host/db or set OTEL_AUDIT_DSN")
    return dsn


def connect(args: argparse.Namespace, *, autocommit: bool = True) -> psycopg.Connection:
    import psycopg

    dsn = resolve_dsn(args)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name="otel-audit-cli", connect_timeout=10)
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {message}") from exc
