"""``otel-audit query``: who did what, to which resource, with what result -- and what happened in one request.

Every question takes the same filters (``--actor``, ``--resource-type``,
``--resource-id``, ``--action``, ``--session``, ``--trace``, ``--result``,
``--service``, ``--chain``, ``--since``/``--until``, ``--problems``), given
before or after the question; without a question, ``records`` is asked.
Output says when it was cut at ``--limit`` and how many more records match;
problem records (stored flagged, or quarantined) carry their problems in a
column of their own.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any

from otel_audit import query as q
from otel_audit import settings
from otel_audit.cli.common import EXIT_OK, UsageError, connect
from otel_audit.cli.output import render, render_timeline

_S = argparse.SUPPRESS  # an option not given is absent, so a question's parser never overwrites the parent's value

QUESTIONS = {
    "records": "records matching the filters (the default question)",
    "actor": "everything an actor did (default: the last 30 days)",
    "resource": "all access to one resource",
    "trace": "every record of one trace id, in time order (a request's story: --format timeline)",
    "session": "every record of one session, in time order (--format timeline)",
    "failures": "actors with more failed or denied attempts than a threshold",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "query",
        help="answer an investigator's question",
        description="Answer an investigator's question. Filters may come before or after the question; without a "
        "question, the records matching the filters are listed. Quarantined records that match are listed too, "
        "marked in the problems column. Exit 0 answered (even with no rows), 2 usage or connection error.",
        epilog="examples:\n"
        "  otel-audit query actor user-123 --since 7d --result denied\n"
        "  otel-audit query resource patient_record patient-456 --wide\n"
        "  otel-audit query trace 0af7651916cd43dd8448eb211c80319c --format timeline\n"
        "  otel-audit query --session s-42 --format timeline\n"
        "  otel-audit query --problems --since 2026-12-01 --until 2026-12-31\n"
        "  otel-audit query failures --since 24h --threshold 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _options(parser)
    parser.set_defaults(handler=run, question="records")
    qsub = parser.add_subparsers(dest="question", metavar="QUESTION", required=False)

    records = qsub.add_parser("records", help=QUESTIONS["records"])
    actor = qsub.add_parser("actor", help=QUESTIONS["actor"])
    actor.add_argument("actor_id")
    resource = qsub.add_parser("resource", help=QUESTIONS["resource"])
    resource.add_argument("resource_type")
    resource.add_argument("resource_id")
    trace = qsub.add_parser("trace", help=QUESTIONS["trace"])
    trace.add_argument("trace_id")
    session = qsub.add_parser("session", help=QUESTIONS["session"])
    session.add_argument("session_id")
    failures = qsub.add_parser("failures", help=QUESTIONS["failures"])
    failures.add_argument("--window", default=_S, help="how far back from now (default 24h); or --since/--until")
    failures.add_argument(
        "--threshold",
        type=_not_negative,
        default=_S,
        help="list actors above this many failed or denied attempts (default 5)",
    )
    for p in (records, actor, resource, trace, session, failures):
        _options(p)
        p.set_defaults(handler=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be at least 1, not {value} (there is no unlimited: pass a large number)"
        )
    return value


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", default=_S, help=f"PostgreSQL connection string (default: {settings.DSN.cli_help()})")
    out = p.add_argument_group("output")
    out.add_argument(
        "--format",
        choices=("table", "json", "csv", "timeline"),
        default=_S,
        help="table (default), json (exact values), csv (spreadsheet-safe) or timeline (a story, in time order)",
    )
    out.add_argument(
        "--limit",
        type=_positive,
        default=_S,
        help="at most this many rows (default 1000; 10000 for trace and session); the output says how many more match",
    )
    out.add_argument(
        "--archive",
        default=_S,
        metavar="DEST",
        help="also search this archive (directory or s3://BUCKET/PREFIX); the live database too when a "
        "DSN is given (questions actor, resource, trace and failures)",
    )
    out.add_argument(
        "--pseudonym-keys",
        default=_S,
        metavar="FILE",
        help="the pseudonym key ring (default: $OTEL_AUDIT_PSEUDONYM_KEYS_FILE or "
        "$OTEL_AUDIT_PSEUDONYM_KEYS): an actor or session given in plain text also finds the records "
        "that store it pseudonymized, under every key of the ring",
    )
    out.add_argument(
        "--keystore-dsn",
        default=_S,
        metavar="DSN",
        help="the subject key store (default: $OTEL_AUDIT_KEYSTORE_DSN), with --master-key (default: "
        "$OTEL_AUDIT_MASTER_KEY_FILE): encrypted fields are shown decrypted, or as [erased] when their "
        "subject was erased; without it they show as [encrypted]",
    )
    out.add_argument("--master-key", default=_S, metavar="FILE", help="the key store's master key ring")
    out.add_argument(
        "--wide",
        action="store_true",
        default=_S,
        help="also actor type, session, user, trace and span ids, host, user agent, message, changed "
        "fields and old values",
    )
    f = p.add_argument_group("filters (all must hold; repeated ones: any of their values)")
    f.add_argument("--actor", dest="f_actor", default=_S, metavar="ID")
    f.add_argument("--resource-type", dest="f_rtype", default=_S, metavar="TYPE")
    f.add_argument("--resource-id", dest="f_rid", default=_S, metavar="ID")
    f.add_argument("--action", dest="f_actions", action="append", default=_S, metavar="ACTION")
    f.add_argument("--session", dest="f_session", default=_S, metavar="ID")
    f.add_argument("--trace", dest="f_trace", default=_S, metavar="TRACE_ID")
    f.add_argument("--result", dest="f_results", action="append", choices=q.RESULTS, default=_S)
    f.add_argument("--service", dest="f_services", action="append", default=_S, metavar="NAME")
    f.add_argument("--chain", dest="f_chain", default=_S, metavar="CHAIN_ID")
    f.add_argument("--since", default=_S, help="from: 30d, 24h, ... back from now, an ISO date or time")
    f.add_argument("--until", default=_S, help="to (excluded): an ISO time, or a date meaning the end of that day")
    f.add_argument(
        "--problems",
        action="store_true",
        default=_S,
        help="only records stored with validation problems or quarantined",
    )


def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _time(
    args: argparse.Namespace, name: str, default: str | None, *, end: bool = False, now: datetime | None = None
) -> datetime | None:
    text = _get(args, name, default)
    if text is None:
        return None
    try:
        return q.parse_time(text, end=end, now=now)
    except ValueError as exc:
        raise UsageError(f"--{name}: {exc}") from None


def _filter(args: argparse.Namespace) -> q.RecordFilter:
    question = args.question
    until = _time(args, "until", None, end=True)
    since = _time(args, "since", "30d" if question == "actor" else None, now=until)
    where = q.RecordFilter(
        actor_id=_get(args, "actor_id") if question == "actor" else _get(args, "f_actor"),
        resource_type=_get(args, "resource_type") if question == "resource" else _get(args, "f_rtype"),
        resource_id=_get(args, "resource_id") if question == "resource" else _get(args, "f_rid"),
        actions=_get(args, "f_actions", []),
        session_id=_get(args, "session_id") if question == "session" else _get(args, "f_session"),
        trace_id=_get(args, "trace_id") if question == "trace" else _get(args, "f_trace"),
        results=_get(args, "f_results", []),
        services=_get(args, "f_services", []),
        chain_id=_get(args, "f_chain"),
        since=since,
        until=until,
        problems=bool(_get(args, "problems", False)),
    )
    if where.actor_id is not None:
        where.actor_aliases = _aliases(args, where.actor_id)
    if where.session_id is not None:
        where.session_aliases = _aliases(args, where.session_id)
    try:
        where.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return where


def _aliases(args: argparse.Namespace, term: str) -> list[str]:
    """``term``'s pseudonym under every key of the configured ring (none without a ring)."""
    from otel_audit.errors import AuditConfigurationError
    from otel_audit.privacy.policy import pseudonym_keys
    from otel_audit.privacy.pseudonym import PREFIX

    if term.startswith(PREFIX):
        return []  # already a pseudonym: searched as given
    try:
        ring = pseudonym_keys(_get(args, "pseudonym_keys"))
    except AuditConfigurationError as exc:
        raise UsageError(str(exc)) from None
    return [key.pseudonym(term) for key in ring]


