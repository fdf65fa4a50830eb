"""Every OTEL_AUDIT_* variable has one definition (otel_audit.settings): the package reads
them only through it, the documentation's table is generated from it, and a bad value stops
start-up with a message naming the variable, its value and what was expected."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from otel_audit import settings
from otel_audit.errors import AuditConfigurationError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "otel_audit"
NAMES = {s.name for s in settings.SETTINGS}


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "settings.py")


def test_the_configuration_page_is_the_generated_table():
    page = ROOT / "docs" / "configuration.md"
    text = page.read_text(encoding="utf-8")
    assert settings.rewrite_page(text) == text, (
        "docs/configuration.md differs from otel_audit.settings: run "
        "python -m otel_audit.settings --write docs/configuration.md"
    )
    for name in NAMES:
        assert f"`{name}`" in text


def test_the_check_command_fails_on_a_stale_page(tmp_path: Path):
    page = tmp_path / "configuration.md"
    page.write_text(f"# C\n\n{settings.BEGIN_MARK}\n| stale |\n{settings.END_MARK}\n", encoding="utf-8")
    check = [sys.executable, "-m", "otel_audit.settings", "--check", str(page)]
    out = subprocess.run(check, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1 and "--write" in out.stderr
    subprocess.run(
        [sys.executable, "-m", "otel_audit.settings", "--write", str(page)], check=True, cwd=ROOT, timeout=60
    )
    assert subprocess.run(check, cwd=ROOT, timeout=60).returncode == 0
    assert "`OTEL_AUDIT_DSN`" in page.read_text(encoding="utf-8")


def _environment_reads(tree: ast.AST) -> list[ast.AST]:
    """Nodes that touch the process environment: os.environ, os.getenv, os.environb."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                found.append(node)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(alias.name in ("environ", "getenv") for alias in node.names):
                found.append(node)
    return found


#: Environment reads by a computed name, each checked by eye: none of them is an OTEL_AUDIT_* variable.
COMPUTED_READS = {
    "otel_audit/sink/writer.py": "libpq's PGHOST, PGPORT, PGDATABASE, PGUSER defaults",
}

#: OTEL_AUDIT_* words in the source that are not environment variables.
NOT_VARIABLES = {
    "OTEL_AUDIT_WEB": "a Django setting (settings.OTEL_AUDIT_WEB)",
    "OTEL_AUDIT_ENDPOINT_VAR": "a Python constant holding the collector's OTEL_AUDIT_ENDPOINT",
}


def test_the_package_reads_otel_audit_variables_only_through_settings():
    """Outside otel_audit/settings.py, the environment is read only by literal names that are not OTEL_AUDIT_*."""
    offenders = []
    for path in _sources():
        if str(path.relative_to(ROOT)) in COMPUTED_READS:
            continue
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in _environment_reads(tree):
            key = _key_of(node, parents)
            if key is None or key.startswith("OTEL_AUDIT_"):
                line = source.splitlines()[node.lineno - 1].strip()  # type: ignore[attr-defined]
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line}")  # type: ignore[attr-defined]
    assert not offenders, "read these through otel_audit.settings:\n" + "\n".join(offenders)


