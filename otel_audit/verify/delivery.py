"""``audit_chains.delivered_by`` against the ingest's sealed attestations.

When the OTLP ingest registers a chain from a relayed, pre-sealed record 1, it
records the name of the token that delivered it in ``audit_chains.delivered_by``
and, before that, seals an attestation in its own chain::

    action        otel_audit.chain_accepted
    resource      audit_chain / <chain id>
    attributes    otel_audit.ingest.token       = <token name>
                  otel_audit.chain.genesis_hash = <hex SHA-256 of the chain's genesis, with its domain tag>

The column is a stored copy of sealed data, so it is checked like every other:

* a chain whose ``delivered_by`` is not NULL must have an attestation with
  exactly that token name and the genesis hash of the chain's registry entry,
  else ``delivery_unattested`` (error: the column was written by someone other
  than the ingest, or edited);
* an attestation counts only if its stored bytes hash to the stored hash, it
  has no problems, and it lies in a chain whose genesis names an ingest
  emitter (``emitter.kind = "ingest"``): applications cannot attest, and the
  ingest flags every ``otel_audit.*`` action it receives from a sender, so a
  token holder cannot forge one either. Its place in its chain (links,
  checkpoints) is checked by the chain walk like any record's;
* ``delivered_by`` NULL with attestations present is normal (the chain's own
  emitter registered it before the ingest's copy arrived): the attested token
  names are reported in the chain summary (``delivered_by_attested``), so
  clearing the column hides nothing from ``verify --json``;
* when an ingest chain no longer starts at record 1 in PostgreSQL (retention
  moved its oldest records to the archive), an attestation may have left with
  them: an unconfirmed ``delivered_by`` is then a warning that says to check
  the archive, not an error. (A prefix removed any other way is an error of
  the chain walk already.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson
import psycopg

from otel_audit.core import attributes as A
from otel_audit.core.chain import genesis_hash
from otel_audit.core.record import RECORD_DOMAIN
from otel_audit.sink.schema import DELIVERED_BY_VERSION, current_version
from otel_audit.verify.report import ChainSummary, Finding, Kind, Severity, VerificationReport

__all__ = ["check_deliveries", "read_attestations"]

_ATTESTATIONS = "SELECT chain_id::text, seq, hash, canonical FROM audit_logs WHERE action = %s ORDER BY chain_id, seq"


def check_deliveries(conn: psycopg.Connection, report: VerificationReport, chain_ids: Iterable[str] | None) -> None:
    """Hold ``audit_chains.delivered_by`` of the chains verified to the ingest's attestations."""
    if not _has_column(conn):
        version = current_version(conn)
        if version >= DELIVERED_BY_VERSION:
            report.add(
                Finding(
                    Kind.DELIVERY_UNATTESTED,
                    Severity.ERROR,
                    None,
                    None,
                    f"the column audit_chains.delivered_by is missing although the schema is at version {version}: it "
                    "was dropped, and with it which ingest token delivered each relayed chain",
                )
            )
        return
    wanted = set(chain_ids) if chain_ids else None
    params: tuple[Any, ...] = ()
    query = "SELECT chain_id::text, genesis, delivered_by FROM audit_chains"
    if wanted:
        query += " WHERE chain_id = ANY(%s::uuid[])"
        params = (sorted(wanted),)
    registry = [(c, bytes(g), d) for c, g, d in conn.execute(query, params)]
    attested = read_attestations(conn)
    trimmed: list[str] | None = None  # ingest chains whose oldest records are gone (computed when needed)
    report.checks.append("registry delivered_by against the ingest's attestations")
    for chain_id, genesis, delivered_by in registry:
        tokens = attested.get(chain_id, set())
        summary = report.chains.get(chain_id)
        if summary is None:
            summary = report.chains[chain_id] = ChainSummary(chain_id, registered=True)
        if delivered_by is not None:
            summary.extra["delivered_by"] = delivered_by
        if tokens:
            summary.extra["delivered_by_attested"] = sorted({name for name, _ in tokens})
        if delivered_by is None:
            continue
        expected = (delivered_by, genesis_hash(genesis))
        if delivered_by.__class__ is str and expected in tokens:
            continue
        if tokens:
            seen = ", ".join(f"{name!r} (genesis {gh[:16]}...)" for name, gh in sorted(tokens))
            why = f"the ingest attested delivery by {seen} only"
        else:
            why = "no intact otel_audit.chain_accepted record in an ingest's chain attests any delivery of it"
        if trimmed is None:
            trimmed = _trimmed_ingest_chains(conn)
        if trimmed:
            report.add(
                Finding(
                    Kind.DELIVERY_UNATTESTED,
                    Severity.WARNING,
                    chain_id,
                    0,
                    f"the registry says ingest token {delivered_by!r} delivered this chain (audit_chains.delivered_by), "
                    f"but {why} in PostgreSQL; the oldest records of ingest chain(s) {', '.join(trimmed[:3])} are not in "
                    "PostgreSQL any more (archived by retention?): look for the attestation in the archive",
                )
            )
            continue
        report.add(
            Finding(
                Kind.DELIVERY_UNATTESTED,
                Severity.ERROR,
                chain_id,
                0,
                f"the registry says ingest token {delivered_by!r} delivered this chain (audit_chains.delivered_by), but "
                f"{why}: the column was written or edited by someone other than the ingest",
            )
        )