def _reveal(args: argparse.Namespace, result: q.QueryResult) -> q.QueryResult:
    """Encrypted values (``aead:...``) decrypted with the key store, or replaced by a marker without one."""
    from otel_audit.privacy.encrypt import PREFIX, Decryptor

    def encrypted(value: Any) -> bool:
        if isinstance(value, str):
            return value.startswith(PREFIX)
        if isinstance(value, dict):
            return any(encrypted(v) for v in value.values())
        if isinstance(value, list):
            return any(encrypted(v) for v in value)
        return False

    if not any(encrypted(v) for row in result.rows for v in row):
        return result
    store = None
    dsn = _get(args, "keystore_dsn") or settings.KEYSTORE_DSN.get()
    if dsn:
        from otel_audit.errors import AuditConfigurationError
        from otel_audit.privacy.keystore import KeyStore, master_keys

        try:
            store = KeyStore(dsn, master_keys(_get(args, "master_key")))
        except AuditConfigurationError as exc:
            raise UsageError(str(exc)) from None
    reader = Decryptor(store)
    try:
        result.rows = [
            tuple(reader.reveal(v, column) for column, v in zip(result.columns, row, strict=False))
            for row in result.rows
        ]
    finally:
        if store is not None:
            store.close()
    return result


def run(args: argparse.Namespace) -> int:
    args.question = args.question or "records"
    if _get(args, "archive"):
        return _run_archive(args)
    if args.question == "failures":
        return _run_failures(args)
    where = _filter(args)
    fmt = _get(args, "format", "table")
    story = args.question in ("trace", "session") or fmt == "timeline"
    limit = _get(args, "limit", 10_000 if args.question in ("trace", "session") else 1000)
    with connect(args) as conn:
        try:
            result = q.find_records(
                conn,
                where,
                limit=limit,
                wide=bool(_get(args, "wide", False)),
                ascending=story,
                columns=q.TIMELINE_COLUMNS if fmt == "timeline" else None,
            )
        except q.MissingTablesError:
            raise
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    result = _reveal(args, result)
    if fmt == "timeline":
        render_timeline(result, _title(args, where))
    else:
        render(result.columns, result.rows, fmt)
    _notice(result, fmt, "newest" if not story else "first", "records")
    return EXIT_OK


