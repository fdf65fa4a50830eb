"""The operator's view (issue 14): what an application that configured otel-audit the
simple way shows and does when PostgreSQL is unreachable, refuses, or was named wrongly,
and what ``otel-audit status`` and ``replay`` then say.

The applications run as separate processes (tests/operator_app.py), so what reaches
their stderr and how they exit is what an operator would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import App, rows
from tests.pgproxy import PgProxy
from tests.test_output_escaping import cli

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]


class OperatorApp:
    """tests/operator_app.py in a subprocess, driven line by line."""

    def __init__(self, dsn: str, spool: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "operator_app.py"), dsn, str(spool), *extra],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.read() == "ready"

    def read(self) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the application ended early; stderr:\n{self.proc.stderr.read()}"  # type: ignore[union-attr]
        return line.strip()

    def send(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.read()

    def finish(self, command: str = "exit", timeout: float = 120) -> tuple[int, str]:
        """Send the last command, close stdin, wait: (exit status, everything on stderr)."""
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        _, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, stderr


@pytest.fixture
def proxy(db: str) -> Iterator[PgProxy]:
    p = PgProxy(db)
    yield p
    p.close()


def test_status_counts_only_records_not_yet_stored(proxy: PgProxy, db: str, tmp_path: Path) -> None:
    """5 records stored, then the database went away, 3 more, then the process died:
    3 are waiting, not the 8 the spool segment still holds."""
    spool = tmp_path / "spool"
    app = OperatorApp(proxy.dsn, spool)
    app.send("log 5")
    assert app.send("flush 30") == "True"
    proxy.cut()
    app.send("log 3")
    app.finish("kill")
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(5,)]

    status = json.loads(cli("status", "--spool-dir", str(spool), "--json").stdout)
    (chain,) = status["spool"]["chains"]
    assert not chain["owner_alive"] and chain["records_in_spool"] == 3


def test_status_after_a_short_replay_reports_nothing_to_replay(proxy: PgProxy, db: str, tmp_path: Path) -> None:
    """A short-lived process replays a dead one's 5 records and exits straight away: status must
    not go on reporting those 5 as waiting."""
    spool = tmp_path / "spool"
    proxy.cut()
    dead = OperatorApp(proxy.dsn, spool)
    dead.send("log 5")
    dead.finish("kill")
    proxy.restore()

    short = OperatorApp(proxy.dsn, spool)
    short.send("log 1")
    code, stderr = short.finish("exit")
    assert code == 0, stderr
    assert rows(db, "SELECT count(*) FROM audit_logs") == [(6,)]
    status = json.loads(cli("status", "--spool-dir", str(spool), "--json").stdout)
    assert sum(c.get("records_in_spool", 0) for c in status["spool"]["chains"]) == 0, status
