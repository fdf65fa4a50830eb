"""Archive: bytes per record in PostgreSQL and in the archive, archive and verify-archive speed.

    python benchmarks/bench_archive.py [--records 200000] [--rounds 3]

The same records, logged through ``otel_audit.configure()`` (4 threads, signed
checkpoints), are measured as stored by otel-audit in PostgreSQL (every
partition of audit_logs, indexes and TOAST included), as the seed's table
would store them (its DDL, its columns, the same values), and as an archive
(every file of the run: records, checkpoints, manifest, plan). Speeds are
records/s of ``archive`` and ``verify-archive``; the baseline measured in the
same run is reading the same Parquet bundles with no checks at all. Each
verify-archive run happens in a fresh process, as the CLI's does.
Targets (issue 11): archive <= 15 % of PostgreSQL's bytes per record;
verify-archive >= 300,000 records/s.
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider

import otel_audit
from benchmarks.bench_throughput import SEED_SCHEMA
from benchmarks.common import AUDIT_EXTRA, fresh_schema, median, report, where
from otel_audit.archive import DirectoryStore, archive_database, verify_archive
from otel_audit.core.keys import generate_signing_key, load_trusted_keys, write_keypair
from otel_audit.verify.parallel import default_workers

SEED_COLUMNS = (
    "id, timestamp, actor_id, actor_type, action, resource_type, resource_id, result, ip_address, "
    "session_id, reason, changed_fields, prev_hash, hash"
)


def populate(records: int, key_path: Path) -> str:
    dsn = fresh_schema()
    provider = LoggerProvider(shutdown_on_exit=False)
    audit = otel_audit.configure(
        dsn,
        logger_provider=provider,
        install_handler=False,
        metrics=False,
        signing_key=str(key_path),
        spool_dir=tempfile.mkdtemp(prefix="otel-audit-bench-spool-"),
    )
    logger = logging.Logger(f"bench.{uuid.uuid4().hex[:6]}", level=logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=provider))

    def work(k: int) -> None:
        for i in range(records // 4):
            extra = {
                **AUDIT_EXTRA,
                "audit.actor.id": f"user-{(k * 7919 + i) % 5000}",
                "audit.resource.id": f"patient-{(i * 31 + k) % 100000}",
                "client.address": f"10.{k}.{i % 250}.{i % 199}",
                "session.id": f"s-{k}-{i // 20}",
            }
            if i % 10 == 0:
                extra["audit.result"] = "denied"
                extra["audit.reason"] = "outside the care team"
            logger.info("patient record viewed", extra=extra)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    audit.shutdown(timeout=600)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_logs")
    return dsn


def postgres_bytes(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        size = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
            "WHERE i.inhparent = 'audit_logs'::regclass"
        ).fetchone()[0]
        count = conn.execute("SELECT count(*) FROM audit_logs").fetchone()[0]
    return int(size), int(count)


def seed_bytes(dsn: str) -> int:
    """The same values in the seed's table (its DDL and indexes)."""
    seed = fresh_schema(init=False)
    with psycopg.connect(seed, autocommit=True) as conn:
        conn.execute(SEED_SCHEMA)
        source_schema = psycopg.conninfo.conninfo_to_dict(dsn)["options"].split("=")[-1]
        conn.execute(f"INSERT INTO audit_logs ({SEED_COLUMNS}) SELECT {SEED_COLUMNS} FROM {source_schema}.audit_logs")
        conn.execute("VACUUM ANALYZE audit_logs")
        return int(conn.execute("SELECT pg_total_relation_size('audit_logs')").fetchone()[0])


def read_only(store: DirectoryStore) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    n = 0
    for path in store.list("records/"):
        table = pq.read_table(io.BytesIO(store.get(path)))
        n += len(table.column("canonical").cast(pa.binary()).to_pylist())
    return n / (time.perf_counter() - start)


def _verify_child(archive: str, public: str, workers: int, out: Any) -> None:
    store = DirectoryStore(Path(archive))
    cpu_start = time.process_time()
    rep = verify_archive(store, load_trusted_keys([public]), workers=workers)
    cpu = (time.process_time() - cpu_start) / max(rep.records, 1) * 1e6
    out.put((rep.ok, rep.records / rep.duration_seconds, cpu))


def verify_in_fresh_process(archive: Path, public: Path, workers: int) -> tuple[bool, float, float]:
    """One verify-archive run in a new process, as `otel-audit verify-archive` runs it: its workers are
    forked from a small, single-threaded parent. (Run from this process, after it populated the database
    and ran other rounds, forked workers start with a large inherited heap and measured up to 3x slower.)
    Timed by verify_archive itself (from its first listing to its report): interpreter start and imports
    are not counted."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_verify_child, args=(str(archive), str(public), workers, out))
    child.start()
    ok, rate, cpu = out.get(timeout=3600)
    child.join()
    return ok, rate, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-audit-bench-archive-"))
    key = generate_signing_key()
    key_path, public_path = write_keypair(key, tmp / "key")
    dsn = populate(args.records, key_path)
    pg_size, count = postgres_bytes(dsn)
    seed_size = seed_bytes(dsn)
    before = datetime.now(timezone.utc) + timedelta(days=1)
    archive_rates, archive_size, archived = [], 0, 0
    for round_ in range(args.rounds):
        dest = tmp / f"archive-{round_}"
        store = DirectoryStore(dest, create=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = time.perf_counter()
            result = archive_database(conn, store, before=before, key=key)
            archive_rates.append(result.records / (time.perf_counter() - start))
        archived = result.records
        archive_size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    store = DirectoryStore(tmp / "archive-0")
    base, single, full, cpu = [], [], [], []
    for _ in range(args.rounds):
        base.append(read_only(store))
        for workers, results in ((1, single), (default_workers(), full)):
            ok, rate, cpu_per_record = verify_in_fresh_process(tmp / "archive-0", public_path, workers)
            assert ok, "verify-archive found problems in an untouched archive"
            results.append(rate)
            if workers == 1:  # CPU time of that process (and Arrow's threads): what one core costs per record
                cpu.append(cpu_per_record)
    shutil.rmtree(tmp, ignore_errors=True)
    pg_per, seed_per, arch_per = pg_size / count, seed_size / count, archive_size / archived
    b, s, f, a = median(base), median(single), median(full), median(archive_rates)
    report(
        f"archive of {archived:,} records ({count:,} in PostgreSQL), {where()} (median of {args.rounds})",
        [
            ("PostgreSQL, otel-audit audit_logs (table + indexes)", f"{pg_per:7,.0f} bytes/record"),
            ("PostgreSQL, the seed's table, same records", f"{seed_per:7,.0f} bytes/record"),
            (
                "archive (Parquet bundles + checkpoints + manifest)",
                f"{arch_per:7,.0f} bytes/record   {arch_per / pg_per:.1%} of otel-audit's PostgreSQL, "
                f"{arch_per / seed_per:.1%} of the seed's  (target <= 15%)",
            ),
            ("otel-audit archive", f"{a:9,.0f} records/s"),
            ("read the bundles only (no checks)", f"{b:9,.0f} records/s (baseline)"),
            ("verify-archive --workers 1", f"{s:9,.0f} records/s   {s / b:.2f} of the read rate"),
            (
                "verify-archive CPU time per record (one process)",
                f"{median(cpu):9.2f} µs   = {1e6 / median(cpu):,.0f} records/s per busy core",
            ),
            (
                f"verify-archive ({default_workers()} workers)",
                f"{f:9,.0f} records/s   {f / b:.2f} of the read rate  (target >= 300,000/s)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
