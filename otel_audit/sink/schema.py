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

from otel_audit.errors import DatabaseNotReady

__all__ = [
    "AUDIT_TABLES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "current_version",
    "grant_reader",
    "grant_writer",
    "migrate",
]

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


# Version 3: audit_logs partitioned by month of the sealed timestamp (UTC).
#
# PostgreSQL cannot enforce a unique constraint on a partitioned table unless it
# includes the partition key, so (chain_id, seq) is unique *per partition* (each
# partition has its own unique index) and the sink inserts with a bare
# ``ON CONFLICT DO NOTHING`` (every unique index of the partition arbitrates).
# The partition is a function of the sealed timestamp, so a replayed record
# lands in the partition that already holds it and is skipped there. A
# *different* record claiming a taken (chain, seq) is refused when its timestamp
# falls in the same partition (and quarantined by the sink, as before); with a
# timestamp in another partition both rows are stored and the verifier reports
# the second claim as ``inserted``: only the verifier sees across partitions.
#
# ``otel_audit_ensure_partition(month)`` creates one month's partition (owner's
# rights: the insert-only writer role may call it, and may not create tables
# otherwise), moves rows of that month out of the default partition first, and
# attaches the new table with only a SHARE UPDATE EXCLUSIVE lock on audit_logs.
# Rows for which no partition exists yet go to ``audit_logs_default``: an insert
# never fails for want of a partition.
_ENSURE_PARTITION = r"""
CREATE OR REPLACE FUNCTION otel_audit_ensure_partition(p_month timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    lo      timestamptz := date_trunc('month', p_month AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    hi      timestamptz := (date_trunc('month', p_month AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    part    text := 'audit_logs_p' || to_char(p_month AT TIME ZONE 'UTC', 'YYYYMM');
    legacy  text;
    cols    text;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(132229331);  -- one creator at a time
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    -- Months before the end of a table that was partitioned late are in its legacy partition.
    SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) INTO legacy
    FROM pg_catalog.pg_class c WHERE c.oid = to_regclass('audit_logs_legacy') AND c.relispartition;
    IF legacy IS NOT NULL AND lo < substring(legacy FROM 'TO \(''([^'']+)''\)')::timestamptz THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE audit_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (timestamp >= %L AND timestamp < %L)',
                   part, part || '_range', lo, hi);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (chain_id, seq)', part || '_chain_seq', part);
    EXECUTE format('CREATE INDEX %I ON %I (id)', part || '_id', part);
    IF to_regclass('audit_logs_default') IS NOT NULL THEN
        -- Rows of this month that arrived before it had a partition move there (the same rows,
        -- byte for byte, in one transaction): the default partition keeps only true outliers.
        EXECUTE 'SELECT 1 FROM audit_logs_default WHERE timestamp >= $1 AND timestamp < $2 LIMIT 1'
            INTO cols USING lo, hi;
        IF cols IS NOT NULL THEN
            SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
            FROM pg_catalog.pg_attribute WHERE attrelid = 'audit_logs'::regclass AND attnum > 0 AND NOT attisdropped;
            EXECUTE format('INSERT INTO %I (%s) SELECT %s FROM audit_logs_default WHERE timestamp >= %L AND timestamp < %L',
                           part, cols, cols, lo, hi);
            ALTER TABLE audit_logs_default DISABLE TRIGGER audit_logs_no_update_delete;
            EXECUTE 'DELETE FROM audit_logs_default WHERE timestamp >= $1 AND timestamp < $2' USING lo, hi;
            ALTER TABLE audit_logs_default ENABLE TRIGGER audit_logs_no_update_delete;
        END IF;
    END IF;
    EXECUTE format('ALTER TABLE audit_logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_range');
    -- Statement triggers are not inherited: TRUNCATE of the partition itself is refused here.
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION otel_audit_reject_change()',
                   part || '_no_truncate', part);
    RETURN part;
END
$fn$;

CREATE OR REPLACE FUNCTION otel_audit_ensure_partitions(p_from timestamptz, p_to timestamptz) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    m timestamptz := date_trunc('month', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    made text;
BEGIN
    WHILE m <= p_to LOOP
        made := otel_audit_ensure_partition(m);
        IF made IS NOT NULL THEN
            RETURN NEXT made;
        END IF;
        m := (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
    END LOOP;
END
$fn$;
"""

