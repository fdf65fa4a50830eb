"""`otel-audit serve` refuses to start in a state that would lose or expose data, and says what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from otel_audit.cli.main import main

pytestmark = pytest.mark.storage

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "cli-token-0123456789abcdef"


def test_serve_needs_tokens_unless_told_otherwise(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--dsn", db, "--port", "0"]) == 2
    assert "no ingest tokens" in capsys.readouterr().err


def test_serve_refuses_contradictory_auth_options(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_AUDIT_INGEST_TOKENS", TOKEN)
    assert main(["serve", "--dsn", db, "--port", "0", "--insecure-no-auth"]) == 2
    assert "contradicts" in capsys.readouterr().err


def test_serve_refuses_weak_tokens_and_half_tls(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("short\n")
    assert main(["serve", "--dsn", db, "--port", "0", "--token-file", str(tokens)]) == 2
    assert "at least 16" in capsys.readouterr().err
    monkeypatch.setenv("OTEL_AUDIT_INGEST_TOKENS", TOKEN)
    assert main(["serve", "--dsn", db, "--port", "0", "--tls-cert", str(tokens)]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_serve_refuses_a_database_without_the_schema(
    empty_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_AUDIT_INGEST_TOKENS", TOKEN)
    assert main(["serve", "--dsn", empty_db, "--port", "0"]) == 2
    assert "otel-audit db init" in capsys.readouterr().err


def test_serve_starts_and_stops_cleanly_on_sigterm(db: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_AUDIT_INGEST_TOKENS": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_audit",
            "serve",
            "--dsn",
            db,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--spool-dir",
            str(tmp_path / "spool"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stderr.readline()  # type: ignore[union-attr]
    assert "listening on http://127.0.0.1:" in first and "1 token(s)" in first, first
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert "stopping" in proc.stderr.read()  # type: ignore[union-attr]
    assert not any((tmp_path / "spool").iterdir())  # everything committed, spool directories removed
