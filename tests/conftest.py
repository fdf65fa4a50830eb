"""Shared fixtures. Storage tests run against a real PostgreSQL, always:

* by default an embedded server (``pgserver``, PostgreSQL 16) started once per
  test session in a temporary directory;
* when ``OTEL_AUDIT_TEST_DSN`` is set, the server it names (a superuser DSN:
  the tamper tests act as a superuser would).

Each test gets its own schema (``search_path`` in the DSN), so tests never see
each other's tables, chains or spools.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from otel_audit.sink.schema import migrate

TEST_DSN_ENV = "OTEL_AUDIT_TEST_DSN"


class PostgresUnderTest:
    """The server the storage tests use, and how to reach it."""

    def __init__(self, admin_dsn: str, embedded=None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    @property
    def kind(self) -> str:
        return "embedded" if self.embedded is not None else "server"

    def schema_dsn(self, schema: str) -> str:
        return make_conninfo(self.admin_dsn, options=f"-c search_path={schema}")

    def new_schema(self, *, init: bool = True) -> tuple[str, str]:
        schema = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        dsn = self.schema_dsn(schema)
        if init:
            with psycopg.connect(dsn, autocommit=True) as conn:
                migrate(conn)
        return schema, dsn

    def drop_schema(self, schema: str) -> None:
        try:
            with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        except psycopg.Error:
            pass  # a fault test may leave the server stopped; the session teardown cleans up


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reaches PostgreSQL through the ``postgres`` fixture (``db`` and ``empty_db`` do)
    is a storage test whether or not its module says so, so that ``-m storage`` selects it."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()) and item.get_closest_marker("storage") is None:
            item.add_marker(pytest.mark.storage)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresUnderTest]:
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
        yield PostgresUnderTest(dsn)
        return
    from otel_audit.embedded import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="otel-audit-test-pg-"))
    os.chmod(data_dir, 0o755)
    server = EmbeddedPostgres(data_dir / "data")
    yield PostgresUnderTest(server.dsn(), embedded=server)
    try:
        server.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def db(postgres: PostgresUnderTest) -> Iterator[str]:
    """A DSN whose search_path is a fresh schema with the otel-audit tables."""
    schema, dsn = postgres.new_schema()
    yield dsn
    postgres.drop_schema(schema)


@pytest.fixture
def empty_db(postgres: PostgresUnderTest) -> Iterator[str]:
    """A DSN on a fresh, empty schema (no otel-audit tables yet)."""
    schema, dsn = postgres.new_schema(init=False)
    yield dsn
    postgres.drop_schema(schema)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _isolate_otel_globals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep environment variables and the root logger as each test found them."""
    for name in list(os.environ):
        if name.startswith(("OTEL_AUDIT_", "OTEL_EXPORTER_OTLP", "OTEL_LOGS_EXPORTER", "OTEL_SERVICE_NAME")):
            if name != TEST_DSN_ENV:
                monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def dsn_database(dsn: str) -> str:
    return conninfo_to_dict(dsn).get("dbname", "")


@pytest.fixture(params=["sequential", "parallel"])
def verify_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test's verifications both in one process and split into tiny ranges over 2 workers.

    Small trails are normally verified in-process, one range per chain; the
    parallel mode makes every chain a run of 4-record ranges checked by worker
    processes, so range boundaries fall everywhere a test tampers.
    """
    if request.param == "sequential":
        yield request.param
        return
    from otel_audit.verify import database, parallel

    used: list[int] = []
    run_tasks = database.run_tasks

    def counting_run_tasks(conn, tasks, workers):
        used.append(workers)
        return run_tasks(conn, tasks, workers)

    monkeypatch.setattr(database, "PARALLEL_FROM", 0)
    monkeypatch.setattr(database, "default_workers", lambda: 2)
    # Workers even if an earlier test left a thread running (they are then spawned, not forked).
    monkeypatch.setattr(database, "can_fork", lambda: True)
    monkeypatch.setattr(database, "run_tasks", counting_run_tasks)
    monkeypatch.setattr(parallel, "MIN_RANGE", 4)
    yield request.param
    assert not used or max(used) == 2, f"parallel mode verified with {used} worker(s)"
