"""How the package's parts depend on each other: the command line imports a command's heavy
dependencies only when that command runs, and the web middleware uses otel-audit through small
internal APIs instead of other modules' private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from otel_audit.cli.common import Deferred, resolve_deferred
from otel_audit.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]

HEAVY = (
    "psycopg",
    "cryptography",
    "pyarrow",
    "boto3",
    "botocore",
    "yaml",
    "tqdm",
    "google.protobuf",
    "opentelemetry.sdk",
    "otel_audit.pipeline",
    "otel_audit.sink",
    "otel_audit.ingest",
    "otel_audit.verify",
    "otel_audit.archive",
    "otel_audit.report",
    "otel_audit.core.keys",
)


def test_building_the_parser_imports_no_command_dependencies():
    code = (
        "import sys\n"
        "from otel_audit.cli.main import build_parser\n"
        "parser = build_parser()\n"
        "parser.parse_args(['serve', '--insecure-no-auth'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_deferred_defaults_show_in_help_and_resolve_to_the_commands_own_values(capsys):
    from otel_audit.ingest.service import IngestConfig
    from otel_audit.sink.partitions import DEFAULT_AHEAD_MONTHS

    args = build_parser().parse_args(["serve", "--insecure-no-auth", "--max-records", "7"])
    assert isinstance(args.max_body_bytes, Deferred)
    resolve_deferred(args)
    assert args.max_body_bytes == IngestConfig().max_body_bytes and args.max_records == 7
    assert args.commit_timeout == IngestConfig().commit_timeout
    maintain = resolve_deferred(build_parser().parse_args(["db", "maintain"]))
    assert maintain.ahead == DEFAULT_AHEAD_MONTHS
    for argv in (["serve", "--help"], ["db", "maintain", "--help"], ["verify", "--help"]):
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pass
    shown = capsys.readouterr().out
    assert f"(default: {IngestConfig().max_body_bytes})" in shown
    assert f"(default {DEFAULT_AHEAD_MONTHS})" in shown
    assert "up to 8, from " in shown and "Deferred" not in shown


def test_the_web_middleware_uses_no_private_name_of_another_module():
    private = []
    for path in sorted((ROOT / "otel_audit" / "web").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("otel_audit"):
                if node.module.startswith("otel_audit.web"):
                    continue
                private += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert private == []


def test_the_internal_apis_the_middleware_uses():
    from otel_audit.configuration import active_handles
    from otel_audit.context import close_root_context, context_attributes, open_root_context
    from otel_audit.processor import collect_sealed

    assert active_handles() == [] or all(h.chain_id for h in active_handles())
    token = open_root_context({"client.address": "192.0.2.1"})
    try:
        assert context_attributes() == {"client.address": "192.0.2.1"}
    finally:
        close_root_context(token)
    assert context_attributes() == {}
    with collect_sealed() as sealed:
        assert sealed == []


def test_the_status_file_is_written_and_read_in_one_module(tmp_path: Path):
    from otel_audit import status

    status.write_process_status(tmp_path, {"records_committed": 5}, chain_id="c-1")
    assert not (tmp_path / (status.STATUS_FILE + ".tmp")).exists()
    process = status._chain_dir_status(tmp_path, identity=None, dsn_argument="")["process"]
    assert process["records_committed"] == 5 and process["chain_id"] == "c-1" and "age_seconds" in process
    others = [
        p
        for p in (ROOT / "otel_audit").rglob("*.py")
        if p.name != "status.py" and status.STATUS_FILE in p.read_text(encoding="utf-8")
    ]
    assert others == []
