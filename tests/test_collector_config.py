"""The OpenTelemetry Collector configurations in ``collector-config/``, and the checker behind
``otel-audit check-collector`` (:mod:`otel_audit.collector_check`).

The shipped configurations must pass the checker with no problem at all; the checker is then run
on deliberately broken copies to show that it catches what it claims to, and through the command
line as a user would run it on a configuration of their own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from otel_audit.cli.main import main
from otel_audit.collector_check import (
    ATTRIBUTE_REF,
    AUDIT_ACTION,
    AUTH_EXTENSION_TYPES,
    DEPRECATED_EXPORTER_TYPES,
    ENV_REF,
    ENV_REF_OK,
    CheckOptions,
    CollectorConfigError,
    check_config,
    ctype,
    duration_seconds,
    env_default,
    is_persistent,
    listed,
    load_config,
    section,
    severity,
    trace_log_record,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector-config"
README = CONFIG_DIR / "README.md"
CONFIG_FILES = sorted([*CONFIG_DIR.glob("*.yaml"), *CONFIG_DIR.glob("*.yml")])
EXPECTED_FILES = {"agent.yaml", "gateway.yaml", "agent-to-gateway.yaml"}

# --------------------------------------------------------------------------------------
# tests on the real files


def config_params() -> list:
    return [pytest.param(path, id=path.name) for path in CONFIG_FILES]


def test_the_expected_configurations_exist():
    assert CONFIG_FILES, f"no YAML files in {CONFIG_DIR}"
    assert EXPECTED_FILES <= {p.name for p in CONFIG_FILES}


def test_attribute_matches_the_processor():
    """The routing attribute is the one the in-process processor and the ingest recognize."""
    from otel_audit import processor

    assert AUDIT_ACTION == "audit.action" == processor._ACTION


@pytest.mark.parametrize("path", config_params())
def test_configuration_is_consistent(path: Path):
    problems = check_config(load_config(path))
    assert problems == [], f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", config_params())
def test_routing_condition_tests_exactly_audit_action(path: Path):
    cfg = load_config(path)
    routes = [
        item
        for cid, conf in section(cfg, "connectors").items()
        if ctype(cid) == "routing"
        for item in listed(conf, "table")
    ]
    assert routes, f"{path.name}: no routing table"
    for item in routes:
        assert item["context"] == "log"
        assert [m.group("key") for m in ATTRIBUTE_REF.finditer(item["condition"])] == [AUDIT_ACTION]
        assert " ".join(item["condition"].split()) == f'attributes["{AUDIT_ACTION}"] != nil'


@pytest.mark.parametrize("path", config_params())
def test_exporter_names_are_current(path: Path):
    for eid in section(load_config(path), "exporters"):
        assert ctype(eid) not in DEPRECATED_EXPORTER_TYPES, f"{path.name}: deprecated exporter type in {eid!r}"
        assert ctype(eid) in {"otlp_http", "otlp_grpc"}


@pytest.mark.parametrize("path", config_params())
def test_audit_records_reach_otel_audit_or_gateway_persistently(path: Path):
    cfg = load_config(path)
    reached, audit_pipelines = trace_log_record(cfg, matched=True)
    exporters = section(cfg, "exporters")
    persistent = {eid for eid in reached if is_persistent(exporters[eid])}
    assert persistent, f"{path.name}: audit records reach no persistent exporter"
    assert audit_pipelines, f"{path.name}: no pipeline on the audit path"
    for eid in persistent:
        retry = exporters[eid]["retry_on_failure"]
        assert retry["enabled"] is True
        assert duration_seconds(retry["max_elapsed_time"]) == 0


@pytest.mark.parametrize("path", config_params())
def test_env_references_use_env_scheme_and_are_documented(path: Path):
    text = path.read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    refs = ENV_REF.findall(text)
    assert refs, f"{path.name}: endpoints/tokens/paths should come from environment variables"
    for ref in refs:
        m = ENV_REF_OK.match(ref)
        assert m, f"{path.name}: {ref!r} is not of the form ${{env:NAME}} or ${{env:NAME:-default}}"
        assert m.group("default") != "", f"{path.name}: {ref!r}: empty defaults resolve differently across versions"
        assert m.group("name") in readme, f"{path.name}: {m.group('name')} is not documented in README.md"


@pytest.mark.parametrize("path", config_params())
def test_secrets_are_not_inlined(path: Path):
    cfg = load_config(path)
    for eid, conf in section(cfg, "extensions").items():
        if ctype(eid) in AUTH_EXTENSION_TYPES:
            if conf.get("filename"):
                continue
            m = ENV_REF_OK.match(str(conf.get("token", "")))
            assert m, f"{path.name}: {eid}: the token must come from ${{env:...}} or a file"
            assert m.group("default") is None, f"{path.name}: {eid}: a token must have no default"


def test_agent_batches_fit_the_gateway_receiver():
    agent = load_config(CONFIG_DIR / "agent-to-gateway.yaml")
    gateway = load_config(CONFIG_DIR / "gateway.yaml")
    limit_mib = gateway["receivers"]["otlp"]["protocols"]["grpc"]["max_recv_msg_size_mib"]
    for eid, conf in agent["exporters"].items():
        batch = (conf.get("sending_queue") or {}).get("batch")
        if batch:
            assert batch["sizer"] == "bytes"
            assert env_default(batch["max_size"]) < limit_mib * 1024 * 1024, eid


def test_readme_covers_the_essentials():
    readme = README.read_text(encoding="utf-8")
    for needle in [
        *EXPECTED_FILES,
        AUDIT_ACTION,
        "otelcol-contrib --config",
        "v0.155",
        "max_elapsed_time",
        "file_storage",
        "bearertokenauth",
        "memory_limiter",
        "batch",
        "otlp_http",
        "disk",
    ]:
        assert needle in readme, f"README.md does not mention {needle!r}"


# --------------------------------------------------------------------------------------
# the checker must fail on broken configurations


def _agent() -> dict:
    return copy.deepcopy(load_config(CONFIG_DIR / "agent.yaml"))


def _route(cfg: dict) -> dict:
    return cfg["connectors"]["routing/audit"]["table"][0]


def _mut_dangling_exporter(cfg):
    cfg["service"]["pipelines"]["logs/audit"]["exporters"] = ["otlp_http/otel-audit"]  # typo: '-' for '_'


def _mut_undefined_connector(cfg):
    del cfg["connectors"]["routing/audit"]


def _mut_connector_only_exported(cfg):
    del cfg["service"]["pipelines"]["logs/audit"]


def _mut_unused_exporter(cfg):
    cfg["exporters"]["otlp_http/spare"] = {"endpoint": "${env:OBSERVABILITY_ENDPOINT}"}


def _mut_undefined_service_extension(cfg):
    cfg["service"]["extensions"].append("file_storage/missing")


def _mut_dangling_storage(cfg):
    cfg["exporters"]["otlp_http/otel_audit"]["sending_queue"]["storage"] = "file_storage/missing"


def _mut_storage_not_enabled(cfg):
    cfg["service"]["extensions"].remove("file_storage/otel_audit_queue")


def _mut_dangling_authenticator(cfg):
    cfg["exporters"]["otlp_http/otel_audit"]["auth"]["authenticator"] = "bearertokenauth/missing"


def _mut_wrong_attribute(cfg):
    _route(cfg)["condition"] = 'attributes["audit.actions"] != nil'


def _mut_resource_context(cfg):
    _route(cfg)["context"] = "resource"


def _mut_value_test_instead_of_existence(cfg):
    _route(cfg)["condition"] = 'attributes["audit.action"] == "read"'


def _mut_error_mode_ignore(cfg):
    cfg["connectors"]["routing/audit"]["error_mode"] = "ignore"


def _mut_route_to_missing_pipeline(cfg):
    _route(cfg)["pipelines"] = ["logs/audit", "logs/nowhere"]


def _mut_transform_on_audit_path(cfg):
    cfg["processors"]["transform/scrub"] = {"log_statements": ['delete_key(attributes, "audit.reason")']}
    cfg["service"]["pipelines"]["logs/audit"]["processors"] = ["transform/scrub"]


def _mut_batch_before_routing(cfg):
    cfg["service"]["pipelines"]["logs/audit_in"]["processors"] = ["memory_limiter", "batch"]


def _mut_sampler_before_routing(cfg):
    cfg["processors"]["probabilistic_sampler"] = {"sampling_percentage": 10}
    cfg["service"]["pipelines"]["logs/audit_in"]["processors"] = ["memory_limiter", "probabilistic_sampler"]


def _mut_memory_queue_for_audit(cfg):
    del cfg["exporters"]["otlp_http/otel_audit"]["sending_queue"]["storage"]


def _mut_retry_budget(cfg):
    cfg["exporters"]["otlp_http/otel_audit"]["retry_on_failure"]["max_elapsed_time"] = "300s"


def _mut_retry_disabled(cfg):
    cfg["exporters"]["otlp_http/otel_audit"]["retry_on_failure"]["enabled"] = False


def _mut_no_auth(cfg):
    del cfg["exporters"]["otlp_http/otel_audit"]["auth"]


def _mut_old_exporter_name(cfg):
    cfg["exporters"]["otlphttp/backend"] = cfg["exporters"].pop("otlp_http/backend")
    for spec in cfg["service"]["pipelines"].values():
        spec["exporters"] = ["otlphttp/backend" if e == "otlp_http/backend" else e for e in spec["exporters"]]


def _mut_backend_only_gets_unmatched(cfg):
    # A common mistake: route non-audit records to the backend via default_pipelines and
    # forget that a matched record does not go to default_pipelines.
    pls = cfg["service"]["pipelines"]
    pls["logs/backend"]["receivers"] = ["routing/audit"]
    pls["logs/backend"]["processors"] = ["batch"]
    cfg["connectors"]["routing/audit"]["default_pipelines"] = ["logs/backend"]


def _mut_no_backend_logs(cfg):
    del cfg["service"]["pipelines"]["logs/backend"]


def _mut_everything_to_otel_audit(cfg):
    cfg["service"]["pipelines"]["logs/backend"]["exporters"] = ["otlp_http/backend", "otlp_http/otel_audit"]


BROKEN = [
    (_mut_dangling_exporter, "[reference]"),
    (_mut_undefined_connector, "[reference]"),
    (_mut_connector_only_exported, "[reference]"),
    (_mut_unused_exporter, "[unused]"),
    (_mut_undefined_service_extension, "[extension]"),
    (_mut_dangling_storage, "[extension]"),
    (_mut_storage_not_enabled, "[extension]"),
    (_mut_dangling_authenticator, "[extension]"),
    (_mut_wrong_attribute, "[routing]"),
    (_mut_resource_context, "[routing]"),
    (_mut_value_test_instead_of_existence, "[routing]"),
    (_mut_error_mode_ignore, "[routing]"),
    (_mut_route_to_missing_pipeline, "[routing]"),
    (_mut_transform_on_audit_path, "[audit-path]"),
    (_mut_batch_before_routing, "[audit-path]"),
    (_mut_sampler_before_routing, "[audit-path]"),
    (_mut_memory_queue_for_audit, "[audit-exporter]"),
    (_mut_retry_budget, "[audit-exporter]"),
    (_mut_retry_disabled, "[audit-exporter]"),
    (_mut_no_auth, "[audit-exporter]"),
    (_mut_old_exporter_name, "[deprecated]"),
    (_mut_backend_only_gets_unmatched, "[delivery]"),
    (_mut_no_backend_logs, "[delivery]"),
    (_mut_everything_to_otel_audit, "[delivery]"),
]


def test_checker_accepts_the_unmodified_agent():
    assert check_config(_agent()) == []


@pytest.mark.parametrize(("mutate", "category"), [pytest.param(m, c, id=m.__name__[5:]) for m, c in BROKEN])
def test_checker_catches_broken_configuration(mutate, category):
    cfg = _agent()
    mutate(cfg)
    problems = check_config(cfg)
    assert any(p.startswith(category) for p in problems), f"expected a {category} problem, got {problems}"


def test_loader_rejects_duplicate_keys(tmp_path: Path):
    path = tmp_path / "dup.yaml"
    path.write_text("exporters:\n  otlp_http/a: {}\n  otlp_http/a: {}\n", encoding="utf-8")
    with pytest.raises(CollectorConfigError, match="duplicate key"):
        load_config(path)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0.0), ("0", 0.0), ("0s", 0.0), ("300s", 300.0), ("1h30m", 5400.0), ("200ms", 0.2)],
)
def test_duration_parsing(value, seconds):
    assert duration_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [5, "5", "five minutes", "5 s"])
def test_duration_parsing_rejects_garbage(value):
    with pytest.raises(ValueError):
        duration_seconds(value)


# --------------------------------------------------------------------------------------
# the command line, as a user runs it on a configuration of their own


def _write(tmp_path: Path, cfg: dict, name: str = "collector.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def test_cli_accepts_the_shipped_configurations(capsys: pytest.CaptureFixture[str]):
    assert main(["check-collector", *map(str, CONFIG_FILES)]) == 0
    out = capsys.readouterr().out
    for path in CONFIG_FILES:
        assert f"{path}: OK (0 error(s), 0 warning(s))" in out


def test_cli_reports_a_broken_configuration_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cfg = _agent()
    _mut_retry_budget(cfg)
    path = _write(tmp_path, cfg)
    assert main(["check-collector", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: FAIL" in out
    assert "ERROR   [audit-exporter] otlp_http/otel_audit: retry_on_failure.max_elapsed_time '300s'" in out


def test_cli_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cfg = _agent()
    _mut_no_auth(cfg)
    path = _write(tmp_path, cfg)
    assert main(["check-collector", "--json", str(path)]) == 1
    result = json.loads(capsys.readouterr().out)[str(path)]
    assert any(p.startswith("[audit-exporter]") and "authenticate" in p for p in result["errors"])


def _renamed(cfg: dict) -> dict:
    """The agent as a user might write it: their own exporter names and endpoint variables."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    text = text.replace("${env:OTEL_AUDIT_ENDPOINT}", "https://audit-ingest.internal:4318")
    text = text.replace("${env:OBSERVABILITY_ENDPOINT}", "https://otlp.vendor.example")
    return yaml.safe_load(
        text.replace("otlp_http/otel_audit", "otlp_http/audit").replace("otlp_http/backend", "otlp_http/vendor")
    )


