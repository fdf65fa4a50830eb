"""``otel-audit demo``: log a realistic workload, verify it, show what to look at next."""

from __future__ import annotations

import argparse
from pathlib import Path

from otel_audit.cli.common import EXIT_INTEGRITY, EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run a small instrumented workload end to end (embedded PostgreSQL unless --dsn)",
        description="Starts an embedded PostgreSQL in a local data directory (or uses --dsn), creates the "
        "schema, logs a multi-threaded workload with spans through plain logging calls, verifies the "
        "trail and prints the commands to explore it. The embedded server keeps running afterwards so "
        "those commands work; `otel-audit demo --stop` stops it.",
    )
    parser.add_argument("--dsn", default=None, help="use this PostgreSQL instead of the embedded one")
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded server data directory")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=250, help="requests per thread (default 250)")
    parser.add_argument("--stop", action="store_true", help="stop the embedded demo server and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from otel_audit.cli.verify import print_text
    from otel_audit.demo import next_steps, run_demo
    from otel_audit.embedded import EmbeddedPostgres, default_data_dir

    if args.stop:
        data_dir = args.data_dir or default_data_dir()
        if not (data_dir / "postmaster.pid").exists():
            print(f"no embedded demo server is running in {data_dir}")
            return EXIT_OK
        EmbeddedPostgres(data_dir, keep_running=True).stop()
        print(f"stopped the embedded PostgreSQL in {data_dir}")
        return EXIT_OK
    result = run_demo(args.dsn, data_dir=args.data_dir, threads=args.threads, requests_per_thread=args.requests)
    print()
    print_text(result.report)
    print()
    print("Next, try:")
    for line in next_steps(result):
        print(f"  {line}")
    print(
        "  and the seed's SQL, e.g.: SELECT actor_id, COUNT(*) FROM audit_logs WHERE result IN "
        "('failure','denied') GROUP BY actor_id;"
    )
    if result.embedded_data_dir is not None:
        print("  otel-audit demo --stop        # stop the embedded PostgreSQL when done")
    return EXIT_OK if result.report.ok else EXIT_INTEGRITY
