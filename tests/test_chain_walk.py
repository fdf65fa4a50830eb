"""The verifier's chain walk on records fed directly (no database)."""

from __future__ import annotations

import orjson

from otel_audit.core.canonical import canonical_json
from otel_audit.core.chain import Chain
from otel_audit.core.record import RECORD_FIELDS, RecordBuilder, record_hash
from otel_audit.verify.chain_walk import ChainWalker
from otel_audit.verify.report import ChainSummary, Kind, Severity, VerificationReport

RECORD = {
    "audit.action": "read",
    "audit.actor.id": "u",
    "audit.resource.type": "doc",
    "audit.resource.id": "1",
    "audit.result": "success",
}


class _MemorySink:
    def append(self, kind: int, payload: bytes, digest: bytes) -> int:
        return 0


def _chain(n: int) -> tuple[Chain, list[bytes]]:
    chain = Chain(_MemorySink(), emitter={"kind": "sdk"})
    builder = RecordBuilder()
    return chain, [
        chain.seal(builder.build({**RECORD, "i": i}, time_unix_nano=1_700_000_000_000_000_000 + i)).canonical
        for i in range(n)
    ]


def _walk(chain: Chain, stored: list[bytes], quarantined: list[bytes]) -> VerificationReport:
    report = VerificationReport(checks=[])
    walker = ChainWalker(chain.chain_id, report, ChainSummary(chain.chain_id), genesis_hash=chain.genesis_hash)
    for canonical in quarantined:
        walker.add_quarantined(record_hash(canonical), canonical)
    for canonical in stored:
        doc = orjson.loads(canonical)
        walker.feed(doc["seq"], record_hash(canonical), canonical, [doc.get(f) for f in RECORD_FIELDS])
    walker.finish()
    return report


def _forge(canonical: bytes) -> bytes:
    doc = orjson.loads(canonical)
    doc["actor_id"] = "intruder"
    return canonical_json(doc)


def test_a_quarantined_record_at_an_occupied_position_is_reported_not_looped_on() -> None:
    """The sink quarantines a *different* record for a taken (chain, seq); the walk used to loop forever."""
    chain, records = _chain(3)
    report = _walk(chain, records, [_forge(records[1])])
    assert [(f.kind, f.severity, f.seq) for f in report.findings] == [(Kind.INSERTED, Severity.WARNING, 2)]
    assert "also claimed position 2" in report.findings[0].detail
    assert report.ok


def test_a_quarantined_conflict_at_the_last_position_and_a_genuine_quarantined_record() -> None:
    chain, records = _chain(4)
    # Record 2 refused by PostgreSQL (a genuine quarantine), record 4 contested by a forgery.
    # Record 2 is valid for its place but not in audit_logs: hidden from queries, an error (issue 9).
    report = _walk(chain, [records[0], records[2], records[3]], [records[1], _forge(records[3])])
    kinds = sorted((f.kind.value, f.severity.value, f.seq) for f in report.findings)
    assert kinds == [("inserted", "warning", 4), ("quarantined", "info", None), ("record_hidden", "error", 2)]
    assert not report.ok


def test_a_quarantined_copy_of_a_stored_record_is_no_finding() -> None:
    """Once the cause of a refusal is fixed and the record stored in audit_logs, its quarantined copy is moot."""
    chain, records = _chain(3)
    report = _walk(chain, records, [records[1]])
    assert report.findings == [] and report.ok
