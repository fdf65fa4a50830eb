"""(e) ``otel-audit report`` over a large trail: time and size (goals: 1,000,000 records in under a minute,
HTML under 5 MB), against ``otel-audit verify`` of the same database measured in the same run.

    python benchmarks/bench_report.py [--records 1000000] [--days 90] [--chains 8]

The trail is built fast, without the logging path: records are sealed with the
core (RecordBuilder + Chain, exactly as the processor seals them) and stored
with the sink's own COPY-and-project statements, in parallel over the chains;
each chain gets a signed checkpoint every 10,000 records and a closing one,
so the report's verification checks signatures against a trusted key. The
data look like a clinic's quarter: thousands of users reading patient
records, some updates and exports, ~5% failures and ~2% denials, a few actors
failing often, four services.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a script

from benchmarks.common import fresh_schema, report, where
from otel_audit.core.chain import KIND_RECORD, Chain, emitter_metadata
from otel_audit.core.checkpoint import sign_checkpoint
from otel_audit.core.keys import SigningKey, generate_signing_key, load_signing_key, write_keypair
from otel_audit.core.record import RecordBuilder
from otel_audit.report import ReportOptions, build_report, render_html
from otel_audit.sink.checkpoints import INSERT_CHECKPOINT
from otel_audit.sink.rows import CREATE_STAGE, INSERT_CHAINS, PROJECT_STAGE, STAGE_TABLE
from otel_audit.sink.writer import stage_copy_data
from otel_audit.verify import VerifyOptions, verify_database

SERVICES = ("ehr", "pharmacy", "portal", "auth")
BATCH = 50_000
CHECKPOINT_EVERY = 10_000


class _Frames:
    """A FrameSink that keeps sealed records in memory, for the COPY."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.genesis: tuple[bytes, bytes] | None = None

    def append(self, kind: int, payload: bytes, digest: bytes) -> None:
        if kind == KIND_RECORD:
            self.records.append((payload, digest))
        else:
            self.genesis = (payload, digest)


def _attributes(rng: random.Random) -> dict:
    user = int(rng.paretovariate(1.2)) % 5000
    roll = rng.random()
    action = (
        "read"
        if roll < 0.70
        else "update"
        if roll < 0.85
        else "login"
        if roll < 0.95
        else rng.choice(("export", "delete"))
    )
    actor = f"user-{user:04d}"
    result = "success"
    r = rng.random()
    if actor in ("user-0007", "user-0042") and r < 0.4:  # two actors who fail a lot
        result = "failure"
    elif r < 0.05:
        result = "failure"
    elif r < 0.07:
        result = "denied"
    attrs = {
        "audit.action": action,
        "audit.actor.id": actor,
        "audit.actor.type": "admin" if user < 10 else "user",
        "audit.resource.type": "session" if action == "login" else "patient_record",
        "audit.resource.id": f"patient-{int(rng.random() ** 2 * 200_000):06d}",
        "audit.result": result,
        "client.address": f"10.{user % 250}.{user // 250}.{rng.randrange(1, 250)}",
        "session.id": f"s-{user}-{rng.randrange(50)}",
    }
    if result != "success":
        attrs["audit.reason"] = "invalid credentials" if action == "login" else "not permitted by role"
    if action == "update":
        attrs["audit.changed_fields"] = ["dose", "notes"]
    return attrs


