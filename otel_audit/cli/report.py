"""``otel-audit report`` and ``otel-audit evidence``: what an auditor takes away.

Exit codes, as ``verify``: 0 written and the trail intact, 1 written but the
verification found an integrity failure (or, with ``--strict``, a warning),
2 usage, configuration or connection error (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from otel_audit.cli.common import EXIT_OK, UsageError, add_dsn, connect
from otel_audit.cli.output import json_text, write_line
from otel_audit.query import RESULTS, RecordFilter, parse_duration, parse_time

if TYPE_CHECKING:
    from otel_audit.report import ReportOptions

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="write the auditor's report of a period: one self-contained HTML page (or JSON)",
        description="Verify the whole trail and describe a period: the verdict with every check and finding, "
        "coverage (chains, services, gaps, quarantined and problem records), activity charts, failed attempts per "
        "actor above a threshold, timelines, a control mapping (evidence, not a certification) and the commands "
        "to re-run every check. The HTML page loads nothing from the network and runs no script. Exit 0 intact, "
        "1 integrity failure, 2 error.",
    )
    _common(report)
    report.add_argument("--out", default=None, metavar="FILE", help="write here (default: standard output)")
    report.add_argument(
        "--format",
        choices=("html", "json"),
        default=None,
        help="html or json (default: from --out's suffix, else html)",
    )
    report.set_defaults(handler=run_report)

    evidence = sub.add_parser(
        "evidence",
        help="write an evidence pack: the report, record proofs, checkpoints, keys, offline instructions",
        description="Write one zip file for an auditor: the report of the period, a record proof for each record "
        "the selection matches (--actor, --resource-type/--resource-id, --action, --result, --service; default: "
        "the period's denied and failed records; with --trace or --session: every record of those traces and "
        "sessions, whose timelines the report then shows), the signed checkpoints and public keys the "
        "proofs rest on, archive manifests (--archive), and a README saying how to check it all offline. "
        "Exit 0 intact, 1 integrity failure, 2 error.",
    )
    _common(evidence)
    evidence.add_argument("--out", required=True, type=Path, metavar="PACK.zip", help="the zip file to write")
    group = evidence.add_argument_group(
        "records to prove",
        "default: the period's denied and failed records; with --trace/--session: all records of those",
    )
    group.add_argument("--actor", default=None, metavar="ID")
    group.add_argument("--resource-type", default=None, metavar="TYPE")
    group.add_argument("--resource-id", default=None, metavar="ID")
    group.add_argument("--action", action="append", default=[], metavar="ACTION", help="repeatable")
    group.add_argument("--result", action="append", default=[], choices=RESULTS, help="repeatable")
    group.add_argument("--service", action="append", default=[], metavar="NAME", help="repeatable")
    group.add_argument("--all-results", action="store_true", help="prove records of every result, not only failures")
    group.add_argument("--limit", type=_positive, default=100, help="prove at most this many records (default 100)")
    evidence.add_argument(
        "--archive", default=None, metavar="DIR|s3://BUCKET/PREFIX", help="an archive whose signed manifests to include"
    )
    evidence.set_defaults(handler=run_evidence)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    add_dsn(parser)
    parser.add_argument(
        "--since",
        default="30d",
        help="start of the period: 30d, 24h, ... back from now, an ISO date or time (default 30d)",
    )
    parser.add_argument(
        "--until",
        default=None,
        help="end of the period (excluded): an ISO time, or a date meaning the end of that day (default: now)",
    )
    parser.add_argument(
        "--threshold",
        type=_not_negative,
        default=5,
        help="list actors with more failed or denied attempts than this (default 5, the seed's)",
    )
    parser.add_argument("--top", type=_positive, default=10, help="actors, resources, actions charted (default 10)")
    parser.add_argument(
        "--trace", action="append", default=[], metavar="TRACE_ID", help="add the timeline of this trace (repeatable)"
    )
    parser.add_argument(
        "--session",
        dest="sessions",
        action="append",
        default=[],
        metavar="SESSION_ID",
        help="add the timeline of this session (repeatable)",
    )
    parser.add_argument("--strict", action="store_true", help="warnings fail too (exit 1), as verify --strict")
    parser.add_argument("--workers", type=_positive, default=None, metavar="N", help="as verify --workers")
    group = parser.add_argument_group(
        "signed checkpoints", "as for verify: trust only these public keys and witnesses, never the database's"
    )
    group.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="PATH.pub",
        help="public key whose checkpoints are trusted (repeatable)",
    )
    group.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="DIR",
        help="witness directory to compare the database with (repeatable; needs --trusted-key)",
    )
    group.add_argument(
        "--max-unanchored-age",
        default=None,
        metavar="DURATION",
        help="fail when records after a chain's newest checkpoint are older than this",
    )


def _report_options(args: argparse.Namespace) -> ReportOptions:
    from otel_audit.core.keys import load_trusted_keys
    from otel_audit.report import ReportOptions
    from otel_audit.witness import DirectoryWitness

    now = datetime.now(timezone.utc)
    # The default end is now, rounded up to a whole second (a readable period that still takes in
    # the records written during the current second; the end is excluded).
    end = now.replace(microsecond=0) + timedelta(seconds=1 if now.microsecond else 0)
    try:
        until = parse_time(args.until, end=True, now=now) if args.until else end
        since = parse_time(args.since, now=until) if args.since else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if since is not None and until is not None and since >= until:
        raise UsageError(f"the period is empty: --since {since.isoformat()} is not before --until {until.isoformat()}")
    if args.witness and not args.trusted_key:
        raise UsageError(
            "--witness needs --trusted-key: without trusted keys nothing read from the witness can be authenticated"
        )
    age = None
    if args.max_unanchored_age is not None:
        try:
            age = parse_duration(args.max_unanchored_age).total_seconds()
        except ValueError as exc:
            raise UsageError(f"--max-unanchored-age: {exc}") from None
    for trace in args.trace:
        try:
            RecordFilter(trace_id=trace).validate()
        except ValueError as exc:
            raise UsageError(f"--trace: {exc}") from None
    return ReportOptions(
        since=since,
        until=until,
        trusted_keys=load_trusted_keys(args.trusted_key) if args.trusted_key else None,
        trusted_key_files=list(args.trusted_key),
        witnesses=[DirectoryWitness(path, create=False) for path in args.witness],
        witness_dirs=list(args.witness),
        max_unanchored_age=age,
        now=now,
        strict=args.strict,
        threshold=args.threshold,
        top=args.top,
        traces=list(args.trace),
        sessions=list(args.sessions),
        workers=args.workers,
    )


def run_report(args: argparse.Namespace) -> int:
    from otel_audit.report import build_report, render_html

    options = _report_options(args)
    fmt = args.format or ("json" if args.out and args.out.endswith(".json") else "html")
    with connect(args) as conn:
        report = build_report(conn, options)
    data = (json_text(report) + "\n").encode() if fmt == "json" else render_html(report).encode("utf-8")
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(out)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    v = report["verification"]
    write_line(
        f"{v['verdict']}: {v['records']:,} records in {v['chains_verified']} chain(s), {v['errors']} error(s), "
        f"{v['warnings']} warning(s); period {report['period']['since']} to {report['period']['until']}: "
        f"{report['activity']['records']:,} records"
        + (f"; {fmt} report written to {args.out} ({len(data):,} bytes)" if args.out else ""),
        sys.stderr,
    )
    return v["exit_code"] or EXIT_OK


def run_evidence(args: argparse.Namespace) -> int:
    from otel_audit.report.evidence import EvidenceOptions, write_evidence_pack

    options = _report_options(args)
    stories = [("trace", t) for t in options.traces] + [("session", s) for s in options.sessions]
    results = list(args.result) or ([] if args.all_results or stories else ["failure", "denied"])
    common = dict(
        actor_id=args.actor,
        resource_type=args.resource_type,
        resource_id=args.resource_id,
        actions=args.action,
        results=results,
        services=args.service,
    )
    if stories:  # the records of each trace and session, whenever they were written
        selections = [
            RecordFilter(**common, trace_id=value) if kind == "trace" else RecordFilter(**common, session_id=value)
            for kind, value in stories
        ]
    else:
        selections = [RecordFilter(**common, since=options.since, until=options.until)]
    try:
        for selection in selections:
            selection.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with connect(args) as conn:
        summary = write_evidence_pack(
            conn,
            args.out,
            EvidenceOptions(
                report=options,
                selections=selections,
                limit=args.limit,
                trusted_key_files=list(args.trusted_key),
                archive=args.archive,
            ),
        )
    write_line(
        f"{summary.verdict}: evidence pack {summary.path} ({summary.files} files, sha256 {summary.sha256}): "
        f"{summary.proofs} record proof(s) of {summary.records} chosen ({summary.matching} matched "
        f"{summary.selection}), {summary.checkpoints} checkpoint(s), "
        f"{summary.keys} key(s), {summary.archive_manifests} archive manifest(s)",
        sys.stderr,
    )
    reasons: dict[str, list[str]] = {}
    for item in summary.unproven:
        reasons.setdefault(item["reason"], []).append(item["record"])
    for reason, records in reasons.items():
        which = records[0] if len(records) == 1 else f"{len(records)} records ({records[0]}, ...)"
        write_line(f"  no proof for {which}: {reason}", sys.stderr)
    if summary.archive_note:
        write_line(f"  archive: {summary.archive_note}", sys.stderr)
    return summary.exit_code or EXIT_OK