def read_attestations(conn: psycopg.Connection) -> dict[str, set[tuple[str, str]]]:
    """chain id -> {(token name, genesis hash)} from every intact attestation in an ingest's chain."""
    found: dict[str, set[tuple[str, str]]] = {}
    candidates = []
    for chain_id, seq, stored_hash, canonical in conn.execute(_ATTESTATIONS, (A.CHAIN_ACCEPTED,)):
        canonical = bytes(canonical)
        if hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest() != stored_hash:
            continue  # the walk reports the record as modified
        try:
            doc = orjson.loads(canonical)
        except orjson.JSONDecodeError:
            continue
        candidates.append((chain_id, seq, doc))
    if not candidates:
        return found
    ingest_chains = _ingest_chains(conn, {c for c, _, _ in candidates})
    for chain_id, seq, doc in candidates:
        attestation = _attestation(doc, chain_id, seq) if chain_id in ingest_chains else None
        if attestation is not None:
            target, token, gh = attestation
            found.setdefault(target, set()).add((token, gh))
    return found


def _attestation(doc: Any, chain_id: str, seq: int) -> tuple[str, str, str] | None:
    """(attested chain id, token name, genesis hash) of a well-formed attestation document, else None."""
    if doc.__class__ is not dict:
        return None
    attrs = doc.get("attributes")
    if (
        doc.get("chain_id") != chain_id
        or doc.get("seq") != seq
        or doc.get("seq").__class__ is not int
        or doc.get("action") != A.CHAIN_ACCEPTED
        or doc.get("problems") != []
        or doc.get("resource_type") != "audit_chain"
        or attrs.__class__ is not dict
    ):
        return None
    target, token, gh = doc.get("resource_id"), attrs.get(A.ATTESTED_TOKEN), attrs.get(A.ATTESTED_GENESIS_HASH)
    if target.__class__ is not str or token.__class__ is not str or gh.__class__ is not str:
        return None
    return target, token, gh


def _trimmed_ingest_chains(conn: psycopg.Connection) -> list[str]:
    """Ingest chains whose records in PostgreSQL do not start at seq 1 (one index probe each)."""
    chains = sorted(_ingest_chains(conn, None))
    if not chains:
        return []
    rows = conn.execute(
        "SELECT x.c::text FROM pg_catalog.unnest(%s::uuid[]) AS x(c) "
        "WHERE EXISTS (SELECT 1 FROM audit_logs WHERE chain_id = x.c) "
        "AND NOT EXISTS (SELECT 1 FROM audit_logs WHERE chain_id = x.c AND seq = 1)",
        (chains,),
    ).fetchall()
    return [r[0] for r in rows]


def _ingest_chains(conn: psycopg.Connection, chain_ids: set[str] | None) -> set[str]:
    """Those of ``chain_ids`` (all when None) whose registered genesis names an ingest emitter (its bytes,
    not the ``emitter`` column)."""
    out = set()
    query = "SELECT chain_id::text, genesis FROM audit_chains"
    params: tuple[Any, ...] = ()
    if chain_ids is not None:
        query += " WHERE chain_id = ANY(%s::uuid[])"
        params = (sorted(chain_ids),)
    for chain_id, genesis in conn.execute(query, params):
        try:
            doc = orjson.loads(bytes(genesis))
        except orjson.JSONDecodeError:
            continue
        emitter = doc.get("emitter") if doc.__class__ is dict else None
        if emitter.__class__ is dict and emitter.get("kind") == "ingest" and doc.get("chain_id") == chain_id:
            out.add(chain_id)
    return out


def _has_column(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass('audit_chains') "
        "AND attname = 'delivered_by' AND NOT attisdropped"
    ).fetchone()
    return row is not None
