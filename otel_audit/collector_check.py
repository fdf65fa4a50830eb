"""Check an OpenTelemetry Collector configuration for the audit path: ``otel-audit check-collector``.

No collector binary and no network: the YAML is parsed and checked the way the
collector would wire it (component ids, connectors, extensions), plus the rules
that make the audit path safe:

* audit-tagged log records (attribute ``audit.action`` present) are routed by a
  routing connector whose condition tests exactly that attribute in the log context;
* the exporters they reach keep them in a persistent sending queue and retry
  without a time limit;
* nothing on their way can change, drop or sample them (only ``memory_limiter``);
* every record, audit or not, still reaches the normal backend;
* the exporter types are the current ones (``otlp_http`` / ``otlp_grpc``).

Exporters are told apart by the environment variable their endpoint uses (the
shipped configurations in ``collector-config/`` use ``OTEL_AUDIT_ENDPOINT`` for
otel-audit and ``OBSERVABILITY_ENDPOINT`` / ``OTEL_GATEWAY_ENDPOINT`` for the
normal backend) or by name (:class:`CheckOptions`, ``--audit-exporter`` and
``--backend-exporter`` on the command line).

The checker returns a list of problems (``"[category] message"``) instead of
raising, so the tests run the same code on deliberately broken configurations to
show that it catches what it claims to. Categories ``type`` and ``unused`` are
warnings (a component nobody checked, something defined and not used); every
other category is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from otel_audit.core.attributes import AUDIT_ACTION
from otel_audit.errors import CollectorConfigError as CollectorConfigError  # re-exported: raised here

SIGNALS = {"traces", "metrics", "logs", "profiles"}
SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")

# Component types these configurations may use: the ones whose configuration fields were
# checked against the collector / collector-contrib source (see collector-config/README.md). A new type
# must be checked the same way before it is added here.
KNOWN_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch"},
    "exporters": {"otlp_http", "otlp_grpc"},
    "connectors": {"routing"},
    "extensions": {"health_check", "file_storage", "bearertokenauth"},
}
# Renamed in collector v0.144.0; the old names still load but log a deprecation warning.
DEPRECATED_EXPORTER_TYPES = {"otlphttp": "otlp_http", "otlp": "otlp_grpc"}
STORAGE_EXTENSION_TYPES = {"file_storage"}
AUTH_EXTENSION_TYPES = {"bearertokenauth"}

# On the audit path only processors that never modify, drop, sample or hold data may run.
ALLOWED_ON_AUDIT_PATH = {"memory_limiter"}
# Named explicitly for clearer messages (any type not in the allow-list fails anyway).
# batch: acknowledges upstream before exporting and only logs export errors, so a record
# it holds is lost on a crash and a full persistent queue would drop instead of refuse.
FORBIDDEN_ON_AUDIT_PATH = {
    "filter",
    "transform",
    "attributes",
    "resource",
    "redaction",
    "probabilistic_sampler",
    "tail_sampling",
    "logdedup",
    "groupbyattrs",
    "batch",
}

# Endpoint environment variables that identify an exporter's role in the shipped configurations.
OTEL_AUDIT_ENDPOINT_VAR = "OTEL_AUDIT_ENDPOINT"
NORMAL_PATH_ENDPOINT_VARS = ("OBSERVABILITY_ENDPOINT", "OTEL_GATEWAY_ENDPOINT")

#: Problem categories that are warnings; every other category is an error.
WARNING_CATEGORIES = frozenset({"type", "unused"})


@dataclass(frozen=True)
class CheckOptions:
    """How exporters are recognized: by the environment variable of their endpoint, or by id."""

    audit_endpoint_vars: tuple[str, ...] = (OTEL_AUDIT_ENDPOINT_VAR,)
    backend_endpoint_vars: tuple[str, ...] = NORMAL_PATH_ENDPOINT_VARS
    audit_exporters: frozenset[str] = frozenset()  # exporter ids that send to otel-audit serve
    backend_exporters: frozenset[str] = frozenset()  # exporter ids of the normal observability backend

    def sends_to_otel_audit(self, exporter_id: str, conf: Any) -> bool:
        return exporter_id in self.audit_exporters or bool(endpoint_vars(conf) & set(self.audit_endpoint_vars))

    def is_backend(self, exporter_id: str, conf: Any) -> bool:
        return exporter_id in self.backend_exporters or bool(endpoint_vars(conf) & set(self.backend_endpoint_vars))


def severity(problem: str) -> str:
    """``"warning"`` or ``"error"`` for a problem string returned by :func:`check_config`."""
    category = problem[1 : problem.find("]")] if problem.startswith("[") else ""
    return "warning" if category in WARNING_CATEGORIES else "error"


# A retry budget shorter than this can drop an audit record during a long outage.
MIN_AUDIT_RETRY_SECONDS = 24 * 3600

ENV_REF = re.compile(r"\$\{[^}]*\}")
ENV_REF_OK = re.compile(r"^\$\{env:(?P<name>[A-Z_][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}$")
AUDIT_CONDITION = re.compile(r'^(?:log\.)?attributes\["(?P<key>[^"]*)"\] != nil$')
ATTRIBUTE_REF = re.compile(r'(?P<prefix>[\w.]*?)attributes\s*\[\s*"(?P<key>[^"]*)"\s*\]')


# --------------------------------------------------------------------------------------
# loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_config(path: Path) -> dict[str, Any]:
    """Parse a collector configuration file; raises :class:`CollectorConfigError` with the reason."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # SafeLoader subclass: no arbitrary objects
    except OSError as exc:
        raise CollectorConfigError(f"{path}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CollectorConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise CollectorConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CollectorConfigError(f"{path}: the top level must be a mapping (receivers:, exporters:, service: ...)")
    return data


# --------------------------------------------------------------------------------------
# helpers


def ctype(component_id: str) -> str:
    """``otlp_http/otel_audit`` -> ``otlp_http``."""
    return component_id.split("/", 1)[0]


def section(cfg: dict[str, Any], name: str) -> dict[Any, Any]:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def pipelines(cfg: dict[str, Any]) -> dict[Any, Any]:
    service = cfg.get("service") or {}
    value = service.get("pipelines")
    return value if isinstance(value, dict) else {}


def listed(spec: Any, key: str) -> list[str]:
    value = (spec or {}).get(key) if isinstance(spec, dict) else None
    return list(value) if isinstance(value, list) else []


def env_default(value: Any) -> Any:
    """The value a ``${env:X:-default}`` falls back to (parsed as YAML), else the value."""
    if isinstance(value, str):
        m = ENV_REF_OK.match(value.strip())
        if m:
            return yaml.safe_load(m.group("default")) if m.group("default") is not None else None
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: Any) -> float:
    """Go ``time.ParseDuration`` subset; a bare 0 is allowed as in the collector."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != 0:
            raise ValueError(f"duration {value!r} has no unit")
        return 0.0
    text = str(value).strip()
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def endpoint_vars(exporter_cfg: Any) -> set[str]:
    endpoint = (exporter_cfg or {}).get("endpoint", "") if isinstance(exporter_cfg, dict) else ""
    return {m.group("name") for m in map(ENV_REF_OK.match, ENV_REF.findall(str(endpoint))) if m}


def is_persistent(exporter_cfg: Any) -> bool:
    queue = (exporter_cfg or {}).get("sending_queue") if isinstance(exporter_cfg, dict) else None
    return isinstance(queue, dict) and queue.get("enabled", True) is not False and bool(queue.get("storage"))


def is_audit_route(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    condition = " ".join(str(item.get("condition", "")).split())
    m = AUDIT_CONDITION.match(condition)
    return bool(m and m.group("key") == AUDIT_ACTION)


def connector_targets(cfg: dict[str, Any], connector_id: str, matched: bool) -> list[str]:
    """Pipelines a log record leaves a connector for; ``matched``: it carries audit.action."""
    conf = section(cfg, "connectors").get(connector_id) or {}
    if ctype(connector_id) == "routing":
        targets = [
            p for item in listed(conf, "table") if matched and is_audit_route(item) for p in listed(item, "pipelines")
        ]
        return targets or listed(conf, "default_pipelines")
    # any other connector (e.g. forward) hands data to every pipeline that receives from it
    return [name for name, spec in pipelines(cfg).items() if connector_id in listed(spec, "receivers")]


def entry_log_pipelines(cfg: dict[str, Any]) -> list[str]:
    connectors = section(cfg, "connectors")
    return [
        name
        for name, spec in pipelines(cfg).items()
        if ctype(name) == "logs" and any(r not in connectors for r in listed(spec, "receivers"))
    ]


def trace_log_record(cfg: dict[str, Any], matched: bool) -> tuple[set[str], set[str]]:
    """Follow a log record from the receivers: (exporters reached, pipelines on the way to a
    persistent exporter)."""
    pls = pipelines(cfg)
    connectors = section(cfg, "connectors")
    exporters = section(cfg, "exporters")
    reached: set[str] = set()
    audit_path: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> bool:
        if name in stack or name not in pls:
            return False
        leads_to_persistent = False
        for exp in listed(pls[name], "exporters"):
            if exp in connectors:
                for target in connector_targets(cfg, exp, matched):
                    leads_to_persistent |= visit(target, (*stack, name))
            else:
                reached.add(exp)
                leads_to_persistent |= is_persistent(exporters.get(exp))
        if leads_to_persistent:
            audit_path.add(name)
        return leads_to_persistent

    for entry in entry_log_pipelines(cfg):
        visit(entry, ())
    return reached, audit_path


# --------------------------------------------------------------------------------------
# the checker


def check_config(cfg: dict[str, Any], options: CheckOptions | None = None) -> list[str]:
    """Every problem found in one collector configuration, as ``[category] message``."""
    options = options or CheckOptions()
    problems: list[str] = []
    problems += check_references(cfg)
    problems += check_types(cfg)
    problems += check_extensions(cfg)
    problems += check_routing(cfg)
    problems += check_audit_path(cfg, options)
    problems += check_delivery(cfg, options)
    return problems


def check_references(cfg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pls = pipelines(cfg)
    if not pls:
        return ["[reference] service.pipelines is empty or missing"]
    receivers, processors = section(cfg, "receivers"), section(cfg, "processors")
    exporters, connectors = section(cfg, "exporters"), section(cfg, "connectors")
    as_exporter: set[str] = set()
    as_receiver: set[str] = set()
    used: dict[str, set[str]] = {name: set() for name in ("receivers", "processors", "exporters", "connectors")}

    for name, spec in pls.items():
        if ctype(name) not in SIGNALS:
            out.append(f"[reference] pipeline {name!r}: unknown signal {ctype(name)!r}")
        if not isinstance(spec, dict):
            out.append(f"[reference] pipeline {name!r} is not a mapping")
            continue
        if not listed(spec, "receivers"):
            out.append(f"[reference] pipeline {name!r} has no receivers")
        if not listed(spec, "exporters"):
            out.append(f"[reference] pipeline {name!r} has no exporters")
        for rid in listed(spec, "receivers"):
            if rid in connectors:
                as_receiver.add(rid)
                used["connectors"].add(rid)
            elif rid in receivers:
                used["receivers"].add(rid)
            else:
                out.append(f"[reference] pipeline {name!r}: receiver {rid!r} is not defined under receivers/connectors")
        for pid in listed(spec, "processors"):
            if pid in processors:
                used["processors"].add(pid)
            else:
                out.append(f"[reference] pipeline {name!r}: processor {pid!r} is not defined under processors")
        if len(set(listed(spec, "processors"))) != len(listed(spec, "processors")):
            out.append(f"[reference] pipeline {name!r}: a processor is listed twice")
        for eid in listed(spec, "exporters"):
            if eid in connectors:
                as_exporter.add(eid)
                used["connectors"].add(eid)
            elif eid in exporters:
                used["exporters"].add(eid)
            else:
                out.append(f"[reference] pipeline {name!r}: exporter {eid!r} is not defined under exporters/connectors")
        processor_types = [ctype(pid) for pid in listed(spec, "processors")]
        if "memory_limiter" in processor_types and processor_types[0] != "memory_limiter":
            out.append(f"[reference] pipeline {name!r}: memory_limiter must be the first processor")

    for cid in connectors:
        if cid in as_exporter and cid not in as_receiver:
            out.append(f"[reference] connector {cid!r} is an exporter of a pipeline but no pipeline receives from it")
        if cid in as_receiver and cid not in as_exporter:
            out.append(f"[reference] connector {cid!r} feeds pipelines but no pipeline exports to it")
    for kind, used_ids in used.items():
        for cid in section(cfg, kind):
            if cid not in used_ids:
                out.append(f"[unused] {kind[:-1]} {cid!r} is defined but used by no pipeline")
    return out


def check_types(cfg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for kind in SECTIONS:
        for cid in section(cfg, kind):
            t = ctype(cid)
            if kind == "exporters" and t in DEPRECATED_EXPORTER_TYPES:
                out.append(
                    f"[deprecated] exporter {cid!r}: type {t!r} was renamed to "
                    f"{DEPRECATED_EXPORTER_TYPES[t]!r} in collector v0.144.0"
                )
            elif t not in KNOWN_TYPES[kind]:
                out.append(f"[type] {kind[:-1]} {cid!r}: type {t!r} has not been checked against the collector source")
    return out


def check_extensions(cfg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    extensions = section(cfg, "extensions")
    enabled = listed(cfg.get("service"), "extensions")
    for eid in enabled:
        if eid not in extensions:
            out.append(f"[extension] service.extensions names {eid!r}, which is not defined under extensions")
    for eid in extensions:
        if eid not in enabled:
            out.append(f"[unused] extension {eid!r} is defined but not enabled in service.extensions")

    def need(ref: Any, where: str, kinds: set[str], what: str) -> None:
        if not isinstance(ref, str) or not ref:
            out.append(f"[extension] {where}: empty {what} reference")
        elif ref not in extensions:
            out.append(f"[extension] {where}: {what} {ref!r} is not a defined extension")
        elif ref not in enabled:
            out.append(f"[extension] {where}: {what} {ref!r} is not enabled in service.extensions")
        elif ctype(ref) not in kinds:
            out.append(f"[extension] {where}: {what} {ref!r} is not of type {sorted(kinds)}")

    for kind in ("receivers", "exporters", "processors", "connectors"):
        for cid, conf in section(cfg, kind).items():
            for path, node in walk(conf):
                where = f"{kind[:-1]} {cid!r} at {'.'.join(map(str, path)) or '.'}"
                if isinstance(node, dict) and "storage" in node and path and path[-1] == "sending_queue":
                    need(node["storage"], where, STORAGE_EXTENSION_TYPES, "storage")
                if isinstance(node, dict) and path and path[-1] == "auth":
                    need(node.get("authenticator"), where, AUTH_EXTENSION_TYPES, "authenticator")
    return out


def check_routing(cfg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pls = pipelines(cfg)
    routers = {cid: conf for cid, conf in section(cfg, "connectors").items() if ctype(cid) == "routing"}
    if not any(ctype(name) == "logs" for name in pls):
        return out
    if not routers:
        return ["[routing] no routing connector: audit records are not selected"]
    for cid, conf in routers.items():
        conf = conf or {}
        if conf.get("error_mode") != "propagate":
            out.append(
                f"[routing] {cid}: error_mode must be set explicitly to 'propagate' (the default changed "
                "between versions, and 'ignore' would send a record whose condition failed to default_pipelines)"
            )
        table = listed(conf, "table")
        if not table:
            out.append(f"[routing] {cid}: empty table")
        routed: set[str] = set(listed(conf, "default_pipelines"))
        for index, item in enumerate(table):
            where = f"{cid} table[{index}]"
            if not isinstance(item, dict):
                out.append(f"[routing] {where}: not a mapping")
                continue
            if "statement" in item or "condition" not in item:
                out.append(f"[routing] {where}: use exactly one OTTL 'condition' (no 'statement')")
            condition = " ".join(str(item.get("condition", "")).split())
            keys = [m.group("key") for m in ATTRIBUTE_REF.finditer(condition)]
            if keys != [AUDIT_ACTION]:
                out.append(f"[routing] {where}: condition must reference exactly {AUDIT_ACTION!r}, references {keys}")
            context = item.get("context")
            if context != "log" and not condition.startswith("log."):
                out.append(
                    f"[routing] {where}: context must be 'log' (the attribute is a log record attribute, "
                    f"not a resource one), found {context!r}"
                )
            if not is_audit_route(item):
                out.append(
                    f"[routing] {where}: condition {condition!r} is not the existence test "
                    f'attributes["{AUDIT_ACTION}"] != nil'
                )
            if not listed(item, "pipelines"):
                out.append(f"[routing] {where}: no pipelines")
            routed.update(listed(item, "pipelines"))
        for target in sorted(routed):
            if target not in pls:
                out.append(f"[routing] {cid}: routes to pipeline {target!r}, which is not defined")
            elif cid not in listed(pls[target], "receivers"):
                out.append(f"[routing] {cid}: routes to pipeline {target!r}, which does not list it as a receiver")
            elif ctype(target) != "logs":
                out.append(f"[routing] {cid}: routes to non-logs pipeline {target!r}")
        for name, spec in pls.items():
            if cid in listed(spec, "receivers") and name not in routed:
                out.append(f"[routing] {cid}: pipeline {name!r} receives from it but no route or default leads there")
    return out


def check_audit_path(cfg: dict[str, Any], options: CheckOptions | None = None) -> list[str]:
    options = options or CheckOptions()
    out: list[str] = []
    exporters = section(cfg, "exporters")
    _, audit_pipelines = trace_log_record(cfg, matched=True)
    for name in sorted(audit_pipelines):
        for pid in listed(pipelines(cfg)[name], "processors"):
            t = ctype(pid)
            if t in FORBIDDEN_ON_AUDIT_PATH:
                out.append(f"[audit-path] pipeline {name!r}: processor {pid!r} ({t}) must not touch audit records")
            elif t not in ALLOWED_ON_AUDIT_PATH:
                out.append(f"[audit-path] pipeline {name!r}: processor {pid!r} is not in the audit allow-list")

    # every exporter that audit routes lead to (following connectors) is an audit exporter
    audit_exporters: set[str] = set()
    connectors = section(cfg, "connectors")
    todo = [
        p
        for cid in connectors
        if ctype(cid) == "routing"
        for item in listed(connectors[cid], "table")
        if is_audit_route(item)
        for p in listed(item, "pipelines")
    ]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in pipelines(cfg):
            continue
        seen.add(name)
        for eid in listed(pipelines(cfg)[name], "exporters"):
            if eid in connectors:
                todo.extend(connector_targets(cfg, eid, matched=True))
            else:
                audit_exporters.add(eid)
    audit_exporters |= {eid for eid, conf in exporters.items() if options.sends_to_otel_audit(eid, conf)}

    for eid in sorted(audit_exporters):
        conf = exporters.get(eid)
        if not isinstance(conf, dict):
            continue  # reported as a dangling reference
        where = f"[audit-exporter] {eid}"
        queue = conf.get("sending_queue")
        if not isinstance(queue, dict) or queue.get("enabled", True) is False:
            out.append(f"{where}: needs an enabled sending_queue")
            queue = {}
        if not queue.get("storage"):
            out.append(f"{where}: sending_queue.storage must name a storage extension (persistent queue)")
        if queue.get("wait_for_result"):
            out.append(f"{where}: wait_for_result is not supported with a persistent queue")
        size = env_default(queue.get("queue_size", 1))
        if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            out.append(f"{where}: sending_queue.queue_size must be a positive integer (or an env default that is)")
        retry = conf.get("retry_on_failure")
        if not isinstance(retry, dict):
            retry = {}
        if retry.get("enabled") is not True:
            out.append(f"{where}: retry_on_failure.enabled must be true (explicitly)")
        if "max_elapsed_time" not in retry:
            out.append(f"{where}: retry_on_failure.max_elapsed_time must be set (default 300s drops after 5 min)")
        else:
            try:
                budget = duration_seconds(retry["max_elapsed_time"])
            except ValueError as exc:
                out.append(f"{where}: {exc}")
            else:
                if budget != 0 and budget < MIN_AUDIT_RETRY_SECONDS:
                    out.append(
                        f"{where}: retry_on_failure.max_elapsed_time {retry['max_elapsed_time']!r} "
                        "can drop records; use 0"
                    )
        if options.sends_to_otel_audit(eid, conf):
            auth = conf.get("auth")
            if not isinstance(auth, dict) or not auth.get("authenticator"):
                out.append(f"{where}: the otel-audit exporter must authenticate (auth.authenticator)")
            if ctype(eid) != "otlp_http":
                out.append(f"{where}: otel-audit ingest is OTLP/HTTP; use an otlp_http exporter")
    return out


def check_delivery(cfg: dict[str, Any], options: CheckOptions | None = None) -> list[str]:
    options = options or CheckOptions()
    out: list[str] = []
    if not any(ctype(name) == "logs" for name in pipelines(cfg)):
        return out
    exporters = section(cfg, "exporters")
    normal = {eid for eid, conf in exporters.items() if options.is_backend(eid, conf)}
    persistent = {eid for eid, conf in exporters.items() if is_persistent(conf)}
    to_otel_audit = {eid for eid, conf in exporters.items() if options.sends_to_otel_audit(eid, conf)}

    audit_reached, _ = trace_log_record(cfg, matched=True)
    other_reached, _ = trace_log_record(cfg, matched=False)
    if not audit_reached & persistent:
        out.append("[delivery] an audit record reaches no exporter with a persistent queue")
    if not audit_reached & normal:
        out.append("[delivery] an audit record does not reach the normal backend")
    if not other_reached & normal:
        out.append("[delivery] a non-audit log record does not reach the normal backend")
    if other_reached & to_otel_audit:
        out.append("[delivery] non-audit log records are sent to otel-audit")
    if other_reached & persistent:
        out.append("[delivery] non-audit log records compete for the audit persistent queue")
    for signal in ("traces", "metrics"):
        if not any(
            ctype(name) == signal and set(listed(spec, "exporters")) & normal for name, spec in pipelines(cfg).items()
        ):
            out.append(f"[delivery] no {signal} pipeline exports to the normal backend")
    return out
