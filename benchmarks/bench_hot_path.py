"""(a) Cost of an audit ``logging`` call through the full pipeline, as a ratio to the same
call through plain OpenTelemetry with a BatchLogRecordProcessor (target: <= 1.3).

Both loggers use the instrumentation's LoggingHandler and a BatchLogRecordProcessor with a
no-op exporter; the audit one also runs otel-audit's input filter on its handler and the
otel-audit processor (validate, enrich, seal, spool, annotate) with its sink writing to a
real PostgreSQL. Two rows isolate the input filter: the same pipeline through a second
handler without it, in the same rounds. Rounds alternate; medians.
A last row bounds what any placement of the sink could give: the audit call while the
sink is stalled (it cannot reach PostgreSQL, so it does no work).

    python benchmarks/bench_hot_path.py [--calls 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

import otel_audit
from benchmarks.common import AUDIT_EXTRA, fresh_schema, median, report, where
from tests.pgproxy import PgProxy


class NoopExporter(LogRecordExporter):
    def export(self, batch):
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def make_logger(provider: LoggerProvider, name: str, audit: otel_audit.AuditHandle | None = None) -> logging.Logger:
    logger = logging.Logger(name, level=logging.INFO)
    handler = LoggingHandler(logger_provider=provider)
    if audit is not None:
        audit.protect(handler)  # what the docs tell an application that creates its own handler
    logger.addHandler(handler)
    return logger


def timed(logger: logging.Logger, calls: int, extra: dict) -> float:
    info = logger.info
    start = time.perf_counter()
    for _ in range(calls):
        info("patient record viewed", extra=extra)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    dsn = fresh_schema()
    plain_provider = LoggerProvider(shutdown_on_exit=False)
    plain_provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
    plain = make_logger(plain_provider, "plain")

    audit_provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        dsn,
        logger_provider=audit_provider,
        install_handler=False,
        metrics=False,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
    )
    audit_provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
    audited = make_logger(audit_provider, "audited", audit)
    # The same pipeline through a handler without otel-audit's input filter: what the filter costs.
    unfiltered = make_logger(audit_provider, "audited-unfiltered")

    # Warm up both paths (imports, caches, first segment).
    timed(plain, 2000, AUDIT_EXTRA)
    timed(audited, 2000, AUDIT_EXTRA)
    timed(unfiltered, 2000, AUDIT_EXTRA)
    audit.flush(60)

    non_audit = {"http.route": "/patients/{id}"}
    base, sealed, passthrough, sealed_nf, passthrough_nf = [], [], [], [], []
    for _ in range(args.rounds):
        base.append(timed(plain, args.calls, AUDIT_EXTRA))
        sealed.append(timed(audited, args.calls, AUDIT_EXTRA))
        sealed_nf.append(timed(unfiltered, args.calls, AUDIT_EXTRA))
        passthrough.append(timed(audited, args.calls, non_audit))
        passthrough_nf.append(timed(unfiltered, args.calls, non_audit))
        audit.flush(120)  # keep the spool from growing across rounds (outside the timing)
    audit.shutdown()
    base_stalled, stalled = sink_stalled_rounds(dsn, plain, args.calls, max(3, args.rounds // 3))

    b, s, p = median(base), median(sealed), median(passthrough)
    snf, pnf = median(sealed_nf), median(passthrough_nf)
    bs, st = median(base_stalled), median(stalled)
    report(
        f"hot path: {args.rounds} alternating rounds of {args.calls} calls, {where()}",
        [
            ("plain OTel + BatchLogRecordProcessor", f"{b:6.2f} us/call (baseline)"),
            ("with otel-audit, audit record", f"{s:6.2f} us/call   ratio {s / b:.2f}  (target <= 1.30)"),
            ("with otel-audit, non-audit record", f"{p:6.2f} us/call   ratio {p / b:.2f}"),
            ("sealing cost per audit call", f"{s - b:6.2f} us"),
            (
                "input filter: audit record",
                f"{s - snf:+6.2f} us/call  ratio {s / snf:.3f} to the same handler without it",
            ),
            ("input filter: non-audit record", f"{p - pnf:+6.2f} us/call  ratio {p / pnf:.3f}"),
            (
                "bound: audit record, sink stalled",
                f"{st:6.2f} us/call   ratio {st / bs:.2f}  (no sink placement can go below this)",
            ),
        ],
    )


def sink_stalled_rounds(dsn: str, plain: logging.Logger, calls: int, rounds: int) -> tuple[list[float], list[float]]:
    """The audit call while the sink cannot reach PostgreSQL (it does no work), alternating with the
    plain call: what the call would cost if the sink ran elsewhere for free."""
    proxy = PgProxy(dsn)
    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        proxy.dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
    )
    provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
    audited = make_logger(provider, "audited-stalled", audit)
    timed(audited, 2000, AUDIT_EXTRA)
    audit.flush(60)
    proxy.pause()
    base, stalled = [], []
    try:
        for _ in range(rounds):
            base.append(timed(plain, calls, AUDIT_EXTRA))
            stalled.append(timed(audited, calls, AUDIT_EXTRA))
    finally:
        proxy.resume()
        audit.shutdown(timeout=300)
        proxy.close()
    return base, stalled


if __name__ == "__main__":
    main()
