"""Gather what an auditor's report shows: the verdict, coverage, activity, failed attempts, timelines.

Everything is read in one REPEATABLE READ, READ ONLY transaction, so the
verdict, the counts and the charts describe the very same rows, however many
are committed meanwhile. Nothing is written. Every figure is aggregated by
PostgreSQL (a few hundred numbers come back, never every record), which is
what keeps a report over millions of records to seconds and kilobytes.

The result is a plain JSON-ready ``dict`` (``otel-audit report --format json``
prints it; :mod:`otel_audit.report.html` draws it).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from otel_audit import __version__
from otel_audit.core.keys import VerifyKey
from otel_audit.errors import InvalidInput
from otel_audit.query import (
    RESULTS,
    TIMELINE_COLUMNS,
    QueryResult,
    RecordFilter,
    find_records,
    quarantined_records,
    require_tables,
)
from otel_audit.report.controls import control_mapping
from otel_audit.sink.schema import current_version
from otel_audit.verify import VerificationReport, VerifyOptions, verify_database
from otel_audit.verify.database import _one_snapshot  # one REPEATABLE READ, READ ONLY transaction
from otel_audit.verify.report import Severity

__all__ = ["REPORT_FORMAT", "TIMELINE_COLUMNS", "ReportOptions", "build_report"]

REPORT_FORMAT = "otel-audit.report.v1"


# The most rows of each kind the report lists (its JSON says how many there were in all).
MAX_CHAINS = 500
MAX_FINDINGS = 2000


@dataclass
class ReportOptions:
    since: datetime | None = None  # default: 30 days before ``until``
    until: datetime | None = None  # default: now
    #: key id -> public key (as for verify); None: checkpoint signatures are not checked
    trusted_keys: Mapping[str, VerifyKey] | None = None
    trusted_key_files: Sequence[str] = ()  # shown in the commands to re-run
    witnesses: Sequence[Any] = ()  # otel_audit.witness.Witness objects
    witness_dirs: Sequence[str] = ()
    max_unanchored_age: float | None = None
    strict: bool = False
    threshold: int = 5  # failed attempts per actor above which the actor is listed (the seed's 5)
    top: int = 10
    traces: Sequence[str] = ()  # timelines to include
    sessions: Sequence[str] = ()
    timeline_limit: int = 500
    workers: int | None = None
    #: how the commands to re-run name the database (never a password)
    dsn_shown: str = '"$OTEL_AUDIT_DSN"'
    now: datetime | None = None


def build_report(conn: psycopg.Connection, options: ReportOptions | None = None) -> dict[str, Any]:
    """The report of the period as a JSON-ready dict (see the module docstring)."""
    options = options or ReportOptions()
    now = options.now or datetime.now(timezone.utc)
    until = options.until or now
    since = options.since or until - timedelta(days=30)
    if since >= until:
        raise InvalidInput(
            f"the period is empty: --since {since.isoformat()} is not before --until {until.isoformat()}"
        )
    require_tables(conn, ("audit_logs", "audit_chains", "audit_quarantine"))
    with _one_snapshot(conn):  # verify_database runs inside it as it is
        started = datetime.now(timezone.utc)
        verification = verify_database(
            conn,
            VerifyOptions(
                trusted_keys=options.trusted_keys,
                witnesses=list(options.witnesses),
                max_unanchored_age=options.max_unanchored_age,
                workers=options.workers,
                progress=False,
                now=now.timestamp(),
            ),
        )
        snapshot_time = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        report: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "generator": f"otel-audit {__version__}",
            "generated_at": _iso(started),
            "snapshot_at": _iso(snapshot_time),
            "period": {"since": _iso(since), "until": _iso(until), "bucket": _bucket(since, until)},
            "database": _database(conn),
        }
        report["verification"] = _verification(verification, options)
        report["retention"] = _retention(conn, now)
        # Aggregates are short plans run once: compiling them (JIT) costs more than it saves.
        conn.execute("SET LOCAL jit = off")
        scan = _scan_period(conn, since, until, _bucket(since, until))
        tops = _scan_tops(conn, since, until, options)
        report["coverage"] = _coverage(conn, since, until, verification, scan)
        report["activity"] = _activity(since, until, scan, tops)
        report["failed_attempts"] = _failures(since, until, options, tops)
        report["problems"] = _problems(conn, since, until, scan["total"][5])
        report["checkpoints"] = _checkpoints(conn, options)
        report["timelines"] = _timelines(conn, options)
    report["controls"] = control_mapping(report)
    report["commands"] = commands(report, options)
    return report


# ---------------------------------------------------------------------- pieces
def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _bucket(since: datetime, until: datetime) -> str:
    span = until - since
    if span <= timedelta(days=3):
        return "hour"
    if span <= timedelta(days=190):
        return "day"
    return "week"


def _database(conn: psycopg.Connection) -> dict[str, Any]:
    info = conninfo_to_dict(conn.info.dsn)
    row = conn.execute("SELECT current_database(), current_schema(), current_user, version()").fetchone()
    assert row is not None
    return {
        "host": info.get("host") or info.get("hostaddr") or "local socket",
        "port": info.get("port"),
        "database": row[0],
        "schema": row[1],
        "user": row[2],
        "server": row[3].split(",")[0],
        "schema_version": current_version(conn),
        "client": f"{platform.node()} pid {os.getpid()}",
    }


def _verification(result: VerificationReport, options: ReportOptions) -> dict[str, Any]:
    data = result.to_dict()
    findings = data.pop("findings")
    data.pop("chains")  # per chain: in coverage
    data["chains_verified"] = len(result.chains)
    counts: dict[str, int] = {}
    for finding in result.findings:
        counts[finding.severity.value] = counts.get(finding.severity.value, 0) + 1
    exit_code = result.exit_code(strict=options.strict)
    if not result.ok:
        verdict = "INTEGRITY FAILURE"
    elif exit_code:
        verdict = "WARNINGS (failing under --strict)"
    else:
        verdict = "INTACT"
    severity_order = {Severity.ERROR.value: 0, Severity.WARNING.value: 1, Severity.INFO.value: 2}
    findings.sort(key=lambda f: (severity_order.get(f["severity"], 3), f.get("chain_id") or "", f.get("seq") or 0))
    data.update(
        {
            "verdict": verdict,
            "exit_code": exit_code,
            "strict": options.strict,
            "scope": "every chain in the database, in whole (a chain's links cannot be checked in part)",
            "info": counts.get(Severity.INFO.value, 0),
            "trusted_keys": sorted(options.trusted_keys) if options.trusted_keys is not None else None,
            "trusted_key_files": list(options.trusted_key_files),
            "witnesses": [getattr(w, "description", str(w)) for w in options.witnesses],
            "signatures_checked": options.trusted_keys is not None,
            "max_unanchored_age_seconds": options.max_unanchored_age,
            "findings_total": len(findings),
            "findings": findings,  # all of them (the page lists the first MAX_FINDINGS)
        }
    )
    return data


def _retention(conn: psycopg.Connection, now: datetime) -> dict[str, Any]:
    row = conn.execute("SELECT min(timestamp), max(timestamp), count(*) FROM audit_logs").fetchone()
    assert row is not None
    oldest, newest, total = row
    days = (now - oldest).days if oldest is not None else None
    return {
        "oldest_record": _iso(oldest),
        "newest_record": _iso(newest),
        "records_in_database": total,
        "days_held": days,
        "months_held": None if days is None else round(days / 30.44, 1),
    }


# ---------------------------------------------------------------------- the period's aggregates
# Everything the report counts comes from six aggregate queries over the period's rows, each a parallel
# scan with a hash aggregate (measured faster here than one scan with several grouping sets, which
# PostgreSQL runs in one process and often by sorting); what comes back is a few hundred or thousand
# numbers however many records the period holds.

_PERIOD = "timestamp >= %(since)s AND timestamp < %(until)s"

_CHAINS_SQL = f"""
SELECT chain_id::text, count(*), min(timestamp), max(timestamp), min(seq), max(seq),
       count(*) FILTER (WHERE cardinality(problems) > 0),
       count(actor_id), count(action), count(resource_id), count(ip_address), count(session_id),
       count(trace_id), count(reason), count(service_name)
