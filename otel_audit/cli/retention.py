"""``otel-audit retention apply|hold|release|holds``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from otel_audit import settings
from otel_audit.cli.common import EXIT_INTEGRITY, EXIT_OK, UsageError, add_dsn, connect
from otel_audit.cli.output import print_json, render

if TYPE_CHECKING:
    from datetime import datetime

    from otel_audit.archive.retention import RetentionPlan
    from otel_audit.core.retention import RetentionCheckpoint


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("retention", help="remove archived partitions from PostgreSQL; legal holds")
    rsub = parser.add_subparsers(dest="retention_command", metavar="ACTION", required=True)

    apply = rsub.add_parser(
        "apply",
        help="drop partitions older than the policy whose every record is in a verified archive",
        description="Remove from PostgreSQL the monthly partitions of audit_logs older than the policy's hot "
        "window, only when the archive verifies and holds every record of them, and none is under a legal hold; "
        "a signed retention checkpoint records what went where. Exit 0 done (or nothing due), 1 the archive does "
        "not verify (nothing removed), 2 error.",
    )
    add_dsn(apply)
    apply.add_argument(
        "--policy",
        required=True,
        metavar="POLICY",
        help="pci-dss (3 months in PostgreSQL), hipaa (1 year), soc2 (1 year), or a number of days",
    )
    apply.add_argument("--archive", required=True, metavar="DEST", help="the archive (directory or s3://BUCKET/PREFIX)")
    apply.add_argument(
        "--trusted-key",
        action="append",
        required=True,
        metavar="PATH.pub",
        help="keys trusted for the archive's manifests and the checkpoints (repeatable)",
    )
    apply.add_argument(
        "--signing-key", metavar="PATH", help="signs the retention checkpoint (default: $OTEL_AUDIT_SIGNING_KEY)"
    )
    apply.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    apply.add_argument("--json", action="store_true", help="print the plan as JSON")
    apply.set_defaults(handler=run_apply)

    hold = rsub.add_parser("hold", help="place a legal hold: retention never removes what it covers")
    add_dsn(hold)
    subject = hold.add_mutually_exclusive_group(required=True)
    subject.add_argument("--chain", metavar="CHAIN_ID")
    subject.add_argument("--actor", metavar="ACTOR_ID")
    subject.add_argument("--from", dest="from_", metavar="TIME", help="with --to: a time range")
    hold.add_argument("--to", metavar="TIME")
    hold.add_argument("--reason", required=True, help="case number, matter, who asked")
    hold.set_defaults(handler=run_hold)

    release = rsub.add_parser("release", help="release a legal hold (recorded, never deleted)")
    add_dsn(release)
    release.add_argument("hold_id", type=int)
    release.add_argument("--reason", required=True)
    release.set_defaults(handler=run_release)

    listing = rsub.add_parser("holds", help="list legal holds")
    add_dsn(listing)
    listing.add_argument("--all", action="store_true", help="released ones too")
    listing.add_argument("--format", choices=("table", "json", "csv"), default="table")
    listing.set_defaults(handler=run_holds)


def run_apply(args: argparse.Namespace) -> int:
    from otel_audit.archive.retention import apply_retention, parse_policy, plan_retention
    from otel_audit.archive.store import open_store
    from otel_audit.core.keys import load_signing_key, load_trusted_keys

    try:
        policy = parse_policy(args.policy)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    key = None
    if not args.dry_run:
        key_path = args.signing_key or settings.SIGNING_KEY.get()
        if not key_path:
            raise UsageError(
                "the retention checkpoint must be signed: pass --signing-key PATH (or set "
                "OTEL_AUDIT_SIGNING_KEY), or use --dry-run"
            )
        key = load_signing_key(key_path)
    keys = load_trusted_keys(args.trusted_key)
    store = open_store(args.archive, require_lock=False)
    with connect(args) as conn:
        plan = plan_retention(conn, store, keys, policy)
        checkpoint = None
        if not args.dry_run and plan.archive_ok and plan.removable:
            checkpoint = apply_retention(conn, plan, key)  # type: ignore[arg-type]
    if args.json:
        data = plan.to_dict()
        data["dry_run"] = args.dry_run
        data["retention_checkpoint"] = checkpoint.n if checkpoint else None
        print_json(data)
    else:
        _print_plan(plan, args.dry_run, checkpoint)
    if plan.archive is not None and not plan.archive.ok:
        return EXIT_INTEGRITY
    return EXIT_OK


def _print_plan(plan: RetentionPlan, dry_run: bool, checkpoint: RetentionCheckpoint | None) -> None:
    out = sys.stdout
    print(
        f"policy {plan.policy.name}: partitions that ended before {plan.cutoff:%Y-%m-%d %H:%M} UTC may leave "
        f"PostgreSQL ({plan.policy.source})",
        file=out,
    )
    if plan.archive is not None and not plan.archive.ok:
        print(
            f"the archive {plan.archive_url} does NOT verify ({len(plan.archive.errors)} error(s)); nothing is "
            "removed:",
            file=out,
        )
        for finding in plan.archive.errors[:20]:
            print(f"  {finding}", file=out)
        return
    if not plan.partitions:
        print("no partition is old enough; nothing to remove", file=out)
    verb = "would remove" if dry_run else "removed"
    for part in plan.partitions:
        if part.removable:
            print(
                f"  {verb:12} {part.name}: {part.rows:,} records, {part.bytes / 1048576:,.1f} MiB "
                f"(archived in run {plan.run} or earlier)",
                file=out,
            )
        else:
            print(
                f"  {'kept':12} {part.name}: "
                + "; ".join(part.blocked[:5])
                + (f" (+{len(part.blocked) - 5} more)" if len(part.blocked) > 5 else ""),
                file=out,
            )
    if plan.kept_default_rows:
        print(
            f"  {'kept':12} audit_logs_default: {plan.kept_default_rows:,} records older than the cutoff have "
            "no partition of their own (run `otel-audit db maintain`); the default partition is never removed",
            file=out,
        )
    if checkpoint is not None:
        print(
            f"retention checkpoint {checkpoint.n} signed by key {checkpoint.key_id} (sha256 {checkpoint.hash})",
            file=out,
        )


def _time(text: str | None) -> datetime | None:
    from otel_audit.cli.archive import parse_when

    return parse_when(text) if text else None


def run_hold(args: argparse.Namespace) -> int:
    from otel_audit.sink.retention import add_hold

    if (args.from_ is None) != (args.to is None):
        raise UsageError("a time-range hold needs both --from and --to")
    with connect(args) as conn:
        hold_id = add_hold(
            conn,
            reason=args.reason,
            chain_id=args.chain,
            actor_id=args.actor,
            from_ts=_time(args.from_),
            to_ts=_time(args.to),
        )
    print(f"legal hold {hold_id} placed; `otel-audit retention release {hold_id} --reason ...` lifts it")
    return EXIT_OK


def run_release(args: argparse.Namespace) -> int:
    from otel_audit.sink.retention import release_hold

    with connect(args) as conn:
        release_hold(conn, args.hold_id, reason=args.reason)
    print(f"legal hold {args.hold_id} released")
    return EXIT_OK


def run_holds(args: argparse.Namespace) -> int:
    from otel_audit.sink.retention import holds

    with connect(args) as conn:
        found = holds(conn, active_only=not args.all)
    render(
        ["id", "chain_id", "actor_id", "from", "to", "reason", "created_at", "created_by"],
        [(h.id, h.chain_id, h.actor_id, h.from_ts, h.to_ts, h.reason, h.created_at, h.created_by) for h in found],
        args.format,
    )
    return EXIT_OK
