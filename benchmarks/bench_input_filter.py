"""What otel-audit's input filter (``otel_audit.AuditInputFilter``) costs per ``logging`` call.

Two handlers on the same LoggerProvider (otel-audit's processor, a BatchLogRecordProcessor
with a no-op exporter, the sink writing to a real PostgreSQL), one with the filter and one
without, called in alternating rounds: an ordinary audit record, the same with
``audit.old_values``, a non-audit record. Time is the calling thread's CPU time
(``time.thread_time``), so that a busy shared machine inflates it less than wall time; the
sink's own thread is not counted (the filter does not change its work).

    python benchmarks/bench_input_filter.py [--calls 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

import otel_audit
from benchmarks.bench_hot_path import NoopExporter, make_logger
from benchmarks.common import AUDIT_EXTRA, fresh_schema, median, report, where


def cpu_timed(logger: logging.Logger, calls: int, extra: dict) -> float:
    info = logger.info
    start = time.thread_time()
    for _ in range(calls):
        info("patient record viewed", extra=extra)
    return (time.thread_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        fresh_schema(),
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
    )
    provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
    with_filter = make_logger(provider, "filtered", audit)
    without = make_logger(provider, "unfiltered")
    cases = {
        "audit record": AUDIT_EXTRA,
        "audit record with audit.old_values": {**AUDIT_EXTRA, "audit.old_values": {"dosage": "250mg", "n": 2}},
        "non-audit record": {"http.route": "/patients/{id}"},
    }
    for extra in cases.values():
        cpu_timed(with_filter, 2000, extra)
        cpu_timed(without, 2000, extra)
    audit.flush(60)

    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
    for round_no in range(args.rounds):
        for name, extra in cases.items():
            # Which handler goes first alternates: the sink writes the previous batch meanwhile.
            order = ((0, with_filter), (1, without)) if round_no % 2 == 0 else ((1, without), (0, with_filter))
            for index, logger in order:
                results[name][index].append(cpu_timed(logger, args.calls, extra))
            audit.flush(120)
    audit.shutdown()

    lines = []
    for name, (filtered, unfiltered) in results.items():
        f, u = median(filtered), median(unfiltered)
        lines.append(
            (name, f"{f:6.2f} us CPU/call with the filter, {u:6.2f} without: {f - u:+5.2f} us (ratio {f / u:.3f})")
        )
    report(f"input filter: {args.rounds} alternating rounds of {args.calls} calls, {where()}", lines)


if __name__ == "__main__":
    main()
