"""``otel-audit query``: who did what, to which resource, with what result."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from otel_audit import query as q
from otel_audit.cli.common import EXIT_OK, UsageError, add_dsn, connect
from otel_audit.cli.output import render


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("query", help="answer an investigator's question")
    qsub = parser.add_subparsers(dest="question", metavar="QUESTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_dsn(p)
        p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
        p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")
        p.add_argument("--archive", metavar="DEST", default=None,
                       help="also search this archive (directory or s3://BUCKET/PREFIX); the live database too "
                       "when a DSN is given")

    actor = qsub.add_parser("actor", help="everything an actor did (default: last 30 days)")
    actor.add_argument("actor_id")
    actor.add_argument("--since", default="30d", help="how far back: 30d, 24h, ... or an ISO time (default 30d)")
    actor.add_argument("--until", default=None, help="ISO time, default now")
    common(actor)
    actor.set_defaults(handler=run_actor)

    resource = qsub.add_parser("resource", help="all access to one resource")
    resource.add_argument("resource_type")
    resource.add_argument("resource_id")
    resource.add_argument("--since", default=None, help="how far back: 30d, 24h, ... or an ISO time (default all)")
    common(resource)
    resource.set_defaults(handler=run_resource)

    failures = qsub.add_parser("failures", help="actors with many failed or denied attempts")
    failures.add_argument("--window", default="24h", help="time window (default 24h)")
    failures.add_argument("--threshold", type=int, default=5, help="report actors above this count (default 5)")
    common(failures)
    failures.set_defaults(handler=run_failures)

    trace = qsub.add_parser("trace", help="every audit record of one trace id")
    trace.add_argument("trace_id")
    common(trace)
    trace.set_defaults(handler=run_trace)


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(timezone.utc) - q.parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is neither a duration (30d, 24h, 15m) nor an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _archive(args: argparse.Namespace):  # noqa: ANN202
    """(archive store, live connection or None) for --archive."""
    import os

    from otel_audit.archive.store import open_store

    store = open_store(args.archive, require_lock=False)
    live = connect(args) if (args.dsn or os.environ.get("OTEL_AUDIT_DSN")) else None
    return store, live


def run_actor(args: argparse.Namespace) -> int:
    if args.archive:
        from otel_audit.archive import query as aq

        store, live = _archive(args)
        try:
            result = aq.actor_activity(store, args.actor_id, since=_when(args.since), until=_when(args.until),
                                       limit=args.limit, conn=live)
        finally:
            if live is not None:
                live.close()
        render(result.columns, result.rows, args.format)
        return EXIT_OK
    with connect(args) as conn:
        result = q.actor_activity(conn, args.actor_id, since=_when(args.since), until=_when(args.until), limit=args.limit)
    render(result.columns, result.rows, args.format)
    return EXIT_OK


def run_resource(args: argparse.Namespace) -> int:
    if args.archive:
        from otel_audit.archive import query as aq

        store, live = _archive(args)
        try:
            result = aq.resource_access(store, args.resource_type, args.resource_id, since=_when(args.since),
                                        limit=args.limit, conn=live)
        finally:
            if live is not None:
                live.close()
        render(result.columns, result.rows, args.format)
        return EXIT_OK
    with connect(args) as conn:
        result = q.resource_access(conn, args.resource_type, args.resource_id, since=_when(args.since), limit=args.limit)
    render(result.columns, result.rows, args.format)
    return EXIT_OK


def run_failures(args: argparse.Namespace) -> int:
    try:
        window = q.parse_duration(args.window)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.archive:
        from otel_audit.archive import query as aq

        store, live = _archive(args)
        try:
            result = aq.failed_attempts(store, since=datetime.now(timezone.utc) - window, threshold=args.threshold,
                                        conn=live)
        finally:
            if live is not None:
                live.close()
        render(result.columns, result.rows[: args.limit], args.format)
        return EXIT_OK
    with connect(args) as conn:
        result = q.failed_attempts(conn, window=window, threshold=args.threshold)
    render(result.columns, result.rows[: args.limit], args.format)
    return EXIT_OK


def run_trace(args: argparse.Namespace) -> int:
    if args.archive:
        from otel_audit.archive import query as aq

        store, live = _archive(args)
        try:
            result = aq.trace_records(store, args.trace_id, limit=args.limit, conn=live)
        finally:
            if live is not None:
                live.close()
        render(result.columns, result.rows, args.format)
        return EXIT_OK
    try:
        with connect(args) as conn:
            result = q.trace_records(conn, args.trace_id, limit=args.limit)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    render(result.columns, result.rows, args.format)
    return EXIT_OK
