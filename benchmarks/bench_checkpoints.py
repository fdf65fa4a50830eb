"""What signed checkpoints cost: durable throughput with and without a signing key, in one run.

Each round starts a fresh schema and an ``otel_audit.configure()`` pipeline,
logs ``--records`` audit records from each of ``--threads`` threads through
plain ``logging`` calls, and stops the clock when every record is committed
to PostgreSQL (``flush()``). Rounds alternate between "off" (no key) and "on"
(a signing key and a witness directory, default checkpoint settings: every
1,000 records and every 10 seconds), so drift of the machine hits both alike.
It then times ``verify`` on the last "on" database without and with the
trusted key and witness.

Database: ``$OTEL_AUDIT_BENCH_DSN`` (a server you own; schemas are created and
dropped), else an embedded PostgreSQL (pgserver) in a temporary directory.

    python benchmarks/bench_checkpoints.py [--records 25000] [--threads 4] [--rounds 4]

Prints times and ratios; asserts nothing (timings belong to a quiet machine,
not to the test suite). Target: checkpoints cost at most 5% of throughput.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.resources import Resource
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import otel_audit
from otel_audit.core.keys import generate_signing_key, load_trusted_keys, write_keypair
from otel_audit.sink.schema import migrate
from otel_audit.verify import VerifyOptions, verify_database
from otel_audit.witness import DirectoryWitness

ATTRS = {
    "audit.action": "read",
    "audit.actor.id": "user-123",
    "audit.actor.type": "user",
    "audit.resource.type": "patient_record",
    "audit.resource.id": "patient-456",
    "audit.result": "success",
    "client.address": "10.1.2.3",
}


def new_schema(admin_dsn: str) -> tuple[str, str]:
    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    dsn = make_conninfo(admin_dsn, options=f"-c search_path={schema}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    return schema, dsn


def drop_schema(admin_dsn: str, schema: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def one_round(dsn: str, work: Path, *, signed: bool, key_path: Path, threads: int, records: int) -> dict:
    provider = LoggerProvider(resource=Resource.create({"service.name": "bench"}), shutdown_on_exit=False)
    options = {}
    witness = work / f"witness-{uuid.uuid4().hex[:6]}"
    if signed:
        options = {"signing_key": str(key_path), "witness_dir": str(witness)}
    audit = otel_audit.configure(
        dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        spool_dir=work / f"spool-{uuid.uuid4().hex[:6]}",
        **options,
    )
    logger = logging.Logger(f"bench.{uuid.uuid4().hex[:6]}", level=logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=provider))
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(records):
            logger.info("patient record viewed", extra=ATTRS)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    cpu_started = time.process_time()
    for t in pool:
        t.join()
    logged = time.perf_counter() - started
    committed = audit.flush(timeout=600)
    durable = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    stats = audit.stats()
    audit.shutdown(timeout=120)
    provider.shutdown()
    total = threads * records
    return {
        "signed": signed,
        "committed": committed,
        "durable_rps": total / durable,
        "logging_rps": total / logged,
        "cpu_us": cpu / total * 1e6,  # this process's CPU (all its threads) per record: less sensitive to noise
        "checkpoints": stats["checkpoints"],
        "witness": witness if signed else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=25_000, help="records per thread per round")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per configuration (alternating)")
    args = parser.parse_args()
    logging.getLogger("otel_audit").setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="otel-audit-bench-"))
    embedded = None
    admin_dsn = os.environ.get("OTEL_AUDIT_BENCH_DSN")
    if not admin_dsn:
        from otel_audit.embedded import EmbeddedPostgres

        os.chmod(work, 0o755)
        embedded = EmbeddedPostgres(work / "pg")
        admin_dsn = embedded.dsn()
    key_path = work / "signing"
    write_keypair(generate_signing_key(), key_path)
    print(
        f"database: {'embedded pgserver' if embedded else 'OTEL_AUDIT_BENCH_DSN'}; "
        f"{args.threads} threads x {args.records:,} records per round, {args.rounds} rounds each, alternating"
    )
    results: dict[bool, list[dict]] = {False: [], True: []}
    last_signed: tuple[str, Path] | None = None
    schemas = []
    try:
        for i in range(2 * args.rounds):
            signed = bool(i % 2)
            schema, dsn = new_schema(admin_dsn)
            schemas.append(schema)
            r = one_round(dsn, work, signed=signed, key_path=key_path, threads=args.threads, records=args.records)
            results[signed].append(r)
            print(
                f"  round {i + 1:2}  {'checkpoints' if signed else 'no key     '}  durable {r['durable_rps']:>9,.0f} rec/s"
                f"  logging {r['logging_rps']:>9,.0f} rec/s  cpu {r['cpu_us']:5.1f} us/rec  checkpoints {r['checkpoints']:>4}"
                f"{'' if r['committed'] else '  (NOT all committed)'}"
            )
            if signed:
                last_signed = (dsn, r["witness"])
        off = statistics.median(r["durable_rps"] for r in results[False])
        on = statistics.median(r["durable_rps"] for r in results[True])
        off_log = statistics.median(r["logging_rps"] for r in results[False])
        on_log = statistics.median(r["logging_rps"] for r in results[True])
        print(
            f"durable throughput, median: without key {off:,.0f} rec/s, with checkpoints {on:,.0f} rec/s: "
            f"ratio {on / off:.3f} (cost {100 * (1 - on / off):+.1f}%; target <= 5%)"
        )
        print(
            f"logging-call throughput, median: without {off_log:,.0f}, with {on_log:,.0f}: ratio {on_log / off_log:.3f}"
        )
        off_cpu = statistics.median(r["cpu_us"] for r in results[False])
        on_cpu = statistics.median(r["cpu_us"] for r in results[True])
        print(
            f"process CPU per record, median: without {off_cpu:.2f} us, with {on_cpu:.2f} us: "
            f"{100 * (on_cpu / off_cpu - 1):+.1f}% (the application's own cost; the machine's load moves it less)"
        )

        assert last_signed is not None
        dsn, witness = last_signed
        keys = load_trusted_keys([key_path.with_name(key_path.name + ".pub")])
        timings = {"plain": [], "anchored": []}
        for _ in range(3):
            for name, options in (
                ("plain", VerifyOptions(progress=False)),
                (
                    "anchored",
                    VerifyOptions(
                        progress=False, trusted_keys=keys, witnesses=[DirectoryWitness(witness, create=False)]
                    ),
                ),
            ):
                with psycopg.connect(dsn) as conn:
                    report = verify_database(conn, options)
                timings[name].append(report.records_per_second)
                if not report.ok:
                    print(f"  verify ({name}) found errors: {[str(f) for f in report.errors][:3]}")
        plain = statistics.median(timings["plain"])
        anchored = statistics.median(timings["anchored"])
        print(
            f"verify, median of 3: plain {plain:,.0f} rec/s, with --trusted-key and --witness {anchored:,.0f} rec/s "
            f"(ratio {anchored / plain:.3f})"
        )
    finally:
        for schema in schemas:
            try:
                drop_schema(admin_dsn, schema)
            except psycopg.Error:
                pass
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
