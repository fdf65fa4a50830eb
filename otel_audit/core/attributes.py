"""Attribute names shared by the processor, the ingest service and the collector configs.

Input names follow OpenTelemetry semantic conventions where one exists; the seal
names follow the OTel Audit Logging SIG draft (open-telemetry/community#2409).
"""

from __future__ import annotations

# --- input: set by the application through logging's ``extra=`` -------------------
AUDIT_ACTION = "audit.action"  # its presence marks a record as an audit record
AUDIT_ACTOR_ID = "audit.actor.id"
AUDIT_ACTOR_TYPE = "audit.actor.type"  # user | service | admin | system
AUDIT_RESOURCE_TYPE = "audit.resource.type"
AUDIT_RESOURCE_ID = "audit.resource.id"
AUDIT_RESULT = "audit.result"  # success | failure | denied
AUDIT_REASON = "audit.reason"
AUDIT_CHANGED_FIELDS = "audit.changed_fields"
AUDIT_OLD_VALUES = "audit.old_values"
CLIENT_ADDRESS = "client.address"
USER_AGENT = "user_agent.original"
SESSION_ID = "session.id"
USER_ID = "user.id"

# --- seal: written back onto the OTel record so OTLP export carries it ----------
RECORD_ID = "audit.record.id"
CHAIN_ID = "audit.chain.id"
SEQUENCE_NUMBER = "audit.sequence.number"
SEQUENCE_PREV_HASH = "audit.sequence.prev_hash"
INTEGRITY_ALGORITHM = "audit.integrity.algorithm"
INTEGRITY_VALUE = "audit.integrity.value"

SEAL_ATTRIBUTES = (
    RECORD_ID,
    CHAIN_ID,
    SEQUENCE_NUMBER,
    SEQUENCE_PREV_HASH,
    INTEGRITY_ALGORITHM,
    INTEGRITY_VALUE,
)

# --- carried alongside the seal so the OTLP ingest can store a record it did not seal ---
#: The exact canonical JSON text that was hashed (``audit.integrity.value`` is
#: SHA-256 over the record domain tag and these bytes, UTF-8). Attached to every
#: sealed record; an ingest stores these bytes under the original chain.
RECORD_CANONICAL = "audit.record.canonical"
#: The chain's genesis document (canonical JSON text), attached to record 1 of a
#: chain only, so that an ingest can register a chain it has never seen.
CHAIN_GENESIS = "audit.chain.genesis"

# --- set by otel-audit before OpenTelemetry sees an audit record ------------------
#: The conversions otel-audit's logging filter (``otel_audit.inputs``) made to the
#: record's ``extra`` values so that OpenTelemetry could take them (a list of
#: texts). The record builder moves them into the sealed record's ``problems``.
INPUT_PROBLEMS = "otel_audit.input.problems"

# --- resource attributes used for enrichment --------------------------------------
SERVICE_NAME = "service.name"
SERVICE_INSTANCE_ID = "service.instance.id"
HOST_NAME = "host.name"

#: Input attribute -> field of the audit record. These are lifted out of the
#: free-form ``attributes`` map into their own (queryable) fields.
INPUT_FIELDS: dict[str, str] = {
    AUDIT_ACTION: "action",
    AUDIT_ACTOR_ID: "actor_id",
    AUDIT_ACTOR_TYPE: "actor_type",
    AUDIT_RESOURCE_TYPE: "resource_type",
    AUDIT_RESOURCE_ID: "resource_id",
    AUDIT_RESULT: "result",
    AUDIT_REASON: "reason",
    AUDIT_CHANGED_FIELDS: "changed_fields",
    AUDIT_OLD_VALUES: "old_values",
    CLIENT_ADDRESS: "ip_address",
    USER_AGENT: "user_agent",
    SESSION_ID: "session_id",
    USER_ID: "user_id",
    INPUT_PROBLEMS: "input_problems",
}

ACTOR_TYPES = frozenset({"user", "service", "admin", "system"})
RESULTS = frozenset({"success", "failure", "denied"})

# --- records otel-audit writes about itself ---------------------------------------
#: Actions otel-audit seals about its own work start with this prefix. The OTLP ingest
#: flags a record it receives with such an action (a problems entry): only otel-audit
#: itself writes them, and the verifier relies on some of them (attestations).
RESERVED_ACTION_PREFIX = "otel_audit."
#: The ingest registered a chain from a pre-sealed record 1 (resource ``audit_chain`` /
#: chain id); it attests which token delivered it (``audit_chains.delivered_by``).
CHAIN_ACCEPTED = "otel_audit.chain_accepted"
#: Attributes of that record: the delivering token's name and the chain's genesis hash.
ATTESTED_TOKEN = "otel_audit.ingest.token"
ATTESTED_GENESIS_HASH = "otel_audit.chain.genesis_hash"