def _key_of(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    """The literal variable name a read uses (os.environ.get("X"), os.environ["X"], os.getenv("X")), else None."""
    parent = parents.get(node)
    if isinstance(node, ast.Attribute) and node.attr == "getenv":
        call = parent
    elif isinstance(parent, ast.Subscript):
        return _literal(parent.slice)
    elif isinstance(parent, ast.Attribute) and parent.attr in ("get", "__getitem__", "__contains__"):
        call = parents.get(parent)
    else:
        return None  # the whole environment handed on (dict(os.environ), env=os.environ): not allowed
    if isinstance(call, ast.Call) and call.args:
        return _literal(call.args[0])
    return None


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _collector_variables() -> set[str]:
    """OTEL_AUDIT_* variables the shipped collector configurations read (the collector's, not Python's)."""
    found: set[str] = set()
    for path in (ROOT / "collector-config").glob("*.yaml"):
        found |= set(re.findall(r"\$\{env:(OTEL_AUDIT_[A-Z0-9_]+)", path.read_text(encoding="utf-8")))
    return found


def test_every_variable_the_package_mentions_exists():
    """A message or docstring naming OTEL_AUDIT_X names a real setting (or a collector configuration's variable)."""
    known = NAMES | _collector_variables() | set(NOT_VARIABLES)
    unknown = set()
    for path in _sources():
        for name in re.findall(r"OTEL_AUDIT_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8")):
            if name not in known:
                unknown.add(f"{path.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)


@pytest.mark.parametrize(
    ("setting", "text", "expected"),
    [
        (settings.SPOOL_MAX_BYTES, "1G", "expected a whole number"),
        (settings.CHECKPOINT_RECORDS, "0", "at least 1"),
        (settings.CHECKPOINT_INTERVAL, "soon", "number of seconds"),
        (settings.CHECKPOINT_INTERVAL, "-1", "positive"),
        (settings.BLOCK_TIMEOUT, "nan", "0 or more"),
        (settings.STRICT, "maybe", "1, true, yes or on"),
        (settings.WHEN_FULL, "wait", "block or drop"),
        (settings.SPOOL_FSYNC, "sometimes", "interval or always or never"),
        (settings.WITNESS_RETAIN_DAYS, "six years", "whole number"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_was_expected(setting, text, expected):
    with pytest.raises(AuditConfigurationError) as info:
        setting.get({setting.name: text})
    message = str(info.value)
    assert message.startswith(f"{setting.name}={text!r} is not valid: ")
    assert expected in message
    assert "Fix or unset it" in message and f"default: {setting.default_text}" in message


def test_configure_stops_on_a_bad_variable_before_touching_the_database(monkeypatch, tmp_path):
    import otel_audit

    monkeypatch.setenv("OTEL_AUDIT_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("OTEL_AUDIT_MAX_RECORD_BYTES", "256KiB")
    with pytest.raises(AuditConfigurationError, match="OTEL_AUDIT_MAX_RECORD_BYTES='256KiB' is not valid"):
        otel_audit.configure(dsn="postgresql://nobody@127.0.0.1:1/none", otlp=False, install_handler=False)


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On "])
def test_every_boolean_reads_true_the_same_way(text):
    for setting in (settings.STRICT, settings.DISABLED, settings.WITNESS_ALLOW_UNLOCKED):
        assert setting.get({setting.name: text}) is True


@pytest.mark.parametrize("text", ["0", "false", "no", "off", "", "  "])
def test_false_and_empty_read_false(text):
    for setting in (settings.STRICT, settings.DISABLED, settings.WITNESS_ALLOW_UNLOCKED):
        assert setting.get({setting.name: text}) is False


def test_the_zero_code_entry_point_honours_disabled_as_every_boolean(monkeypatch):
    """OTEL_AUDIT_DISABLED=on used to be ignored ("on" was true only for OTEL_AUDIT_STRICT)."""
    from otel_audit import auto

    monkeypatch.setenv("OTEL_AUDIT_DSN", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("OTEL_AUDIT_DISABLED", "on")
    called = []
    monkeypatch.setattr("otel_audit.configuration.configure", lambda: called.append(1))
    auto.post_instrument()
    assert called == []


def test_defaults_are_defined_once():
    import inspect

    from otel_audit.checkpointer import Checkpointer
    from otel_audit.core.chain import Chain
    from otel_audit.pipeline import PipelineConfig
    from otel_audit.spool.spool import SpoolConfig

    assert inspect.signature(Chain).parameters["max_record_bytes"].default == settings.DEFAULT_MAX_RECORD_BYTES
    assert PipelineConfig.__dataclass_fields__["max_record_bytes"].default == settings.MAX_RECORD_BYTES.default
    spool = SpoolConfig(directory=Path("unused"))
    assert spool.max_bytes == settings.SPOOL_MAX_BYTES.default
    assert spool.segment_bytes == settings.SPOOL_SEGMENT_BYTES.default
    assert spool.block_timeout == settings.BLOCK_TIMEOUT.default
    assert spool.fsync == settings.SPOOL_FSYNC.default and spool.when_full == settings.WHEN_FULL.default
    every = inspect.signature(Checkpointer).parameters
    assert every["every_records"].default == settings.CHECKPOINT_RECORDS.default
    assert every["every_seconds"].default == settings.CHECKPOINT_INTERVAL.default
    # And no module writes the record limit as a literal again.
    literal = re.compile(r"256 \* 1024\b|\b262144\b|262_144")
    repeated = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if literal.search(p.read_text(encoding="utf-8")) and p.name != "server.py"
    ]  # the ingest's read chunk size happens to be 256 KiB too
    assert repeated == []


def test_the_spool_directory_default_follows_xdg_state_home(tmp_path):
    assert settings.SPOOL_DIR.get({}) == settings.SPOOL_DIR.get({"OTEL_AUDIT_SPOOL_DIR": ""})
    assert settings.SPOOL_DIR.get({"OTEL_AUDIT_SPOOL_DIR": str(tmp_path)}) == tmp_path


def test_settings_imports_nothing_heavy():
    code = "import sys, otel_audit.settings; print(sorted(m for m in sys.modules if m.startswith('otel_audit')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['otel_audit', 'otel_audit.errors', 'otel_audit.settings']"
