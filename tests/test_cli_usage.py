"""How the command line and the package behave before any database is involved:
usage errors name the subcommand, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import otel_audit
from otel_audit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["verify", "--trusted-kee", "k.pub"], "usage: otel-audit verify"),
        (["query", "actor", "alice", "--limt", "5"], "usage: otel-audit query actor"),
        (["db", "init", "--writr-role", "w"], "usage: otel-audit db init"),
        (["check-collector", "--strictt", "x.yaml"], "usage: otel-audit check-collector"),
    ],
)
def test_a_mistyped_flag_shows_the_subcommands_usage(argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert usage in err, err
    assert "unrecognized arguments: " + argv[-2] in err
    assert "usage: otel-audit [-h]" not in err  # not the top-level usage


def test_an_unknown_command_shows_the_top_level_usage(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["verfy"])
    assert exit_info.value.code == 2
    assert "usage: otel-audit [-h]" in capsys.readouterr().err


def test_importing_the_package_does_not_import_the_sdk_psycopg_or_the_pipeline():
    code = (
        "import sys, otel_audit\n"
        "heavy = [m for m in ('psycopg', 'otel_audit.pipeline', 'opentelemetry.sdk._logs') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_public_names_are_there_when_used():
    assert callable(otel_audit.configure)
    assert otel_audit.AuditHandle.__name__ == "AuditHandle"
    assert otel_audit.AuditLogRecordProcessor.__module__ == "otel_audit.processor"
    assert set(otel_audit.__all__) <= set(dir(otel_audit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        otel_audit.nope