_V3 = (
    _ENSURE_PARTITION
    + r"""
DO $mig$
DECLARE
    upper_bound timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    has_rows boolean;
    r record;
BEGIN
    EXECUTE format('ALTER FUNCTION otel_audit_ensure_partition(timestamptz) SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION otel_audit_ensure_partitions(timestamptz, timestamptz) SET search_path = %I, pg_temp',
                   current_schema());
    REVOKE ALL ON FUNCTION otel_audit_ensure_partition(timestamptz) FROM PUBLIC;
    REVOKE ALL ON FUNCTION otel_audit_ensure_partitions(timestamptz, timestamptz) FROM PUBLIC;

    -- The unpartitioned table becomes the legacy partition (nothing is copied or rewritten).
    ALTER TABLE audit_logs RENAME TO audit_logs_legacy;
    ALTER TABLE audit_logs_legacy RENAME CONSTRAINT audit_logs_pkey TO audit_logs_legacy_pkey;
    ALTER TABLE audit_logs_legacy RENAME CONSTRAINT audit_logs_chain_seq TO audit_logs_legacy_chain_seq;
    ALTER INDEX idx_audit_actor_id RENAME TO audit_logs_legacy_actor_id;
    ALTER INDEX idx_audit_resource RENAME TO audit_logs_legacy_resource;
    ALTER INDEX idx_audit_timestamp RENAME TO audit_logs_legacy_timestamp;
    ALTER INDEX idx_audit_action RENAME TO audit_logs_legacy_action;
    ALTER INDEX idx_audit_trace_id RENAME TO audit_logs_legacy_trace_id;
    DROP TRIGGER audit_logs_no_update_delete ON audit_logs_legacy;  -- the parent's clone replaces it
    ALTER TRIGGER audit_logs_no_truncate ON audit_logs_legacy RENAME TO audit_logs_legacy_no_truncate;

    CREATE TABLE audit_logs (LIKE audit_logs_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (timestamp);
    COMMENT ON TABLE audit_logs IS
        'otel-audit records, partitioned by month of timestamp (UTC). Append-only. Every column but inserted_at is a '
        'projection of canonical, whose SHA-256 is hash. (chain_id, seq) is unique within each partition.';
    CREATE INDEX idx_audit_actor_id  ON audit_logs (actor_id, timestamp DESC);
    CREATE INDEX idx_audit_resource  ON audit_logs (resource_type, resource_id, timestamp DESC);
    CREATE INDEX idx_audit_timestamp ON audit_logs (timestamp DESC);
    CREATE INDEX idx_audit_action    ON audit_logs (action);
    CREATE INDEX idx_audit_trace_id  ON audit_logs (trace_id) WHERE trace_id IS NOT NULL;
    CREATE TRIGGER audit_logs_no_update_delete BEFORE UPDATE OR DELETE ON audit_logs
        FOR EACH ROW EXECUTE FUNCTION otel_audit_reject_change();
    CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs
        FOR EACH STATEMENT EXECUTE FUNCTION otel_audit_reject_change();

    -- Whoever could read or insert into the old table can do the same with the new one.
    FOR r IN SELECT a.grantee::regrole::text AS grantee, a.privilege_type
             FROM pg_catalog.pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'audit_logs_legacy'::regclass AND a.grantee <> 0 AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON audit_logs TO %s', r.privilege_type, r.grantee);
    END LOOP;
    FOR r IN SELECT a.grantee::regrole::text AS grantee, a.privilege_type, t.attname
             FROM pg_catalog.pg_attribute t, aclexplode(t.attacl) a
             WHERE t.attrelid = 'audit_logs_legacy'::regclass AND t.attacl IS NOT NULL AND a.grantee <> 0 LOOP
        EXECUTE format('GRANT %s (%I) ON audit_logs TO %s', r.privilege_type, r.attname, r.grantee);
    END LOOP;
    FOR r IN SELECT DISTINCT a.grantee::regrole::text AS grantee
             FROM pg_catalog.pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'audit_logs_legacy'::regclass AND a.privilege_type = 'INSERT'
               AND a.grantee <> 0 AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION otel_audit_ensure_partitions(timestamptz, timestamptz) TO %s', r.grantee);
    END LOOP;

    CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;
    CREATE UNIQUE INDEX audit_logs_default_chain_seq ON audit_logs_default (chain_id, seq);
    CREATE INDEX audit_logs_default_id ON audit_logs_default (id);
    CREATE TRIGGER audit_logs_default_no_truncate BEFORE TRUNCATE ON audit_logs_default
        FOR EACH STATEMENT EXECUTE FUNCTION otel_audit_reject_change();

    SELECT EXISTS (SELECT 1 FROM audit_logs_legacy) INTO has_rows;
    IF has_rows THEN
        -- Every existing record stays where it is: the old table covers all time up to the end of this
        -- month (its rows are checked against that bound once, by ATTACH).
        EXECUTE format('ALTER TABLE audit_logs ATTACH PARTITION audit_logs_legacy FOR VALUES FROM (MINVALUE) TO (%L)',
                       upper_bound);
    ELSE
        DROP TABLE audit_logs_legacy;
    END IF;
    PERFORM otel_audit_ensure_partitions(now() - interval '1 month', now() + interval '3 months');
END
$mig$;
"""
)