# What the archive queries (otel_audit.archive.query) answer: each question and the filters it applies.
_ARCHIVE_FILTERS = {
    "actor": {"since", "until"},
    "resource": {"since"},
    "trace": set(),
    "failures": {"since", "until", "threshold", "window"},
}
_FILTER_FLAGS = {
    "f_actor": "--actor",
    "f_rtype": "--resource-type",
    "f_rid": "--resource-id",
    "f_actions": "--action",
    "f_session": "--session",
    "f_trace": "--trace",
    "f_results": "--result",
    "f_services": "--service",
    "f_chain": "--chain",
    "problems": "--problems",
    "wide": "--wide",
    "since": "--since",
    "until": "--until",
    "threshold": "--threshold",
    "window": "--window",
}


def _run_archive(args: argparse.Namespace) -> int:
    """The questions over an archive (and the live database when a DSN is given), by otel_audit.archive.query.

    Only the filters those queries apply are accepted: any other is a usage error, never silently ignored.
    """
    question = args.question
    if question not in _ARCHIVE_FILTERS:
        raise UsageError(f"--archive answers the questions {', '.join(_ARCHIVE_FILTERS)}, not {question}")
    given = {name for name in _FILTER_FLAGS if _get(args, name) not in (None, [], False)}
    extra = given - _ARCHIVE_FILTERS[question]
    if extra:
        flags = ", ".join(sorted(_FILTER_FLAGS[name] for name in extra))
        raise UsageError(
            f"query {question} --archive does not apply {flags}; leave them out, or query the live "
            "database without --archive"
        )
    from otel_audit.archive import query as aq
    from otel_audit.archive.store import open_store

    fmt = _get(args, "format", "table")
    limit = _get(args, "limit", 10_000 if question == "trace" else 1000)
    until = _time(args, "until", None, end=True)
    since = _time(args, "since", None, now=until)
    store = open_store(args.archive, require_lock=False)
    live = connect(args) if (_get(args, "dsn") or settings.DSN.get()) else None
    try:
        if question == "actor":
            result = aq.actor_activity(
                store,
                args.actor_id,
                since=since,
                until=until,
                limit=limit,
                conn=live,
                aliases=_aliases(args, args.actor_id),
            )
        elif question == "resource":
            result = aq.resource_access(
                store, args.resource_type, args.resource_id, since=since, limit=limit, conn=live
            )
        elif question == "trace":
            q.RecordFilter(trace_id=args.trace_id).validate()
            result = aq.trace_records(store, args.trace_id, limit=limit, conn=live)
        else:
            window = q.parse_duration(_get(args, "window", "24h"))
            result = aq.failed_attempts(
                store,
                since=since or datetime.now(timezone.utc) - window,
                until=until,
                threshold=_get(args, "threshold", 5),
                conn=live,
            )
            result.rows = result.rows[:limit]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if live is not None:
            live.close()
    result = _reveal(args, result)
    if fmt == "timeline":
        render_timeline(result, f"{question} {getattr(args, question + '_id', '')}".strip())
    else:
        render(result.columns, result.rows, fmt)
    if len(result.rows) >= limit:
        stream = sys.stdout if fmt in ("table", "timeline") else sys.stderr
        note = f"the first {limit:,} rows are shown (--limit): more may match"
        stream.write(f"({note})\n" if stream is sys.stdout else f"otel-audit query: {note}\n")
    return EXIT_OK


