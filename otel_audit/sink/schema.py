"""PostgreSQL schema: versioned, idempotent migrations applied by ``otel-audit db init``.

Tables live in the first schema of the connection's ``search_path`` (``public``
unless the DSN says ``options=-csearch_path=...``), so the seed's example
queries run unchanged against ``audit_logs``.

What the database enforces: rows can only be inserted (triggers reject UPDATE,
DELETE and TRUNCATE on every otel-audit table, for every role, owner included),
records of one chain have unique sequence numbers, and a record is either
valid or carries the problems that make it invalid. What it cannot enforce is
anything against a superuser, who can disable triggers: that is the verifier's
job.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

__all__ = ["AUDIT_TABLES", "MIGRATIONS", "SCHEMA_VERSION", "Migration", "current_version", "grant_reader", "grant_writer", "migrate"]

# A fixed key for pg_advisory_xact_lock: concurrent `db init` runs apply each
# migration exactly once.
_MIGRATION_LOCK_KEY = 0x07E1A0D1


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


_V1 = """
CREATE OR REPLACE FUNCTION otel_audit_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'otel-audit: % on % is not allowed: audit tables are append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit records can only be inserted. To correct a record, log a new one that references it.';
END
$fn$;

CREATE TABLE audit_chains (
    chain_id       uuid        PRIMARY KEY,
    created_at     timestamptz NOT NULL,
    emitter        jsonb       NOT NULL,
    genesis        bytea       NOT NULL,
    genesis_hash   text        NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_logs (
    id                   uuid        PRIMARY KEY,
    timestamp            timestamptz NOT NULL,
    actor_id             text,
    actor_type           text,
    action               text,
    resource_type        text,
    resource_id          text,
    result               text,
    ip_address           inet,
    user_agent           text,
    session_id           text,
    user_id              text,
    reason               text,
    changed_fields       text[],
    old_values           jsonb,
    prev_hash            text        NOT NULL,
    hash                 text        NOT NULL,
    chain_id             uuid        NOT NULL,
    seq                  bigint      NOT NULL,
    trace_id             text,
    span_id              text,
    trace_flags          integer,
    service_name         text,
    service_instance_id  text,
    host_name            text,
    scope                text,
    severity_text        text,
    severity_number      integer,
    event_name           text,
    message              text,
    attributes           jsonb       NOT NULL DEFAULT '{}',
    problems             text[]      NOT NULL DEFAULT '{}',
    format_version       smallint    NOT NULL,
    canonical            bytea       NOT NULL,
    inserted_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_logs_chain_seq UNIQUE (chain_id, seq),
    CONSTRAINT audit_logs_seq_positive CHECK (seq > 0),
    CONSTRAINT audit_logs_valid_or_flagged CHECK (
        cardinality(problems) > 0 OR (
            actor_id IS NOT NULL AND action IS NOT NULL
            AND resource_type IS NOT NULL AND resource_id IS NOT NULL
            AND actor_type IN ('user', 'service', 'admin', 'system')
            AND result IN ('success', 'failure', 'denied')))
);

COMMENT ON TABLE audit_logs IS
    'otel-audit records. Append-only. Every column but inserted_at is a projection of canonical, whose SHA-256 is hash.';

CREATE INDEX idx_audit_actor_id  ON audit_logs (actor_id, timestamp DESC);
CREATE INDEX idx_audit_resource  ON audit_logs (resource_type, resource_id, timestamp DESC);
CREATE INDEX idx_audit_timestamp ON audit_logs (timestamp DESC);
CREATE INDEX idx_audit_action    ON audit_logs (action);
CREATE INDEX idx_audit_trace_id  ON audit_logs (trace_id) WHERE trace_id IS NOT NULL;

CREATE TABLE audit_quarantine (
    chain_id        uuid        NOT NULL,
    seq             bigint      NOT NULL,
    hash            text        NOT NULL,
    canonical       bytea       NOT NULL,
    reason          text        NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, seq)
);

COMMENT ON TABLE audit_quarantine IS
    'Sealed records PostgreSQL refused to store in audit_logs, with the reason. Part of the chain; the verifier reads them.';