_V4 = """
CREATE TABLE audit_retention (
    n            bigint      PRIMARY KEY,
    signed_at    timestamptz NOT NULL,
    key_id       text        NOT NULL,
    body         bytea       NOT NULL,
    signature    bytea       NOT NULL,
    hash         text        NOT NULL,
    inserted_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_retention_n_positive CHECK (n > 0)
);
COMMENT ON TABLE audit_retention IS
    'Signed retention checkpoints: which chain prefixes were archived where before their partitions were dropped. '
    'Append-only; the verifier trusts only the public keys it is given.';

CREATE TABLE audit_legal_holds (
    id          bigserial   PRIMARY KEY,
    chain_id    uuid,
    actor_id    text,
    from_ts     timestamptz,
    to_ts       timestamptz,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL DEFAULT current_user,
    CONSTRAINT audit_legal_holds_one_subject CHECK (
        (chain_id IS NOT NULL)::int + (actor_id IS NOT NULL)::int + (from_ts IS NOT NULL)::int = 1
        AND (from_ts IS NULL) = (to_ts IS NULL) AND (from_ts IS NULL OR from_ts < to_ts))
);
CREATE TABLE audit_legal_hold_releases (
    hold_id      bigint      PRIMARY KEY REFERENCES audit_legal_holds (id),
    reason       text        NOT NULL,
    released_at  timestamptz NOT NULL DEFAULT now(),
    released_by  text        NOT NULL DEFAULT current_user
);
COMMENT ON TABLE audit_legal_holds IS
    'Legal holds: records of a chain, an actor or a time range that retention never removes while the hold is not '
    'released. Append-only (a release is a row of audit_legal_hold_releases).';
"""

_V5 = """
ALTER TABLE audit_chains ADD COLUMN IF NOT EXISTS delivered_by text;

COMMENT ON COLUMN audit_chains.delivered_by IS
    'Name of the ingest token that delivered this chain''s record 1 when the OTLP ingest registered it (a relayed '
    'pre-sealed chain); NULL when the chain''s own emitter registered it. The ingest seals an '
    'otel_audit.chain_accepted record in its own chain that the verifier holds this column to.';
"""

#: Every append-only otel-audit table (writers may insert into each).
AUDIT_TABLES = ("audit_chains", "audit_logs", "audit_quarantine", "audit_checkpoints")
#: Tables auditors read besides those (retention and legal holds; written by administrators only).
ADMIN_TABLES = ("audit_retention", "audit_legal_holds", "audit_legal_hold_releases")
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
    Migration(
        3,
        "audit_logs partitioned by month (default partition, existing rows kept as the legacy partition)",
        _V3,
    ),
    Migration(
        4,
        "audit_retention (signed retention checkpoints), audit_legal_holds; append-only triggers",
        _V4 + "".join(_append_only(t) for t in ("audit_retention", "audit_legal_holds", "audit_legal_hold_releases")),
    ),
    Migration(5, "audit_chains.delivered_by (the ingest token that delivered a relayed chain)", _V5),
)

#: The schema version that added ``audit_chains.delivered_by``.
DELIVERED_BY_VERSION = 5

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
            raise DatabaseNotReady(
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
        if _has_function(conn, "otel_audit_ensure_partitions"):
            # The sink creates the coming months' partitions at start and hourly (owner's rights, no DDL grant).
            conn.execute(
                sql.SQL(
                    "GRANT EXECUTE ON FUNCTION otel_audit_ensure_partitions(timestamptz, timestamptz) TO {}"
                ).format(ident)
            )
        conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(tables, ident))


def grant_reader(conn: psycopg.Connection, role: str) -> None:
    """Let ``role`` (an auditor or the verifier) read everything and change nothing."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
    ident = sql.Identifier(role)
    tables = sql.SQL(", ").join(
        sql.Identifier(t) for t in _existing(conn, (*AUDIT_TABLES, *ADMIN_TABLES, "otel_audit_schema"))
    )
    with conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, ident))


def _has_function(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = %s "
        "AND pronamespace = current_schema()::regnamespace)",
        (name,),
    ).fetchone()
    return bool(row and row[0])


def _existing(conn: psycopg.Connection, names: tuple[str, ...]) -> tuple[str, ...]:
    found = {
        name
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace "
            "AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)",
            (list(names),),
        )
    }
    return tuple(n for n in names if n in found)
