"""Which evidence in the report bears on which control -- stated as evidence, never as a certification.

Each entry quotes (or closely paraphrases) the control, says what the report
shows towards it from the figures of this very report, and says what it does
not show: scope, people and procedures are the entity's to evidence, and only
an assessor decides whether a control is met.

Texts checked against the sources: AICPA Trust Services Criteria (2017,
revised points of focus 2022) CC7.2; PCI DSS v4.0.1 requirements 10.2, 10.3
and 10.5 (v4 numbering: in v3.2.1, retention was 10.7 and protection 10.5);
HIPAA Security Rule 45 CFR §164.312(b).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DISCLAIMER", "control_mapping"]

DISCLAIMER = (
    "This mapping lists evidence this report provides towards each control. It is not an attestation, an "
    "assessment or a certification: whether a control is met depends on the scope of systems, the entity's "
    "policies, procedures and reviews, and the judgement of a qualified assessor (a CPA firm for SOC 2, a QSA "
    "for PCI DSS)."
)


def _pct(part: int, whole: int) -> str:
    return "n/a" if not whole else f"{100 * part / whole:.1f}%"


def control_mapping(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    v = report["verification"]
    activity = report["activity"]
    coverage = report["coverage"]
    retention = report["retention"]
    failures = report["failed_attempts"]
    total = activity["records"]
    fields = activity["field_counts"]
    period = f"{report['period']['since']} to {report['period']['until']}"
    signed = (
        f"checkpoint signatures checked against {len(v['trusted_keys'])} trusted key(s)"
        if v["signatures_checked"]
        else "checkpoint signatures NOT checked (no trusted key given): a database superuser could rewrite and re-hash "
        "the trail undetected"
    )
    witnessed = f"compared with {len(v['witnesses'])} witness(es)" if v["witnesses"] else "no witness compared"
    integrity = (
        f"`otel-audit verify` verdict: {v['verdict']} ({v['errors']} error(s), {v['warnings']} warning(s)) over "
        f"{v['records']:,} records in {v['chains_verified']} chain(s) (the whole database); {signed}; {witnessed}."
    )
    denied = activity["by_result"].get("denied", 0)
    failed = activity["by_result"].get("failure", 0)
    return [
        {
            "framework": "SOC 2 (AICPA Trust Services Criteria)",
            "control": "CC7.2",
            "text": "The entity monitors system components and the operation of those components for anomalies "
            "that are indicative of malicious acts, natural disasters, and errors affecting the entity's ability "
            "to meet its objectives; anomalies are analyzed to determine whether they represent security events.",
            "evidence": [
                f"{total:,} audit records in the period {period} from {activity['distinct_services']} service(s) "
                f"and {coverage['chains_active']} emitter chain(s) (coverage section).",
                f"Denied and failed attempts over time ({denied:,} denied, {failed:,} failed) and the actors above "
                f"the threshold of {failures['threshold']} ({failures['actors_above']} actor(s)): the data a "
                "reviewer analyses for anomalies.",
                integrity,
            ],
            "not_shown": "That anyone reviewed these records or alerts, how anomalies were analysed and escalated, "
            "and whether every in-scope system component writes to this trail.",
        },
        {
            "framework": "PCI DSS v4.0.1",
            "control": "10.2",
            "text": "Audit logs are implemented to support the detection of anomalies and suspicious activity, and "
            "the forensic analysis of events (10.2.1: enabled and active for all system components and cardholder "
            "data; 10.2.1.1-10.2.1.7: the events to capture; 10.2.2: the details recorded for each event).",
            "evidence": [
                f"10.2.2 details present in the period's records: user identification (actor_id) "
                f"{_pct(fields['actor_id'], total)}, type of event (action) {_pct(fields['action'], total)}, date "
                "and time (timestamp) 100% (required by the schema), success or failure indication (result) "
                f"{_pct(fields['result'], total)}, origination (ip_address {_pct(fields['ip_address'], total)}, "
                f"service {_pct(fields['service_name'], total)}), affected resource (resource_id) "
                f"{_pct(fields['resource_id'], total)}.",
                f"10.2.1.4 invalid logical access attempts: {denied:,} denied and {failed:,} failed records in the "
                "period.",
                "10.2.1.6 initialization, starting and stopping of audit logs: each emitter's chain is registered "
                "when it starts and closed by a signed checkpoint when it stops (coverage: created, closed).",
                "Timelines by trace and session support the forensic analysis of events.",
            ],
            "not_shown": "That every system component and all access to cardholder data is instrumented (the "
            "application decides what it logs), and the events 10.2.1.1-10.2.1.7 other than those counted here.",
        },
        {
            "framework": "PCI DSS v4.0.1",
            "control": "10.3",
            "text": "Audit logs are protected from destruction and unauthorized modifications (10.3.1 read access "
            "limited; 10.3.2 protected from modification; 10.3.3 promptly backed up to a secure, central log "
            "server or media that is difficult to modify; 10.3.4 file integrity monitoring or change-detection "
            "mechanisms on audit logs).",
            "evidence": [
                integrity + " Every record is hash-chained per emitter; changes, insertions, reordering and "
                "deletions are findings (10.3.4 change detection).",
                "The database refuses UPDATE, DELETE and TRUNCATE on the audit tables for every role (triggers); "
                "writers may only insert (10.3.2).",
                "Signed checkpoints copied to a witness outside PostgreSQL, when one is deployed and given to the "
                "verifier (10.3.3).",
            ],
            "not_shown": "Who can read the audit tables (10.3.1: grant only the reader role), the backup "
            "arrangements, and that the witness storage cannot be deleted from (object lock / WORM).",
        },
        {
            "framework": "PCI DSS v4.0.1",
            "control": "10.5",
            "text": "Audit log history is retained and available for analysis (10.5.1: retain audit log history for "
            "at least 12 months, with at least the most recent three months immediately available for analysis).",
            "evidence": [
                f"The database holds records from {retention['oldest_record'] or 'no record'} to "
                f"{retention['newest_record'] or 'no record'} ({retention['months_held'] or 0} months back from "
                f"the report), {retention['records_in_database']:,} records, queryable immediately.",
            ],
            "not_shown": "History older than the database holds (archives are checked by `otel-audit "
            "verify-archive` where archiving is deployed) and the entity's retention policy.",
        },
        {
            "framework": "HIPAA Security Rule",
            "control": "45 CFR §164.312(b) Audit controls",
            "text": "Implement hardware, software, and/or procedural mechanisms that record and examine activity in "
            "information systems that contain or use electronic protected health information.",
            "evidence": [
                f"Record: {total:,} records of who did what to which resource, when, from where and with what "
                f"result in the period ({activity['distinct_actors']:,} distinct actors).",
                "Examine: this report, the queries (`otel-audit query`) and the verification of the trail. "
                + integrity,
            ],
            "not_shown": "That the instrumented systems are all those containing or using ePHI, and the procedures "
            "for regular review. Retention of documentation for six years is a separate requirement "
            "(§164.316(b)(2)(i)).",
        },
    ]