"""

_V2 = """
CREATE TABLE audit_checkpoints (
    chain_id     uuid        NOT NULL,
    n            bigint      NOT NULL,
    seq          bigint      NOT NULL,
    head         text        NOT NULL,
    signed_at    timestamptz NOT NULL,
    key_id       text        NOT NULL,
    closed       boolean     NOT NULL,
    body         bytea       NOT NULL,
    signature    bytea       NOT NULL,
    hash         text        NOT NULL,
    inserted_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_checkpoints_pkey PRIMARY KEY (chain_id, n),
    CONSTRAINT audit_checkpoints_n_positive CHECK (n > 0 AND seq >= 0)
);

CREATE INDEX idx_audit_checkpoints_seq ON audit_checkpoints (chain_id, seq);

COMMENT ON TABLE audit_checkpoints IS
    'Signed chain heads (Ed25519 over the canonical body). Append-only; also copied to a witness outside PostgreSQL. '
    'The verifier trusts only the public keys it is given, never anything stored here.';
"""

#: Every append-only otel-audit table (writers may insert into each).
AUDIT_TABLES = ("audit_chains", "audit_logs", "audit_quarantine", "audit_checkpoints")
_V1_TABLES = ("audit_chains", "audit_logs", "audit_quarantine")


def _append_only(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION otel_audit_reject_change();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION otel_audit_reject_change();
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit_logs, audit_chains, audit_quarantine; append-only triggers",
        _V1 + "".join(_append_only(t) for t in _V1_TABLES),
    ),
    Migration(
        2,
        "audit_checkpoints (signed chain heads); append-only triggers",
        _V2 + _append_only("audit_checkpoints"),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS otel_audit_schema (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def current_version(conn: psycopg.Connection) -> int:
    """The schema version of the database (0 when otel-audit was never installed)."""
    row = conn.execute("SELECT to_regclass('otel_audit_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM otel_audit_schema").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection) -> list[Migration]:
    """Apply every migration the database lacks; returns those applied.

    Safe to run concurrently and repeatedly: an advisory lock serializes
    runners and each migration commits together with its version row.
    """
    applied: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(_VERSION_TABLE)
        have = {r[0] for r in conn.execute("SELECT version FROM otel_audit_schema")}
        newest = max(have, default=0)
        if newest > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has otel-audit schema version {newest}, newer than this otel-audit "
                f"({SCHEMA_VERSION}); upgrade otel-audit instead of downgrading the schema"
            )
        for migration in MIGRATIONS:
            if migration.version in have:
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO otel_audit_schema (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration)
    return applied


def grant_writer(conn: psycopg.Connection, role: str) -> None:
    """Let ``role`` insert audit data and nothing else.

    Besides INSERT it may read ``(chain_id, seq, hash)`` of audit_logs and
    audit_quarantine: after a lost COMMIT acknowledgement, or when a record
    reaches the database by two paths (its emitter's sink and the OTLP ingest),
    the sink asks which records already arrived, and tells a replay (same hash:
    nothing to do) from a different record at the same position (quarantined).
    It can read no audit content.
    """
    schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
    ident = sql.Identifier(role)
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in _existing(conn, AUDIT_TABLES))
    with conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(tables, ident))
        conn.execute(sql.SQL("GRANT SELECT (chain_id, seq, hash) ON audit_logs TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT (chain_id, seq, hash) ON audit_quarantine TO {}").format(ident))
        conn.execute(sql.SQL("GRANT SELECT (chain_id) ON audit_chains TO {}").format(ident))
        if "audit_checkpoints" in _existing(conn, ("audit_checkpoints",)):
            # ON CONFLICT (chain_id, n) DO NOTHING makes checkpoint replays idempotent; it reads the key only.
            conn.execute(sql.SQL("GRANT SELECT (chain_id, n) ON audit_checkpoints TO {}").format(ident))
        conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(tables, ident))


def grant_reader(conn: psycopg.Connection, role: str) -> None:
    """Let ``role`` (an auditor or the verifier) read everything and change nothing."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
    ident = sql.Identifier(role)
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in _existing(conn, (*AUDIT_TABLES, "otel_audit_schema")))
    with conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, ident))


def _existing(conn: psycopg.Connection, names: tuple[str, ...]) -> tuple[str, ...]:
    found = {
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind = 'r' AND c.relname = ANY(%s)",
            (list(names),),
        )
    }
    return tuple(n for n in names if n in found)
