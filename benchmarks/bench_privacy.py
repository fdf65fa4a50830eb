"""(g) Cost of each privacy protection on the hot path, as a ratio to the plain audit call in the same run.

Every row is an audit ``logging`` call through the full pipeline (LoggingHandler with the
input filter, the otel-audit processor, spool, sink to a real PostgreSQL, a
BatchLogRecordProcessor with a no-op exporter). All rows share one pipeline; between rounds
only the processor's privacy policy changes. Rounds alternate, medians are reported. The reference row is the same
audit call with every privacy protection off. The record is the usual one (an actor
reading a patient record) plus old values and a user agent, so that every protection has
something to do; a second redaction row carries a bearer token and a card number.

    python benchmarks/bench_privacy.py [--calls 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

import psycopg
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

import otel_audit
from benchmarks.bench_hot_path import NoopExporter
from benchmarks.common import AUDIT_EXTRA, fresh_schema, median, report, where
from otel_audit.privacy import PrivacyPolicy, privacy_policy
from otel_audit.privacy.keystore import init_keystore
from otel_audit.privacy.pseudonym import new_key_line

EXTRA = {
    **AUDIT_EXTRA,
    "audit.old_values": {"dose": "5mg", "ward": "B"},
    "user_agent.original": "curl/8.5",
    "session.id": "s-1",
}
SECRET_EXTRA = {**EXTRA, "upstream.header": "Bearer mF_9.B5f-4.1JqM8xZ3kP0q", "payment.card": "4111111111111111"}


def timed(logger: logging.Logger, calls: int, extra: dict) -> float:
    info = logger.info
    start = time.perf_counter()
    for _ in range(calls):
        info("patient record viewed", extra=extra)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    dsn = fresh_schema()
    keystore = fresh_schema(init=False)
    with psycopg.connect(keystore, autocommit=True) as conn:
        init_keystore(conn)
    keys = Path(tempfile.mkdtemp(prefix="otel-audit-bench-keys-"))
    (keys / "ring").write_text(new_key_line("p1"))
    (keys / "master").write_text(new_key_line("m1"))

    # One pipeline (one sink thread, one spool) for every row: between rounds only the processor's policy
    # changes, so the rows differ by the protections and nothing else.
    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
        redact=False,
    )
    provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
    logger = logging.Logger("bench-privacy", level=logging.INFO)
    logger.addHandler(audit.protect(LoggingHandler(logger_provider=provider)))
    env: dict[str, str] = {}
    encrypting = {"keystore_dsn": keystore, "master_key": keys / "master"}
    rows: dict[str, tuple[PrivacyPolicy, dict]] = {
        "audit call, privacy off (reference)": (privacy_policy(redact=False, env=env), EXTRA),
        "+ redaction (default), nothing found": (privacy_policy(env=env), EXTRA),
        "+ redaction, bearer token and card number": (privacy_policy(env=env), SECRET_EXTRA),
        "+ pseudonymization (actor, user, address, session)": (
            privacy_policy(redact=False, pseudonym_keys=keys / "ring", env=env),
            EXTRA,
        ),
        "+ encryption (old values, user agent; subject key cached)": (
            privacy_policy(redact=False, env=env, **encrypting),
            EXTRA,
        ),  # type: ignore[arg-type]
        "all three (redaction, pseudonyms, encryption)": (
            privacy_policy(pseudonym_keys=keys / "ring", env=env, **encrypting),
            EXTRA,
        ),  # type: ignore[arg-type]
    }
    processor = audit.processor
    for policy, extra in rows.values():  # warm up: imports, caches, the subject key, first segment
        processor.privacy = policy
        timed(logger, 2000, extra)
    audit.flush(60)

    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (policy, extra) in rows.items():
            processor.privacy = policy
            times[name].append(timed(logger, args.calls, extra))
            audit.flush(120)  # outside the timing
    audit.shutdown()

    medians = {name: median(values) for name, values in times.items()}
    reference = medians["audit call, privacy off (reference)"]
    report(
        f"privacy on the hot path: {args.rounds} alternating rounds of {args.calls} calls, {where()}",
        [
            (name, f"{value:6.2f} us/call   ratio {value / reference:.2f}  ({value - reference:+.2f} us)")
            for name, value in medians.items()
        ],
    )


if __name__ == "__main__":
    main()