def _title(args: argparse.Namespace, where: q.RecordFilter) -> str:
    if args.question == "trace":
        return f"trace {where.trace_id}"
    if args.question == "session":
        return f"session {where.session_id}"
    return where.describe()


def _notice(result: q.QueryResult, fmt: str, which: str, what: str) -> None:
    """Say that rows were cut at --limit and how many more match: in the table, else on stderr (data stays clean)."""
    problems = 0
    if "problems" in result.columns:
        i = result.columns.index("problems")
        problems = sum(1 for row in result.rows if row[i])
    lines = []
    if result.more:
        lines.append(
            f"showing the {which} {len(result.rows):,} of {result.total:,} matching {what}: {result.more:,} more "
            "match (raise --limit or narrow the filters)"
        )
    if problems:
        lines.append(
            f"{problems:,} of the rows shown are problem records (see the problems column; --problems lists only those)"
        )
    stream = sys.stdout if fmt in ("table", "timeline") else sys.stderr
    for line in lines:
        stream.write(f"({line})\n" if stream is sys.stdout else f"otel-audit query: {line}\n")


def _run_failures(args: argparse.Namespace) -> int:
    fmt = _get(args, "format", "table")
    if fmt == "timeline":
        raise UsageError(
            "failures counts attempts per actor: --format timeline is for records "
            "(try `otel-audit query --actor ID --result denied --format timeline`)"
        )
    window_text = _get(args, "window", "24h")
    try:
        window = q.parse_duration(window_text)
    except ValueError as exc:
        raise UsageError(f"--window: {exc}") from None
    if _get(args, "window") is not None and (_get(args, "since") is not None or _get(args, "until") is not None):
        raise UsageError("give either --window or --since/--until, not both")
    until = _time(args, "until", None, end=True)
    since = _time(args, "since", None, now=until)
    for unsupported in ("f_actor", "f_rtype", "f_rid", "f_session", "f_trace", "f_results", "f_chain", "problems"):
        if _get(args, unsupported) not in (None, [], False):
            flag = {
                "f_actor": "--actor",
                "f_rtype": "--resource-type",
                "f_rid": "--resource-id",
                "f_session": "--session",
                "f_trace": "--trace",
                "f_results": "--result",
                "f_chain": "--chain",
                "problems": "--problems",
            }[unsupported]
            raise UsageError(
                f"failures does not take {flag} (it counts failed and denied attempts per actor; it "
                "takes --since/--until or --window, --service, --action, --threshold)"
            )
    with connect(args) as conn:
        try:
            result = q.failed_attempts(
                conn,
                window=window,
                threshold=_get(args, "threshold", 5),
                since=since,
                until=until,
                services=_get(args, "f_services", []),
                actions=_get(args, "f_actions", []),
                limit=_get(args, "limit", 1000),
            )
        except q.MissingTablesError:
            raise
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    render(result.columns, result.rows, fmt)
    _notice(result, fmt, "first", "actors")
    return EXIT_OK