FROM audit_logs WHERE {_PERIOD} GROUP BY chain_id
"""

_BUCKETS_SQL = f"""
SELECT date_trunc(%(bucket)s, timestamp AT TIME ZONE 'UTC') AS b,
       count(*) FILTER (WHERE result = 'success'),
       count(*) FILTER (WHERE result = 'failure'),
       count(*) FILTER (WHERE result = 'denied'),
       count(*) FILTER (WHERE result IS NULL OR result NOT IN ('success', 'failure', 'denied')),
       count(*) FILTER (WHERE cardinality(problems) > 0)
FROM audit_logs WHERE {_PERIOD} GROUP BY 1
"""

_SERVICE_DAYS_SQL = f"""
SELECT coalesce(service_name, '(no service name)'), (timestamp AT TIME ZONE 'UTC')::date
FROM audit_logs WHERE {_PERIOD} GROUP BY 1, 2
"""

# The top values of one key, with how many distinct values there are.
_TOP_SQL = """
SELECT * FROM (
    SELECT {key}, count(*) AS records, count(*) FILTER (WHERE result = 'failure') AS failure,
           count(*) FILTER (WHERE result = 'denied') AS denied, max(timestamp) AS last,
           count(*) OVER () AS distinct_values
    FROM audit_logs WHERE {period} GROUP BY {key}) t
