"""``otel-audit check-collector FILE...``: lint OpenTelemetry Collector configurations for the audit path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from otel_audit.cli.common import EXIT_ERROR, EXIT_INTEGRITY, EXIT_OK, UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check-collector",
        help="check OpenTelemetry Collector configurations for a safe audit path",
        description="Check collector configuration files the way the collector would wire them (components, "
        "connectors, extensions) and for what keeps audit records safe on their way to otel-audit serve: routing "
        "on the audit.action attribute, a persistent queue and unlimited retries for the exporter to otel-audit, "
        "nothing that can change, drop or sample audit records, and every record still reaching the normal "
        "backend. No collector binary and no network are needed. Exit 0: no error; 1: errors found (with "
        "--strict, warnings too); 2: a file cannot be read or is not a collector configuration.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="collector configuration (YAML)")
    parser.add_argument(
        "--audit-exporter",
        action="append",
        default=[],
        metavar="ID",
        help="the exporter that sends to otel-audit serve (repeatable; default: exporters whose endpoint "
        "uses ${env:OTEL_AUDIT_ENDPOINT})",
    )
    parser.add_argument(
        "--backend-exporter",
        action="append",
        default=[],
        metavar="ID",
        help="an exporter of the normal observability backend (repeatable; default: exporters whose endpoint "
        "uses ${env:OBSERVABILITY_ENDPOINT} or ${env:OTEL_GATEWAY_ENDPOINT})",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on warnings too (unchecked component types, unused components)"
    )
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        from otel_audit import collector_check as cc
    except ModuleNotFoundError as exc:
        if exc.name != "yaml":
            raise
        raise UsageError("check-collector needs PyYAML: pip install 'otel-audit[collector]'") from None
    options = cc.CheckOptions(
        audit_exporters=frozenset(args.audit_exporter), backend_exporters=frozenset(args.backend_exporter)
    )
    results: dict[str, Any] = {}
    unreadable = failed = False
    for path in args.files:
        try:
            problems = cc.check_config(cc.load_config(path), options)
        except cc.CollectorConfigError as exc:
            results[str(path)] = {"error": str(exc)}
            unreadable = True
            continue
        errors = [p for p in problems if cc.severity(p) == "error"]
        warnings = [p for p in problems if cc.severity(p) == "warning"]
        results[str(path)] = {"errors": errors, "warnings": warnings}
        failed |= bool(errors) or (args.strict and bool(warnings))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, result in results.items():
            if "error" in result:
                print(f"{name}: CANNOT CHECK: {result['error']}")
                continue
            verdict = "FAIL" if result["errors"] or (args.strict and result["warnings"]) else "OK"
            print(f"{name}: {verdict} ({len(result['errors'])} error(s), {len(result['warnings'])} warning(s))")
            for problem in result["errors"]:
                print(f"  ERROR   {problem}")
            for problem in result["warnings"]:
                print(f"  WARNING {problem}")
    if unreadable:
        return EXIT_ERROR
    return EXIT_INTEGRITY if failed else EXIT_OK
