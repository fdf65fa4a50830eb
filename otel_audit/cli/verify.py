"""``otel-audit verify``: check the whole trail; exit 0 intact, 1 integrity failure, 2 error."""

from __future__ import annotations

import argparse
import sys

from otel_audit.cli.main import EXIT_OK, add_dsn, connect
from otel_audit.cli.output import print_json
from otel_audit.verify import VerificationReport, VerifyOptions, verify_database
from otel_audit.verify.report import Severity

#: Extension point: later layers (signed checkpoints) add arguments and checks.
EXTENSIONS: list = []


def register(sub: argparse._SubParsersAction) -> None:
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
    for extension in EXTENSIONS:
        extension.add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = VerifyOptions(chain_ids=args.chain, progress=False if args.no_progress else None)
    for extension in EXTENSIONS:
        extension.configure(args, options)
    with connect(args) as conn:
        report = verify_database(conn, options)
    if args.json:
        print_json(report.to_dict())
    else:
        print_text(report)
    code = report.exit_code(strict=args.strict)
    return code if code else EXIT_OK


def print_text(report: VerificationReport, out=None) -> None:  # noqa: ANN001
    out = out if out is not None else sys.stdout  # looked up per call: sys.stdout may have been replaced
    for finding in report.findings:
        print(str(finding), file=out)
    verdict = "INTACT" if report.ok else "INTEGRITY FAILURE"
    errors = len(report.errors)
    warnings = len([f for f in report.findings if f.severity is Severity.WARNING])
    print(
        f"{verdict}: {report.records} records in {len(report.chains)} chain(s), {errors} error(s), "
        f"{warnings} warning(s); checked {', '.join(report.checks)} "
        f"in {report.duration_seconds:.2f}s ({report.records_per_second:,.0f} records/s)",
        file=out,
    )