def _seal_and_store(task: tuple[str, int, int, int, float, float, str]) -> int:
    dsn, k, count, seed, start, end, key_path = task
    rng = random.Random(seed)
    key: SigningKey = load_signing_key(key_path)
    service = SERVICES[k % len(SERVICES)]
    frames = _Frames()
    chain = Chain(
        frames,
        emitter=emitter_metadata("sdk", service_name=service, host_name=f"host-{k}"),
        clock=lambda: int(start * 1e9),
    )
    builder = RecordBuilder()
    stamps = sorted(rng.uniform(start, end) for _ in range(count))
    n, prev = 0, None
    checkpoints = []

    def checkpoint(seq: int, head: str, closed: bool, at: float) -> None:
        nonlocal n, prev
        n += 1
        cp = sign_checkpoint(
            key,
            chain_id=chain.chain_id,
            n=n,
            seq=seq,
            head=head,
            genesis=chain.genesis_hash,
            prev=prev,
            time_ns=int(at * 1e9),
            interval_ms=10_000,
            closed=closed,
        )
        prev = cp.hash
        checkpoints.append(
            (cp.chain_id, cp.n, cp.seq, cp.head, cp.time, cp.key_id, cp.closed, cp.body, cp.signature, cp.hash)
        )

    checkpoint(0, chain.genesis_hash, False, start)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_STAGE)
        assert frames.genesis is not None
        conn.execute(INSERT_CHAINS, {"g": frames.genesis[0], "h": frames.genesis[1].hex()})
        for i, ts in enumerate(stamps, 1):
            sealed = chain.seal(
                builder.build(
                    _attributes(rng),
                    time_unix_nano=int(ts * 1e9),
                    service_name=service,
                    host_name=f"host-{k}",
                    severity_text="INFO",
                    severity_number=9,
                )
            )
            if i % CHECKPOINT_EVERY == 0 or i == count:
                checkpoint(sealed.seq, sealed.hash, i == count, ts)
            if len(frames.records) >= BATCH or i == count:
                with conn.transaction():
                    with conn.cursor().copy(
                        f"COPY {STAGE_TABLE} (ord, hash, canonical) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.write(stage_copy_data(frames.records))
                    conn.execute(PROJECT_STAGE)
                    conn.cursor().executemany(INSERT_CHECKPOINT, checkpoints)
                frames.records.clear()
                checkpoints.clear()
    return count


def populate(records: int, chains: int, days: int, key_path: str) -> str:
    dsn = fresh_schema()
    end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
    start = end - timedelta(days=days)
    per_chain = [records // chains + (1 if k < records % chains else 0) for k in range(chains)]
    tasks = [(dsn, k, per_chain[k], 1000 + k, start.timestamp(), end.timestamp(), key_path) for k in range(chains)]
    with multiprocessing.get_context("fork").Pool(min(chains, max(1, multiprocessing.cpu_count()))) as pool:
        assert sum(pool.map(_seal_and_store, tasks)) == records
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_logs")
    return dsn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp(prefix="otel-audit-bench-keys-"))
    private, public = write_keypair(generate_signing_key(), keys / "signing")
    started = time.perf_counter()
    dsn = populate(args.records, args.chains, args.days, str(private))
    built = time.perf_counter() - started
    print(
        f"built {args.records:,} sealed records in {args.chains} chains over {args.days} days in {built:.1f}s",
        file=sys.stderr,
    )
    from otel_audit.core.keys import load_trusted_keys

    trusted = load_trusted_keys([public])
    since = f"{args.days + 1}d"

    # Baseline: verification alone (the report runs it too).
    start = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        verified = verify_database(conn, VerifyOptions(trusted_keys=trusted))
    verify_s = time.perf_counter() - start
    assert verified.ok, [str(f) for f in verified.findings[:5]]

    # The report as a library call: gathering (verification included) and rendering.
    start = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        data = build_report(
            conn,
            ReportOptions(
                since=datetime.now(timezone.utc) - timedelta(days=args.days + 1),
                trusted_keys=trusted,
                trusted_key_files=[str(public)],
            ),
        )
    gather_s = time.perf_counter() - start
    start = time.perf_counter()
    page = render_html(data)
    render_s = time.perf_counter() - start

    # The command an auditor runs, end to end (a new process: imports, connection, files).
    out = keys / "report.html"
    start = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_audit",
            "report",
            "--dsn",
            dsn,
            "--trusted-key",
            str(public),
            "--since",
            since,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    cli_s = time.perf_counter() - start
    assert run.returncode == 0, run.stderr
    size = out.stat().st_size
    report(
        f"report over {args.records:,} records, {where()}",
        [
            ("otel-audit verify --trusted-key (baseline)", f"{verify_s:6.1f} s"),
            ("build_report (verification + aggregates)", f"{gather_s:6.1f} s   {gather_s / verify_s:.2f}x verify"),
            ("render_html", f"{render_s:6.2f} s   {len(page.encode()):,} bytes"),
            ("otel-audit report --out report.html", f"{cli_s:6.1f} s   (goal < 60 s)   {cli_s / verify_s:.2f}x verify"),
            ("report.html", f"{size / 1e6:6.2f} MB   (goal < 5 MB)"),
            ("records in the period", f"{data['activity']['records']:,}, verdict {data['verification']['verdict']}"),
        ],
    )


if __name__ == "__main__":
    main()
