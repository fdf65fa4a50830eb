"""Verification results as explicit objects: findings, per-chain summaries, a report.

A finding is precise (chain, sequence number, kind, what was expected and
what was found) and never "best effort": anything that could not be checked
is itself a finding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

__all__ = ["ChainSummary", "Finding", "Kind", "Severity", "VerificationReport"]


class Severity(str, Enum):
    ERROR = "error"  # integrity failure: verification fails
    WARNING = "warning"  # needs attention, not proof of tampering (fails with --strict)
    INFO = "info"  # for the record


class Kind(str, Enum):
    # Records
    MODIFIED = "modified"  # stored bytes, hash or a column differ from what was sealed
    MISSING = "missing"  # sequence numbers absent from the chain
    INSERTED = "inserted"  # a row that is not part of the chain (duplicate, or does not link)
    REORDERED = "reordered"  # a row stored under another sequence number or chain than it was sealed with
    BROKEN_LINK = "broken_link"  # prev_hash does not match the previous record
    MALFORMED = "malformed"  # stored bytes are not an otel-audit record document
    RECORD_HIDDEN = "record_hidden"  # a record of the chain kept outside audit_logs (audit_quarantine)
    # Chains
    UNREGISTERED_CHAIN = "unregistered_chain"  # records of a chain missing from audit_chains
    GENESIS_MODIFIED = "genesis_modified"  # the chain registry entry does not match its hash
    REGISTRY_MISMATCH = "registry_mismatch"  # an audit_chains column differs from the sealed genesis
    DELIVERY_UNATTESTED = "delivery_unattested"  # audit_chains.delivered_by without the ingest's attestation
    # Anchoring: signed checkpoints and witnesses
    TRUNCATED = "truncated"  # records at the end of a chain deleted: a trusted checkpoint covers more
    REWRITTEN = "rewritten"  # the chain differs from a checkpointed head: edited and its hashes recomputed
    CHAIN_DELETED = "chain_deleted"  # checkpoints prove a chain that has no registry entry and no records
    CHECKPOINT_MISSING = "checkpoint_missing"  # a checkpoint is absent from the database (numbering gap, witness)
    ROLLED_BACK = "rolled_back"  # the database's checkpoints of a chain end before the witness's
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # two different signed checkpoints under one number
    CHECKPOINT_INCONSISTENT = "checkpoint_inconsistent"  # signed checkpoints that contradict each other
    CHECKPOINT_MALFORMED = "checkpoint_malformed"  # not a checkpoint, or its columns differ from the signed body
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify under the trusted key it names
    UNTRUSTED_KEY = "untrusted_key"  # signed by a key that is not among the trusted keys
    WRONG_KEY = "wrong_key"  # signed by a trusted key, but not the one the chain's sealed genesis names
    UNANCHORED = "unanchored"  # records no trusted checkpoint covers (count, age), or a chain with none
    UNANCHORED_SPAN = "unanchored_span"  # more records after a checkpoint than the chain's sealed policy allows
    UNCLOSED = "unclosed"  # a chain that stopped without its closing checkpoint (a crash)
    NOT_WITNESSED = "not_witnessed"  # checkpoints in the database the witness lacks (witness failures)
    CHECKPOINTS_UNCHECKED = "checkpoints_unchecked"  # checkpoints present, no trusted key given
    NO_CHECKPOINT_POLICY = "no_checkpoint_policy"  # an unclosed chain whose genesis seals no checkpoint policy
    WITNESS_GAP = "witness_gap"  # a witness entry another one names is absent or was changed
    WITNESS_NAME_MISMATCH = "witness_name_mismatch"  # a witness file whose name disagrees with its checkpoint
    WITNESS_UNCHAINED = "witness_unchained"  # witness entries of an older version that name no previous entry
    # Informational
    QUARANTINED = "quarantined"  # records PostgreSQL refused, kept in audit_quarantine
    INVALID_RECORDS = "invalid_records"  # records stored flagged with validation problems
    EMPTY_CHAIN = "empty_chain"  # a registered chain with no records
    ARCHIVED = "archived"  # a chain's oldest records left PostgreSQL under a trusted retention checkpoint
    # Archives (otel-audit verify-archive)
    MANIFEST_MISSING = "manifest_missing"  # a run's signed manifest is absent (numbering gap, broken prev link)
    MANIFEST_INVALID = "manifest_invalid"  # not a manifest, misnamed, or contradicting the manifests before it
    BUNDLE_MISSING = "bundle_missing"  # a file a manifest lists is absent
    BUNDLE_MODIFIED = "bundle_modified"  # a file's bytes differ from the digest its manifest signed
    BUNDLE_UNLISTED = "bundle_unlisted"  # a file no manifest lists (added, or left by an interrupted run)
    ARCHIVE_MISMATCH = "archive_mismatch"  # the archive and the live database disagree where they meet


@dataclass(frozen=True)
class Finding:
    kind: Kind
    severity: Severity
    chain_id: str | None
    seq: int | None
    detail: str
    record_id: str | None = None
    count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["severity"] = self.severity.value
        return {k: v for k, v in data.items() if v is not None}

    def __str__(self) -> str:
        where = f"chain {self.chain_id}" if self.chain_id else "database"
        if self.seq is not None:
            where += f" seq {self.seq}"
        return f"{self.severity.value.upper():7} {self.kind.value:18} {where}: {self.detail}"


@dataclass
class ChainSummary:
    chain_id: str
    registered: bool = False
    emitter: dict[str, Any] | None = None
    records: int = 0
    quarantined: int = 0
    invalid: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str | None = None
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data


@dataclass
class VerificationReport:
    findings: list[Finding] = field(default_factory=list)
    chains: dict[str, ChainSummary] = field(default_factory=dict)
    records: int = 0
    duration_seconds: float = 0.0
    checks: list[str] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)
        if finding.chain_id and finding.severity is Severity.ERROR and finding.chain_id in self.chains:
            self.chains[finding.chain_id].errors += 1

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def exit_code(self, *, strict: bool = False) -> int:
        """0 intact, 1 integrity failure (or, with ``strict``, any warning)."""
        if self.errors or (strict and self.warnings):
            return 1
        return 0

    @property
    def records_per_second(self) -> float:
        return self.records / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "chains": [c.to_dict() for c in self.chains.values()],
            "findings": [f.to_dict() for f in self.findings],
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks": self.checks,
            "duration_seconds": round(self.duration_seconds, 3),
            "records_per_second": round(self.records_per_second),
        }
