"""One exception hierarchy: every exception otel-audit raises on purpose is an AuditError, defined in
otel_audit.errors and exported by otel_audit; builtins stay second bases where callers catch them; the
command line reports AuditError (and OSError) as a message and lets anything else show its traceback."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import otel_audit
from otel_audit import errors
from otel_audit.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "otel_audit"

#: Exceptions that never leave the module that raises them (each is caught there and turned into a
#: finding, an HTTP answer or a usage message).
INTERNAL = {
    "UsageError": "otel_audit/cli/common.py: the command line's own, printed with the usage",
    "RequestError": "otel_audit/ingest/decode.py: becomes the HTTP answer of otel-audit serve",
    "SealRejected": "otel_audit/ingest/presealed.py: becomes a quarantined record or an HTTP answer",
    "Malformed": "otel_audit/ingest/lenient.py: becomes a quarantined record",
}

#: raise sites of builtin exceptions that are not errors of the caller: caught in the same module,
#: internal invariants, or programming errors (see otel_audit.errors).
BUILTIN_RAISES = {
    ("otel_audit/settings.py", "ValueError"),  # the parsers; Setting.get() turns it into AuditConfigurationError
    ("otel_audit/ingest/lenient.py", "ValueError"),  # caught in the module
    ("otel_audit/collector_check.py", "ValueError"),  # duration_seconds: the checker reports it as a problem
    ("otel_audit/archive/verify.py", "ValueError"),  # caught two lines below: a finding
    ("otel_audit/core/record.py", "ValueError"),  # not a record: an internal invariant
    ("otel_audit/core/keys.py", "ValueError"),  # key_id_for on a non-Ed25519 key: an internal invariant
    ("otel_audit/context.py", "LookupError"),  # update_audit_context() outside a context: a programming error
    ("otel_audit/verify/parallel.py", "RuntimeError"),  # a worker process's own state
}

_BUILTINS = {"Exception", "ValueError", "LookupError", "KeyError", "RuntimeError", "ConnectionError", "OSError"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(ROOT)), ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def _is_exception_class(node: ast.ClassDef) -> bool:
    names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    return bool(names & (_BUILTINS | {"AuditError"})) or any(n.endswith(("Error", "Conflict")) for n in names)


def test_every_exception_class_is_defined_in_errors_or_stays_internal():
    elsewhere = []
    for path, tree in _modules():
        if path == "otel_audit/errors.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _is_exception_class(node):
                if node.name not in INTERNAL and not node.name.startswith("_"):
                    elsewhere.append(f"{path}: {node.name}")
    assert elsewhere == [], "define public exceptions in otel_audit/errors.py (subclassing AuditError)"


def test_the_package_raises_builtins_only_where_listed():
    found = set()
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id in _BUILTINS:
                    found.add((path, func.id))
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.BoolOp):  # raise a or RuntimeError(...)
                for value in node.exc.values:
                    if isinstance(value, ast.Call) and getattr(value.func, "id", None) in _BUILTINS:
                        found.add((path, value.func.id))  # type: ignore[union-attr]
    assert found - BUILTIN_RAISES == set(), "raise an otel_audit.errors class instead (with a builtin second base)"


def test_every_public_exception_is_an_audit_error_exported_by_the_package():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.AuditError), name
        assert getattr(otel_audit, name) is cls, name
        assert name in otel_audit.__all__, name


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.InvalidInput, ValueError),
        (errors.CollectorConfigError, ValueError),
        (errors.CheckpointFormatError, ValueError),
        (errors.ManifestError, ValueError),
        (errors.RetentionFormatError, ValueError),
        (errors.CanonicalEncodingError, ValueError),
        (errors.NotFound, LookupError),
        (errors.DatabaseNotReady, LookupError),
        (errors.MissingTablesError, LookupError),
        (errors.ProofUnavailable, LookupError),
        (errors.NotAnchoredError, LookupError),
        (errors.DatabaseUnavailable, ConnectionError),
    ],
)
def test_builtins_stay_second_bases(cls: type, builtin: type):
    assert issubclass(cls, errors.AuditError) and issubclass(cls, builtin)


def test_the_raising_modules_re_export_the_same_classes():
    from otel_audit.archive.store import StoreConflict, StoreError
    from otel_audit.core.checkpoint import CheckpointFormatError
    from otel_audit.query import MissingTablesError
    from otel_audit.verify.prove import NotAnchoredError, ProofUnavailable
    from otel_audit.witness import WitnessError

    assert StoreError is otel_audit.StoreError and StoreConflict is otel_audit.StoreConflict
    assert CheckpointFormatError is otel_audit.CheckpointFormatError
    assert MissingTablesError is otel_audit.MissingTablesError
    assert ProofUnavailable is otel_audit.ProofUnavailable and NotAnchoredError is otel_audit.NotAnchoredError
    assert WitnessError is otel_audit.WitnessError


def test_values_the_api_refuses_are_invalid_input():
    from otel_audit.query import parse_duration, parse_time

    for bad in (lambda: parse_duration("soon"), lambda: parse_time("yesterday")):
        with pytest.raises(otel_audit.InvalidInput) as info:
            bad()
        assert isinstance(info.value, ValueError)


def test_an_unreachable_database_is_database_unavailable_and_a_message(capsys: pytest.CaptureFixture[str]):
    code = main(["verify", "--dsn", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("otel-audit verify: cannot connect to PostgreSQL:"), err
    assert "Traceback" not in err


def test_the_cli_reports_audit_errors_and_keeps_tracebacks_for_bugs(monkeypatch, capsys, tmp_path):
    from otel_audit.cli import status

    def refuses(args):
        raise otel_audit.NotFound("there is no such thing; list them with `otel-audit status`")

    monkeypatch.setattr(status, "run", refuses)
    assert main(["status", "--spool-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "otel-audit status: there is no such thing; list them with `otel-audit status`\n"

    def bug(args):
        raise ValueError("a bug, not a user's mistake")

    monkeypatch.setattr(status, "run", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["status", "--spool-dir", str(tmp_path)])
