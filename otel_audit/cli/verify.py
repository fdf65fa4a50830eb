"""``otel-audit verify``: check the whole trail; exit 0 intact, 1 integrity failure, 2 error."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from otel_audit.cli.common import EXIT_OK, Deferred, UsageError, add_dsn, connect
from otel_audit.cli.output import print_json, write_line
from otel_audit.query import parse_duration

if TYPE_CHECKING:
    from otel_audit.verify import VerificationReport, VerifyOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "verify",
        help="verify hashes, links and columns of every chain",
        description="Recompute every record hash from the stored bytes, check that the queryable columns "
        "match them, and walk every chain's sequence numbers and links. Exit 0 intact, 1 integrity "
        "failure, 2 usage or connection error.",
    )
    add_dsn(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--chain", action="append", metavar="CHAIN_ID", help="only this chain (repeatable)")
    parser.add_argument("--strict", action="store_true", help="also fail (exit 1) on warnings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    workers = parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that check chains in parallel (default: one per CPU, up to 8, from %(parallel_from)s "
        "records; 1: this process only)",
    )
    # argparse fills the help in from the action's attributes: the number is looked up only for --help.
    workers.parallel_from = Deferred(  # type: ignore[attr-defined]
        "otel_audit.verify.database", "PARALLEL_FROM", spec=","
    )
    parser.add_argument(
        "--archive",
        metavar="DEST",
        help="the archive `retention apply` moved records to (directory or s3://BUCKET/PREFIX): hold each "
        "retention checkpoint's claims to its signed manifests, and name the bundle where each chain's live "
        "records begin (the bundles themselves are checked by verify-archive)",
    )
    _add_anchoring_arguments(parser)
    parser.set_defaults(handler=run)


def _add_anchoring_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "signed checkpoints",
        "Trust only these public keys and witnesses, never keys or verdicts stored in the database.",
    )
    group.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="PATH.pub",
        help="public key whose checkpoints are trusted (repeatable, for rotated keys). With it, every chain "
        "must be anchored by a checkpoint one of these keys signed",
    )
    group.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="DIR",
        help="witness directory or s3://BUCKET/PREFIX to compare the database with (repeatable; needs --trusted-key)",
    )
    group.add_argument(
        "--max-unanchored-age",
        default=None,
        metavar="DURATION",
        help="fail when records after a chain's newest checkpoint are older than this (e.g. 60s, 5m); "
        "default: report them without failing",
    )


def _configure_anchoring(args: argparse.Namespace, options: VerifyOptions) -> None:
    if args.witness and not args.trusted_key:
        raise UsageError(
            "--witness needs --trusted-key: without trusted keys nothing read from the witness can be "
            "authenticated. Pass the emitters' public keys (the .pub files from `otel-audit keygen`)"
        )
    from otel_audit.core.keys import load_trusted_keys
    from otel_audit.witness_s3 import open_witness

    if args.trusted_key:
        options.trusted_keys = load_trusted_keys(args.trusted_key)
    options.witnesses = [open_witness(spec, for_reading=True) for spec in args.witness]
    if args.max_unanchored_age is not None:
        try:
            options.max_unanchored_age = parse_duration(args.max_unanchored_age).total_seconds()
        except ValueError as exc:
            raise UsageError(f"--max-unanchored-age: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from otel_audit.verify import VerifyOptions, verify_database

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    options = VerifyOptions(chain_ids=args.chain, progress=False if args.no_progress else None, workers=args.workers)
    _configure_anchoring(args, options)
    if args.archive:
        from otel_audit.archive.store import open_store

        options.archive = open_store(args.archive, require_lock=False)
    with connect(args) as conn:
        report = verify_database(conn, options)
    if args.json:
        print_json(report.to_dict())
    else:
        print_text(report)
    code = report.exit_code(strict=args.strict)
    return code if code else EXIT_OK


def print_text(report: VerificationReport, out: TextIO | None = None) -> None:
    from otel_audit.verify.report import Severity

    out = out if out is not None else sys.stdout  # looked up per call: sys.stdout may have been replaced
    for finding in report.findings:
        write_line(str(finding), out)  # details quote stored values: escaped, never raw
    verdict = "INTACT" if report.ok else "INTEGRITY FAILURE"
    errors = len(report.errors)
    warnings = len([f for f in report.findings if f.severity is Severity.WARNING])
    write_line(
        f"{verdict}: {report.records} records in {len(report.chains)} chain(s), {errors} error(s), "
        f"{warnings} warning(s); checked {', '.join(report.checks)} "
        f"in {report.duration_seconds:.2f}s ({report.records_per_second:,.0f} records/s)",
        out,
    )