ORDER BY records DESC, {key} LIMIT %(top)s
"""

# Top actors and the actors above the failed-attempts threshold (the seed's question) from one scan.
_ACTORS_SQL = f"""
WITH a AS (
    SELECT actor_id, count(*) AS records, count(*) FILTER (WHERE result = 'failure') AS failure,
           count(*) FILTER (WHERE result = 'denied') AS denied, max(timestamp) AS last,
           min(timestamp) FILTER (WHERE result IN ('failure', 'denied')) AS first_failed,
           max(timestamp) FILTER (WHERE result IN ('failure', 'denied')) AS last_failed
    FROM audit_logs WHERE {_PERIOD} GROUP BY actor_id
)
(SELECT 'top', *, count(*) OVER () FROM a ORDER BY records DESC, actor_id LIMIT %(top)s)
UNION ALL
(SELECT 'failing', *, count(*) OVER () FROM a WHERE failure + denied > %(threshold)s
 ORDER BY failure + denied DESC, actor_id LIMIT %(max_failing)s)
"""
_MAX_FAILING = 50


def _scan_period(conn: psycopg.Connection, since: datetime, until: datetime, bucket: str) -> dict[str, Any]:
    period = {"since": since, "until": until}
    chains: dict[str, tuple[Any, ...]] = {}
    total = [0] * 14
    for chain_id, *counts in conn.execute(_CHAINS_SQL, period):
        chains[chain_id] = tuple(counts[:6])
        for i in (0, 5, *range(6, 14)):
            total[i] += counts[i]
    buckets = {
        b: dict(zip(("success", "failure", "denied", "other", "problems"), counts, strict=True))
        for b, *counts in conn.execute(_BUCKETS_SQL, {**period, "bucket": bucket})
    }
    service_days: dict[str, list[Any]] = {}
    for service, day in conn.execute(_SERVICE_DAYS_SQL, period):
        service_days.setdefault(service, []).append(day)
    return {"chains": chains, "buckets": buckets, "service_days": service_days, "total": tuple(total)}


def _scan_tops(conn: psycopg.Connection, since: datetime, until: datetime, options: ReportOptions) -> dict[str, Any]:
    params = {
        "since": since,
        "until": until,
        "top": options.top,
        "threshold": options.threshold,
        "max_failing": _MAX_FAILING,
    }
    out: dict[str, Any] = {"top_actors": [], "failing": [], "failing_total": 0, "distinct_actors": 0}
    for kind, actor, records, failure, denied, last, first_failed, last_failed, n in conn.execute(_ACTORS_SQL, params):
        if kind == "top":
            out["distinct_actors"] = n
            out["top_actors"].append(
                {"actor_id": actor, "records": records, "failure": failure, "denied": denied, "last": _iso(last)}
            )
        else:
            out["failing_total"] = n
            out["failing"].append(
                {
                    "actor_id": actor,
                    "failed_attempts": failure + denied,
                    "denied": denied,
                    "first_attempt": _iso(first_failed),
                    "last_attempt": _iso(last_failed),
                }
            )
    for name, key in (("resources", "resource_type, resource_id"), ("actions", "action")):
        names = key.split(", ")
        rows = conn.execute(_TOP_SQL.format(key=key, period=_PERIOD), params).fetchall()
        out[f"top_{name}"] = [
            {
                **dict(zip(names, r[: len(names)], strict=True)),
                "records": r[len(names)],
                "failure": r[len(names) + 1],
                "denied": r[len(names) + 2],
                "last": _iso(r[len(names) + 3]),
            }
            for r in rows
        ]
        out[f"distinct_{name}"] = rows[0][-1] if rows else 0
    return out


def _coverage(
    conn: psycopg.Connection,
    since: datetime,
    until: datetime,
    verification: VerificationReport,
    scan: Mapping[str, Any],
) -> dict[str, Any]:
    in_period = scan["chains"]
    registry = {
        r[0]: (r[1], r[2]) for r in conn.execute("SELECT chain_id::text, emitter, created_at FROM audit_chains")
    }
    quarantined = [q for q in quarantined_records(conn) if _in(q.get("timestamp"), since, until)]
    q_per_chain: dict[str, int] = {}
    for q in quarantined:
        q_per_chain[q["chain_id"]] = q_per_chain.get(q["chain_id"], 0) + 1
    findings_per_chain: dict[str, list[dict[str, Any]]] = {}
    for finding in verification.findings:
        if finding.chain_id:
            findings_per_chain.setdefault(finding.chain_id, []).append(finding.to_dict())

    chains = []
    active = set(in_period) | set(q_per_chain)
    # Also list chains outside the period that have errors: an auditor must see them.
    with_errors = {f.chain_id for f in verification.findings if f.chain_id and f.severity is Severity.ERROR}
    for chain_id in sorted(active | with_errors):
        summary = verification.chains.get(chain_id)
        emitter, created = registry.get(chain_id, (None, None))
        emitter = emitter if isinstance(emitter, dict) else {}
        count, first, last, first_seq, last_seq, flagged = in_period.get(chain_id, (0, None, None, None, None, 0))
        extra = summary.extra if summary is not None else {}
        chains.append(
            {
                "chain_id": chain_id,
                "registered": chain_id in registry,
                "kind": emitter.get("kind"),
                "service": emitter.get("service_name"),
                "host": emitter.get("host_name"),
                "pid": emitter.get("pid"),
                "created": _iso(created),
                "records_in_period": count,
                "first_in_period": _iso(first),
                "last_in_period": _iso(last),
                "first_seq_in_period": first_seq,
                "last_seq_in_period": last_seq,
                "problem_records_in_period": flagged,
                "quarantined_in_period": q_per_chain.get(chain_id, 0),
                "records_total": summary.records if summary is not None else None,
                "last_seq": summary.last_seq if summary is not None else None,
                "closed": extra.get("closed"),
                "closed_by": extra.get("closed_by") or extra.get("adopted_by"),
                "checkpoints": extra.get("checkpoints"),
                "anchored_seq": extra.get("anchored_seq"),
                "unanchored": extra.get("unanchored"),
                "errors": summary.errors if summary is not None else 0,
                "active_in_period": chain_id in active,
                "findings": [
                    {k: v for k, v in f.items() if k in ("kind", "severity", "seq", "count")}
                    for f in findings_per_chain.get(chain_id, [])
                ],
            }
        )
    chains.sort(key=lambda c: (-(c["errors"] or 0), c["service"] or "", c["host"] or "", c["first_in_period"] or ""))

    services: dict[str, dict[str, Any]] = {}
    for chain in chains:
        if not chain["active_in_period"]:
            continue
        name = chain["service"] or "(no service name)"
        entry = services.setdefault(
            name,
            {
                "service": name,
                "chains": 0,
                "hosts": set(),
                "records": 0,
                "first": None,
                "last": None,
                "open_chains": 0,
                "chains_with_errors": 0,
            },
        )
        entry["chains"] += 1
        if chain["host"]:
            entry["hosts"].add(chain["host"])
        entry["records"] += chain["records_in_period"]
        for key, pick in (("first", min), ("last", max)):
            value = chain[f"{key}_in_period"]
            if value is not None:
                entry[key] = value if entry[key] is None else pick(entry[key], value)
        if chain["closed"] is not True:
            entry["open_chains"] += 1
        if chain["errors"]:
            entry["chains_with_errors"] += 1
    quiet = _quiet_days(scan["service_days"])
    service_list = []
    for entry in sorted(services.values(), key=lambda e: e["service"]):
        entry["hosts"] = sorted(entry["hosts"])
        entry["quiet_days"] = quiet.get(entry["service"], [])
        service_list.append(entry)

    gaps = [
        f.to_dict()
        for f in verification.findings
        if f.kind.value in ("missing", "truncated", "chain_deleted", "checkpoint_missing")
    ]
    unanchored = [f.to_dict() for f in verification.findings if f.kind.value in ("unanchored", "unclosed")]
    return {
        "chains_active": len(active),
        "chains_registered": len(registry),
        "chains_total_listed": len(chains),
        "chains": chains[:MAX_CHAINS],
        "services": service_list,
        "quarantined_in_period": len(quarantined),
        "quarantined": [
            {
                k: q.get(k)
                for k in (
                    "timestamp",
                    "chain_id",
                    "seq",
                    "actor_id",
                    "action",
                    "resource_type",
                    "resource_id",
                    "result",
                    "problems",
                )
            }
            for q in quarantined[:100]
        ],
        "gaps": gaps,
        "unanchored": unanchored,
    }


def _in(value: Any, since: datetime, until: datetime) -> bool:
    return isinstance(value, datetime) and since <= value < until


def _quiet_days(service_days: Mapping[str, list[Any]]) -> dict[str, list[str]]:
    """Per service: the days (UTC) between its first and last active day of the period with no record."""
    quiet: dict[str, list[str]] = {}
    for service, active in service_days.items():
        active = sorted(active)
        have = set(active)
        missing = []
        day = active[0]
        while day <= active[-1]:
            if day not in have:
                missing.append(day.isoformat())
            day += timedelta(days=1)
        quiet[service] = missing
    return quiet


def _activity(since: datetime, until: datetime, scan: Mapping[str, Any], tops: Mapping[str, Any]) -> dict[str, Any]:
    bucket = _bucket(since, until)
    counted = dict(scan["buckets"])
    empty = {"success": 0, "failure": 0, "denied": 0, "other": 0, "problems": 0}
    buckets = []
    for start in [
        *_bucket_starts(since, until, bucket),
        *sorted(set(counted) - set(_bucket_starts(since, until, bucket))),
    ]:
        values = counted.get(start, empty)
        buckets.append({"start": _iso(start.replace(tzinfo=timezone.utc)), **values})
    total = scan["total"]
    fields = dict(
        zip(
            ("actor_id", "action", "resource_id", "ip_address", "session_id", "trace_id", "reason"),
            total[6:13],
            strict=True,
        )
    )
    fields["result"] = total[0] - sum(b["other"] for b in buckets)  # records with a valid result
    fields["service_name"] = total[13]
    by_result = {name: sum(b[name] for b in buckets) for name in (*RESULTS, "other")}
    return {
        "records": total[0],
        "by_result": by_result,
        "problem_records": total[5],
        "distinct_actors": tops["distinct_actors"],
        "distinct_resources": tops["distinct_resources"],
        "distinct_services": len(scan["service_days"]),
        "field_counts": fields,
        "buckets": buckets,
        "top_actors": tops["top_actors"],
        "top_resources": tops["top_resources"],
        "top_actions": tops["top_actions"],
    }


def _bucket_starts(since: datetime, until: datetime, bucket: str) -> list[datetime]:
    start = since.astimezone(timezone.utc).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    if bucket != "hour":
        start = start.replace(hour=0)
    if bucket == "week":
        start -= timedelta(days=start.weekday())  # date_trunc('week') starts on Monday
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[bucket]
    end = until.astimezone(timezone.utc).replace(tzinfo=None)
    starts: list[datetime] = []
    while start < end and len(starts) < 2000:
        starts.append(start)
        start += step
    return starts


def _failures(since: datetime, until: datetime, options: ReportOptions, tops: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "threshold": options.threshold,
        "actors_above": tops["failing_total"],
        "actors": tops["failing"],
        "sql": SEED_FAILURES_SQL.format(threshold=options.threshold, since=_iso(since), until=_iso(until)),
    }


#: The seed's security-monitoring query, with the report's period instead of the last 24 hours.
SEED_FAILURES_SQL = (
    "SELECT actor_id, COUNT(*) AS failed_attempts, MAX(timestamp) AS last_attempt "
    "FROM audit_logs "
    "WHERE result IN ('failure', 'denied') "
    "AND timestamp >= '{since}' AND timestamp < '{until}' "
    "GROUP BY actor_id "
    "HAVING COUNT(*) > {threshold} "
    "ORDER BY failed_attempts DESC;"
)


def _problems(conn: psycopg.Connection, since: datetime, until: datetime, flagged: int) -> dict[str, Any]:
    quarantined = sum(1 for q in quarantined_records(conn) if _in(q.get("timestamp"), since, until))
    if not flagged and not quarantined:
        return {"records": 0, "flagged": 0, "quarantined": 0, "sample": []}
    result = find_records(conn, RecordFilter(since=since, until=until, problems=True), limit=50)
    return {
        "records": flagged + quarantined,
        "flagged": flagged,
        "quarantined": quarantined,
        "sample": [_jsonable(r) for r in result.as_dicts()],
    }


def _checkpoints(conn: psycopg.Connection, options: ReportOptions) -> dict[str, Any]:
    row = conn.execute("SELECT to_regclass('audit_checkpoints')").fetchone()
    if not row or row[0] is None:
        return {"table": False, "signers": []}
    signers = [
        {
            "key_id": key_id,
            "checkpoints": n,
            "chains": chains,
            "first": _iso(first),
            "last": _iso(last),
            "trusted": None if options.trusted_keys is None else key_id in options.trusted_keys,
        }
        for key_id, n, chains, first, last in conn.execute(
            "SELECT key_id, count(*), count(DISTINCT chain_id), min(signed_at), max(signed_at) FROM audit_checkpoints "
            "GROUP BY key_id ORDER BY key_id"
        )
    ]
    return {"table": True, "signers": signers}


def _timelines(conn: psycopg.Connection, options: ReportOptions) -> list[dict[str, Any]]:
    out = []
    for kind, values in (("trace", options.traces), ("session", options.sessions)):
        for value in values:
            where = RecordFilter(trace_id=value) if kind == "trace" else RecordFilter(session_id=value)
            result = find_records(conn, where, limit=options.timeline_limit, ascending=True, columns=TIMELINE_COLUMNS)
            out.append(_timeline(kind, value, result))
    return out


def _timeline(kind: str, value: str, result: QueryResult) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": value,
        "records": [_jsonable(r) for r in result.as_dicts()],
        "total": result.total,
        "more": result.more,
    }


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = _iso(value)
        elif value is not None and not isinstance(value, str | int | float | bool | list | dict):
            value = str(value)
        out[key] = value
    return out


def commands(report: Mapping[str, Any], options: ReportOptions) -> list[dict[str, str]]:
    """The exact commands that re-run every check of the report (the database named by ``dsn_shown``)."""
    dsn = options.dsn_shown
    keys = "".join(f" --trusted-key {_quote(k)}" for k in options.trusted_key_files)
    witnesses = "".join(f" --witness {_quote(w)}" for w in options.witness_dirs)
    age = f" --max-unanchored-age {options.max_unanchored_age:g}s" if options.max_unanchored_age is not None else ""
    strict = " --strict" if options.strict else ""
    since, until = report["period"]["since"], report["period"]["until"]
    period = f" --since {since} --until {until}"
    out = [
        {
            "purpose": "the verification verdict (exit 0 intact, 1 integrity failure, 2 error)",
            "command": f"otel-audit verify --dsn {dsn}{keys}{witnesses}{age}{strict} --json",
        },
        {
            "purpose": "this report again, for the same period",
            "command": f"otel-audit report --dsn {dsn}{keys}{witnesses}{age}{strict}{period} "
            f"--threshold {options.threshold} --out report.html",
        },
        {
            "purpose": "actors with more failed or denied attempts than the threshold in the period",
            "command": f"otel-audit query failures --dsn {dsn}{period} --threshold {options.threshold}",
        },
        {
            "purpose": "the records stored with problems or quarantined in the period",
            "command": f"otel-audit query records --dsn {dsn}{period} --problems --wide",
        },
        {"purpose": "the state of the spool and of each chain", "command": f"otel-audit status --dsn {dsn}"},
        {
            "purpose": "the seed's failed-attempts SQL for the period, with psql (no otel-audit code involved)",
            "command": f"psql {dsn} -c {_quote(report['failed_attempts']['sql'])}",
        },
    ]
    for timeline in report.get("timelines", []):
        out.append(
            {
                "purpose": f"the timeline of {timeline['kind']} {timeline['id']}",
                "command": f"otel-audit query {timeline['kind']} {_quote(timeline['id'])} --dsn {dsn} --format timeline",
            }
        )
    if not options.trusted_key_files:
        out.append(
            {
                "purpose": "with the emitters' public keys: also check every signed checkpoint (recommended)",
                "command": f"otel-audit verify --dsn {dsn} --trusted-key signing.pub --witness /path/to/witness --json",
            }
        )
    return out


def _quote(value: str) -> str:
    import shlex

    return shlex.quote(value)
