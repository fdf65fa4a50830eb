"""Shared set-up for the benchmarks: a real PostgreSQL, a fresh schema, honest timing.

The machine is shared and noisy, so every benchmark measures its baseline in
the same run, alternates rounds, and reports medians and ratios. Nothing here
asserts a time.

Database: ``OTEL_AUDIT_BENCH_DSN`` (a server you choose), else an embedded
PostgreSQL 16 (pgserver) in a temporary directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from otel_audit.sink.schema import migrate  # noqa: E402

_server = None


def admin_dsn() -> str:
    global _server
    dsn = os.environ.get("OTEL_AUDIT_BENCH_DSN")
    if dsn:
        return dsn
    if _server is None:
        from otel_audit.embedded import EmbeddedPostgres

        tmp = Path(tempfile.mkdtemp(prefix="otel-audit-bench-"))
        os.chmod(tmp, 0o755)
        _server = EmbeddedPostgres(tmp / "data")
        atexit.register(lambda: (_server.stop(), shutil.rmtree(tmp, ignore_errors=True)))
    return _server.dsn()


def fresh_schema(init: bool = True) -> str:
    """A DSN whose search_path is a new schema (with the otel-audit tables when ``init``)."""
    base = admin_dsn()
    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    dsn = make_conninfo(base, options=f"-c search_path={schema}")
    if init:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
    return dsn


def where() -> str:
    return "server from OTEL_AUDIT_BENCH_DSN" if os.environ.get("OTEL_AUDIT_BENCH_DSN") else "embedded PostgreSQL 16"


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(title: str, lines: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"  {key.ljust(width)}  {value}")


# The same audit attributes the tests log (an actor reading a patient record).
from tests.harness import VALID as AUDIT_EXTRA  # noqa: E402, F401 (re-exported)