def test_cli_names_exporters_of_a_users_own_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = _write(tmp_path, _renamed(_agent()))
    # Without being told which exporter is which, the backend checks cannot pass.
    assert main(["check-collector", str(path)]) == 1
    assert "[delivery]" in capsys.readouterr().out
    assert (
        main(
            [
                "check-collector",
                "--audit-exporter",
                "otlp_http/audit",
                "--backend-exporter",
                "otlp_http/vendor",
                str(path),
            ]
        )
        == 0
    )
    capsys.readouterr()
    broken = _renamed(_agent())
    del broken["exporters"]["otlp_http/audit"]["auth"]
    path = _write(tmp_path, broken, "broken.yaml")
    assert (
        main(
            [
                "check-collector",
                "--audit-exporter",
                "otlp_http/audit",
                "--backend-exporter",
                "otlp_http/vendor",
                str(path),
            ]
        )
        == 1
    )
    assert "must authenticate" in capsys.readouterr().out


def test_unchecked_component_types_are_warnings_and_fail_only_with_strict(tmp_path: Path):
    cfg = _agent()
    cfg["processors"]["k8sattributes"] = {}
    cfg["service"]["pipelines"]["logs/backend"]["processors"].insert(1, "k8sattributes")
    problems = check_config(cfg)
    assert problems and all(severity(p) == "warning" for p in problems), problems
    path = _write(tmp_path, cfg)
    assert main(["check-collector", str(path)]) == 0
    assert main(["check-collector", "--strict", str(path)]) == 1


@pytest.mark.parametrize("content", ["- just\n- a list\n", "receivers: [\n", "a: 1\na: 2\n"])
def test_cli_refuses_what_is_not_a_configuration_with_exit_2(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    assert main(["check-collector", str(path)]) == 2
    assert "CANNOT CHECK" in capsys.readouterr().out
    assert main(["check-collector", str(tmp_path / "missing.yaml")]) == 2


def test_options_identify_exporters_by_id():
    options = CheckOptions(audit_exporters=frozenset({"otlp_http/x"}))
    assert options.sends_to_otel_audit("otlp_http/x", {})
    assert not options.sends_to_otel_audit("otlp_http/y", {"endpoint": "https://example"})
    assert options.sends_to_otel_audit("otlp_http/y", {"endpoint": "${env:OTEL_AUDIT_ENDPOINT}"})
