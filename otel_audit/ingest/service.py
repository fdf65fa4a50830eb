"""The ingest itself, without HTTP: decoded OTLP requests -> sealed, committed records.

:meth:`IngestService.export` takes one ``ExportLogsServiceRequest`` and
returns what to answer. Per record:

* **pre-sealed** (sealed by an otel-audit processor: it carries
  ``audit.record.canonical``): checked against its seal
  (:mod:`otel_audit.ingest.presealed`), links checked on arrival, then relayed
  unchanged to the sink, which stores it under its original chain; a record
  that fails the check is rejected through OTLP ``partial_success``;
* **audit** (``audit.action``, or the configured event prefix / logger names,
  exactly the processor's rules): built with the same
  :class:`~otel_audit.core.record.RecordBuilder` and sealed into the ingest's
  own chain. A record with seal attributes but without the canonical bytes
  (another audit library using the same attribute names, or an attribute
  removed on the way) is sealed anew too, with a note, rather than refused:
  a refused record is dropped by the collector;
* anything else: acknowledged and ignored.

Each request carries the identity of its bearer token
(:class:`~otel_audit.ingest.auth.TokenIdentity`), which may be bound to the
services it may deliver for: a pre-sealed record claiming a service the token
may not deliver (its own ``service_name`` or its chain's genesis) is refused
through ``partial_success`` and logged; a record the ingest seals itself with
such a ``service.name`` is stored with a problem note, never dropped. When a
pre-sealed record 1 registers a chain, the ingest first seals (and commits) an
``otel_audit.chain_accepted`` record in its own chain naming the token, then
registers the chain with that name in ``audit_chains.delivered_by``; the
verifier holds the column to the record.

Success is answered only once every audit record of the request is committed
to PostgreSQL. Durability and retries are explained in ``docs/ingest.md``;
in short:

* *admission*: when PostgreSQL is known to be down, or too much is waiting to
  be committed, the request is refused (503 / 429 + Retry-After) **before**
  anything is sealed, so the sender's retry creates nothing twice;
* *idempotent retries*: once sealed, a record is remembered by a digest of its
  content (resource, scope, record and its occurrence in the request) until its
  request is answered with success; a retry of a request that was answered 503
  re-uses the seals instead of sealing the records again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otel_audit.core import attributes as A
from otel_audit.core.chain import genesis_hash
from otel_audit.core.recognize import Recognizer
from otel_audit.core.record import Draft, RecordBuilder
from otel_audit.errors import InvalidInput, SpoolFull
from otel_audit.ingest.auth import ANONYMOUS, TokenIdentity
from otel_audit.ingest.otlp import attribute_map, builder_context, resource_extra, resource_fields
from otel_audit.ingest.presealed import LinkTracker, SealedInput, SealRejected, has_seal, read_seal
from otel_audit.pipeline import AuditPipeline
from otel_audit.privacy.policy import PrivacyPolicy, privacy_policy

__all__ = ["ExportResult", "IngestConfig", "IngestService", "IngestStats"]

_log = logging.getLogger("otel_audit.ingest")

MiB = 1024 * 1024
_ACTION = A.AUDIT_ACTION
_CANONICAL = A.RECORD_CANONICAL
#: Attribute keys that make a record one the ingest must look at closely.
_TRIGGERS = frozenset((A.AUDIT_ACTION, *A.SEAL_ATTRIBUTES, A.RECORD_CANONICAL))
_UNCHECKABLE_SEAL = (
    f"arrived with seal attributes but without {A.RECORD_CANONICAL}, so the seal could not be checked; "
    "sealed anew by the OTLP ingest (the original seal attributes are kept in attributes)"
)

#: Actions of the records the ingest writes about what it received (its own chain).
EVENT_LINK_BREAK = "otel_audit.ingest.chain_link_break"
EVENT_REJECTED = "otel_audit.ingest.sealed_record_rejected"
_MAX_EXAMPLES = 20


@dataclass(frozen=True)
class IngestConfig:
    """Limits and behaviour of ``otel-audit serve`` (the CLI flags map onto these)."""

    max_body_bytes: int = 16 * MiB  # on the wire and after decompression
    max_records: int = 100_000  # log records per request
    max_attributes: int = 256  # top-level attributes per record
    max_connections: int = 64
    max_inflight_bytes: int = 256 * MiB  # request bodies held at once
    read_timeout: float = 30.0  # to read one request (headers and body)
    idle_timeout: float = 120.0  # a keep-alive connection with no request
    commit_timeout: float = 5.0  # wait for PostgreSQL before answering 503
    max_backlog_bytes: int = 128 * MiB  # sealed but uncommitted bytes before answering 429
    retry_after_unavailable: int = 5  # seconds, with 503
    retry_after_busy: int = 1  # seconds, with 429
    audit_loggers: tuple[str, ...] = ()
    event_prefix: str | None = None
    dedup_capacity: int = 1_000_000  # records remembered for retries of unanswered requests
    link_chains: int = 4096
    link_window: int = 64
    attested_chains: int = 65536  # (chain, token) attestations remembered, so a redelivery is not attested twice
    #: Applied to every record the ingest seals (not to records that arrive sealed: those are stored as sealed).
    privacy: PrivacyPolicy = field(default_factory=lambda: privacy_policy(env={}))

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_records", "max_attributes", "max_connections", "max_inflight_bytes"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be positive")
        if self.max_inflight_bytes < self.max_body_bytes:
            raise InvalidInput("max_inflight_bytes must be at least max_body_bytes (one request must fit)")
        if self.commit_timeout <= 0:
            raise InvalidInput("commit_timeout must be positive")


@dataclass
class IngestStats:
    requests: int = 0
    records: int = 0  # log records received in accepted requests
    sealed: int = 0  # audit records sealed into the ingest chain
    relayed: int = 0  # pre-sealed records stored under their own chain
    ignored: int = 0  # non-audit records acknowledged and dropped
    rejected: int = 0  # pre-sealed records refused (partial success)
    refused_service: int = 0  # of those: the token may not deliver for the record's service
    flagged_service: int = 0  # records sealed with a problem: the token may not claim their service
    flagged_reserved: int = 0  # records sealed with a problem: an action only otel-audit itself writes
    attested: int = 0  # otel_audit.chain_accepted records (a relayed chain registered)
    retried: int = 0  # records of a retry that re-used an earlier seal
    link_breaks: int = 0
    refused_unavailable: int = 0  # requests answered 503 before sealing
    refused_busy: int = 0  # requests answered 429
    commit_timeouts: int = 0  # requests answered 503 after sealing
    bad_requests: int = 0  # 4xx
    unauthorized: int = 0
    internal_errors: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ExportResult:
    """What to answer. ``status`` 200 (possibly with rejected records), 429 or 503."""

    status: int
    message: str = ""
    rejected: int = 0
    retry_after: int | None = None
    keys: list[bytes] = field(default_factory=list)  # retry keys to forget once the success is delivered


@dataclass
class _Plan:
    own: list[tuple[bytes, Draft]] = field(default_factory=list)
    relay: list[SealedInput] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # every refused pre-sealed record (partial success)
    bad_seals: list[str] = field(default_factory=list)  # of those: the seal did not check out
    records: int = 0
    #: (service, chain id) -> pre-sealed records refused because the token may not deliver that service
    refused: dict[tuple[Any, str], int] = field(default_factory=dict)
    #: service -> records sealed with a problem note because the token may not claim that service
    flagged: dict[Any, int] = field(default_factory=dict)
    reserved: int = 0  # records sealed with a problem note: a reserved otel_audit.* action


class _RecentSeals:
    """Retry keys -> spool positions of records sealed for a request not yet answered with success.

    Bounded: beyond ``capacity`` the oldest are forgotten (a retry of those
    would be sealed again; counted and logged).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map: dict[bytes, int] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: bytes) -> int | None:
        return self._map.get(key)

    def put(self, key: bytes, position: int) -> None:
        self._map[key] = position
        if len(self._map) > self.capacity:
            del self._map[next(iter(self._map))]
            self.evicted += 1
            if self.evicted in (1, 1000) or self.evicted % 100_000 == 0:
                _log.warning(
                    "otel-audit serve: %d sealed records were forgotten from the retry memory (capacity %d); a "
                    "retry of their request would seal them again. Raise --dedup-capacity if this recurs.",
                    self.evicted,
                    self.capacity,
                )

    def forget(self, keys: Iterable[bytes]) -> None:
        pop = self._map.pop
        for key in keys:
            pop(key, None)


class IngestService:
    """Turns decoded OTLP log requests into committed audit records (thread-safe)."""

    def __init__(self, pipeline: AuditPipeline, config: IngestConfig | None = None) -> None:
        self.pipeline = pipeline
        self.config = config or IngestConfig()
        self.stats = IngestStats()
        self._recognizer = Recognizer(self.config.audit_loggers, self.config.event_prefix)
        self._builder = RecordBuilder()
        self._links = LinkTracker(self.config.link_chains, self.config.link_window)
        self._recent = _RecentSeals(self.config.dedup_capacity)
        #: (chain id, token name) -> spool position of its otel_audit.chain_accepted record
        self._attested: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._by_token: dict[str, dict[str, int]] = {}
        self._seal_lock = threading.Lock()
        # Building drafts is pure Python, bound by the GIL: running it for one request
        # at a time costs no throughput, and leaves the sink thread (which gives the
        # GIL up on every write to PostgreSQL) fewer threads to win it back from.
        # Measured with 8 connections: ~16k -> ~20k records/s (benchmarks/bench_ingest.py).
        self._plan_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._closing = False

    # ------------------------------------------------------------------ API
    def export(
        self, request: ExportLogsServiceRequest, *, peer: str | None = None, token: TokenIdentity = ANONYMOUS
    ) -> ExportResult:
        """Store the audit records of one request sent with ``token``; returns the answer for the sender."""
        self._count(requests=1)
        self._count_token(token, requests=1)
        if not self._has_audit_records(request):
            n = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
            self._count(records=n, ignored=n)
            self._count_token(token, records=n)
            return ExportResult(200)
        refusal = self._admission()
        if refusal is not None:
            return refusal
        with self._plan_lock:
            plan = self._plan(request, token)
        self._count(records=plan.records, ignored=plan.records - len(plan.own) - len(plan.relay) - len(plan.rejected))
        refusal = self._attest(plan, peer, token)
        if refusal is not None:
            return refusal
        return self._store(plan, peer, token)

    def delivered(self, result: ExportResult) -> None:
        """The success answer for ``result`` was written: its records need no retry memory."""
        if result.keys:
            with self._seal_lock:
                self._recent.forget(result.keys)

    def health(self) -> tuple[bool, str]:
        """(ready, reason): whether a request with audit records would be accepted now.

        The reason is a fixed word (``ok``, ``shutting_down``, ``database_unreachable``,
        ``backlog``): ``/health`` answers without authentication, so it reveals no error text.
        """
        if self._closing:
            return False, "shutting_down"
        refusal = self._admission(count=False)
        if refusal is None:
            return True, "ok"
        return False, "backlog" if refusal.status == 429 else "database_unreachable"

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ingest": self.stats.snapshot(), "pipeline": self.pipeline.snapshot()}
        data["ingest"]["retry_memory_records"] = len(self._recent)
        data["ingest"]["retry_memory_evicted"] = self._recent.evicted
        with self._stats_lock:  # token names, never tokens
            data["tokens"] = {name: dict(counts) for name, counts in self._by_token.items()}
        return data

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new records, flush what was sealed, stop the pipeline."""
        self._closing = True
        return self.pipeline.close(timeout)

    # ------------------------------------------------------------------ steps
    def _has_audit_records(self, request: ExportLogsServiceRequest) -> bool:
        recognizer = self._recognizer
        active = recognizer.active
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                scope_name = scope_logs.scope.name or None
                for record in scope_logs.log_records:
                    for kv in record.attributes:
                        if kv.key in _TRIGGERS:
                            return True
                    if active and recognizer.default_action(scope_name, record.event_name or None) is not None:
                        return True
        return False

    def _admission(self, *, count: bool = True) -> ExportResult | None:
        """Refuse before sealing anything when the records could not be committed soon."""
        config = self.config
        if self._closing:
            return ExportResult(
                503,
                "otel-audit serve is shutting down; retry against another instance or later",
                retry_after=config.retry_after_unavailable,
            )
        stats = self.pipeline.stats
        if stats.database_up is False:
            if count:
                self._count(refused_unavailable=1)
            return ExportResult(
                503,
                f"PostgreSQL is unreachable ({stats.last_error or 'no detail'}); audit records are not accepted "
                "until it is back, so keep them and retry",
                retry_after=config.retry_after_unavailable,
            )
        backlog = self.pipeline.backlog_bytes
        if backlog > config.max_backlog_bytes:
            if count:
                self._count(refused_busy=1)
            return ExportResult(
                429,
                f"{backlog} bytes of audit records are waiting to be committed (limit {config.max_backlog_bytes}); "
                "slow down and retry",
                retry_after=config.retry_after_busy,
            )
        return None

    def _plan(self, request: ExportLogsServiceRequest, token: TokenIdentity = ANONYMOUS) -> _Plan:
        """Classify every record; build drafts and check seals (no side effects)."""
        plan = _Plan()
        bound = token.bound
        max_attributes = self.config.max_attributes
        recognizer = self._recognizer
        active = recognizer.active
        build = self._builder.build
        privacy = self.config.privacy
        redact = privacy.redact
        protects = privacy.protects
        arrival = time.time_ns()
        occurrences: dict[bytes, int] = {}
        for resource_logs in request.resource_logs:
            resource = resource_logs.resource
            service_name, instance_id, host_name = resource_fields(resource.attributes)
            extra = resource_extra(resource.attributes)
            not_allowed = bound and not token.may_deliver(service_name)
            resource_key = hashlib.blake2b(
                resource.SerializeToString(deterministic=True) + b"\x00" + resource_logs.schema_url.encode(),
                digest_size=16,
            ).digest()
            for scope_logs in resource_logs.scope_logs:
                scope_name = scope_logs.scope.name or None
                scope_key = (
                    resource_key
                    + hashlib.blake2b(scope_logs.scope.SerializeToString(deterministic=True), digest_size=16).digest()
                )
                for record in scope_logs.log_records:
                    plan.records += 1
                    # One pass converts the attributes; the audit path (nearly all of
                    # what a collector routes here) needs them anyway.
                    notes: list[str] = []
                    attrs = attribute_map(record, max_attributes, notes)
                    if _CANONICAL in attrs or (notes and _CANONICAL in {kv.key for kv in record.attributes}):
                        self._plan_sealed(plan, record, attrs if not notes else None, token)
                        continue
                    problems: list[str] = []
                    default_action = None
                    if has_seal(attrs):
                        problems.append(_UNCHECKABLE_SEAL)
                    elif _ACTION not in attrs:
                        if not active:
                            continue
                        default_action = recognizer.default_action(scope_name, record.event_name or None)
                        if default_action is None:
                            continue
                    if record.dropped_attributes_count:
                        problems.append(
                            f"OpenTelemetry attribute limits dropped {record.dropped_attributes_count} attribute(s) "
                            "before sealing"
                        )
                    problems.extend(notes)
                    context = builder_context(record, arrival)
                    changes, context["body"] = redact(attrs, context["body"])
                    if changes is not None:
                        attrs.update(changes)
                    draft = build(
                        attrs,
                        **context,
                        scope=scope_name,
                        service_name=service_name,
                        service_instance_id=instance_id,
                        host_name=host_name,
                        default_action=default_action or None,
                        problems=problems,
                        resource=extra,
                    )
                    if not_allowed:
                        draft.problems.append(
                            f"the ingest token {token.name!r} may not deliver records of service {service_name!r} "
                            f"(it may deliver for: {', '.join(token.services or ())}); sealed by the ingest as sent"
                        )
                        plan.flagged[service_name] = plan.flagged.get(service_name, 0) + 1
                    if protects:
                        privacy.protect(draft)
                    action = draft.doc.get("action")
                    if action.__class__ is str and action.startswith(A.RESERVED_ACTION_PREFIX):
                        draft.problems.append(
                            f"action {action!r} is reserved for records otel-audit writes about itself; this one "
                            f"arrived through the OTLP ingest (token {token.name!r}), so it is no such record"
                        )
                        plan.reserved += 1
                    # The retry key: what the record is, where it came from, and which
                    # occurrence of identical records in this request it is.
                    key = hashlib.blake2b(scope_key + record.SerializeToString(deterministic=True), digest_size=16)
                    base = key.digest()
                    n = occurrences.get(base, 0)
                    occurrences[base] = n + 1
                    if n:
                        key.update(n.to_bytes(8, "big"))
                    plan.own.append((key.digest(), draft))
        return plan

    def _plan_sealed(self, plan: _Plan, record: Any, attrs: dict[str, Any] | None, token: TokenIdentity) -> None:
        if attrs is None:  # the attribute limit applied: a seal is read from all of them
            attrs = attribute_map(record, len(record.attributes), [])
        try:
            item = read_seal(attrs, max_record_bytes=self.pipeline.config.max_record_bytes)
        except SealRejected as exc:
            plan.rejected.append(str(exc))
            plan.bad_seals.append(str(exc))
            return
        if token.bound:
            for service in item.services:
                if not token.may_deliver(service):
                    plan.rejected.append(
                        f"sealed record {item.chain_id}/{item.seq}: the ingest token {token.name!r} may not deliver "
                        f"records of service {service!r}"
                    )
                    key = (service, item.chain_id)
                    plan.refused[key] = plan.refused.get(key, 0) + 1
                    return
        plan.relay.append(item)

    def _attest(self, plan: _Plan, peer: str | None, token: TokenIdentity) -> ExportResult | None:
        """Before a pre-sealed record 1 registers its chain: seal and commit, in the ingest's own chain,
        an ``otel_audit.chain_accepted`` record naming the delivering token (once per chain and token).

        Committed first, so that no registry entry naming a token exists without the record that
        attests it. Returns the refusal to answer if that cannot be done now.
        """
        new = [item for item in plan.relay if item.genesis is not None]
        if not new:
            return None
        positions = []
        try:
            with self._seal_lock:
                attested = self._attested
                for item in new:
                    key = (item.chain_id, token.name)
                    position = attested.get(key)
                    if position is None:
                        position = self.pipeline.seal(self._attestation(item, token, peer)).position
                        attested[key] = position
                        if len(attested) > self.config.attested_chains:
                            attested.popitem(last=False)
                        self._count(attested=1)
                    positions.append(position)
        except SpoolFull as exc:
            self._count(refused_busy=1)
            return ExportResult(
                503, f"the ingest's spool is full ({exc}); retry later", retry_after=self.config.retry_after_unavailable
            )
        if not self._wait(max(positions), None):
            self._count(commit_timeouts=1)
            return ExportResult(
                503,
                f"a new chain's registration could not be committed to PostgreSQL within "
                f"{self.config.commit_timeout:g}s (last error: {self.pipeline.stats.last_error or 'none'}); retry",
                retry_after=self.config.retry_after_unavailable,
            )
        return None

    def _attestation(self, item: SealedInput, token: TokenIdentity, peer: str | None) -> Draft:
        assert item.genesis is not None
        service = item.genesis_service
        attrs: dict[str, Any] = {
            A.AUDIT_ACTION: A.CHAIN_ACCEPTED,
            A.AUDIT_ACTOR_ID: token.name,
            A.AUDIT_ACTOR_TYPE: "service",
            A.AUDIT_RESOURCE_TYPE: "audit_chain",
            A.AUDIT_RESOURCE_ID: item.chain_id,
            A.AUDIT_RESULT: "success",
            A.ATTESTED_TOKEN: token.name,
            A.ATTESTED_GENESIS_HASH: genesis_hash(item.genesis),
        }
        if service.__class__ is str:
            attrs["otel_audit.chain.service_name"] = service
        if peer:
            attrs[A.CLIENT_ADDRESS] = peer
        return self._builder.build(
            attrs,
            time_unix_nano=time.time_ns(),
            body=f"chain {item.chain_id} registered from a pre-sealed record 1 delivered with ingest token "
            f"{token.name!r}",
            severity_text="INFO",
            severity_number=9,
            scope="otel_audit.ingest",
        )

    def _store(self, plan: _Plan, peer: str | None, token: TokenIdentity = ANONYMOUS) -> ExportResult:
        pipeline = self.pipeline
        keys: list[bytes] = []
        own_position: int | None = None
        relay_position: int | None = None
        breaks: dict[str, list[tuple[int, str]]] = {}
        reused = 0
        try:
            with self._seal_lock:
                recent = self._recent
                for key, draft in plan.own:
                    position = recent.get(key)
                    if position is None:
                        position = pipeline.seal(draft).position
                        recent.put(key, position)
                    else:
                        reused += 1
                    keys.append(key)
                    if own_position is None or position > own_position:
                        own_position = position
                for item in plan.relay:
                    problem = self._links.observe(item.chain_id, item.seq, item.hash, item.prev_hash)
                    if problem is None and item.genesis_problem is not None:
                        problem = item.genesis_problem
                    if problem is not None:
                        breaks.setdefault(item.chain_id, []).append((item.seq, problem))
                    relay_position = pipeline.relay(
                        item.canonical,
                        item.digest,
                        genesis=item.genesis,
                        delivered_by=token.name if item.genesis is not None else None,
                    )
                for draft in self._event_drafts(plan, breaks, peer, token):
                    own_position = max(own_position or 0, pipeline.seal(draft).position)
        except SpoolFull as exc:
            self._count(refused_busy=1)
            return ExportResult(
                503,
                f"the ingest's spool is full ({exc}); retry later (records of this request sealed so far are "
                "recognized on retry)",
                retry_after=self.config.retry_after_unavailable,
            )
        n_breaks = sum(len(v) for v in breaks.values())
        n_refused = sum(plan.refused.values())
        n_flagged = sum(plan.flagged.values())
        self._count(
            sealed=len(plan.own) - reused,
            retried=reused,
            relayed=len(plan.relay),
            rejected=len(plan.rejected),
            link_breaks=n_breaks,
            refused_service=n_refused,
            flagged_service=n_flagged,
            flagged_reserved=plan.reserved,
        )
        self._count_token(
            token,
            records=plan.records,
            sealed=len(plan.own) - reused,
            relayed=len(plan.relay),
            rejected=len(plan.rejected),
            refused_service=n_refused,
            flagged_service=n_flagged,
        )
        for (service, chain_id), n in list(plan.refused.items())[:_MAX_EXAMPLES]:
            _log.warning(
                "otel-audit serve: ingest token %r may not deliver records of service %r: refused %d pre-sealed "
                "record(s) of chain %s from %s (the token may deliver for: %s)",
                token.name,
                service,
                n,
                chain_id,
                peer or "?",
                ", ".join(token.services or ()),
            )
        for service, n in list(plan.flagged.items())[:_MAX_EXAMPLES]:
            _log.warning(
                "otel-audit serve: ingest token %r may not deliver records of service %r: sealed %d record(s) with a "
                "problem note (from %s; the token may deliver for: %s)",
                token.name,
                service,
                n,
                peer or "?",
                ", ".join(token.services or ()),
            )
        if plan.reserved:
            _log.warning(
                "otel-audit serve: %d record(s) from %s (token %r) use an action reserved for otel-audit's own "
                "records (%s*); sealed with a problem note",
                plan.reserved,
                peer or "?",
                token.name,
                A.RESERVED_ACTION_PREFIX,
            )
        for chain_id, items in breaks.items():
            for seq, problem in items[:_MAX_EXAMPLES]:
                _log.warning("otel-audit serve: chain %s seq %d: %s", chain_id, seq, problem)
        if plan.bad_seals:
            _log.warning(
                "otel-audit serve: rejected %d pre-sealed record(s) from %s (token %r): %s",
                len(plan.bad_seals),
                peer or "?",
                token.name,
                "; ".join(plan.bad_seals[:3]),
            )

        if not self._wait(own_position, relay_position):
            self._count(commit_timeouts=1)
            stats = pipeline.stats
            return ExportResult(
                503,
                f"the audit records are sealed and safe in the ingest's spool but were not committed to PostgreSQL "
                f"within {self.config.commit_timeout:g}s (last error: {stats.last_error or 'none'}); retry: records "
                "already sealed are recognized and not stored twice",
                retry_after=self.config.retry_after_unavailable,
            )
        message = ""
        if plan.rejected:
            message = (
                f"{len(plan.rejected)} pre-sealed record(s) rejected: "
                + "; ".join(plan.rejected[:3])
                + ("; ..." if len(plan.rejected) > 3 else "")
            )
        return ExportResult(200, message, rejected=len(plan.rejected), keys=keys)

    def _wait(self, own_position: int | None, relay_position: int | None) -> bool:
        """Wait for the commit; give up early once PostgreSQL is known to be down."""
        pipeline = self.pipeline
        deadline = time.monotonic() + self.config.commit_timeout
        started = time.monotonic()
        for position, relay in ((own_position, False), (relay_position, True)):
            if position is None:
                continue
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if pipeline.wait_position(position, min(remaining, 0.5), relay=relay):
                    break
                if pipeline.stats.database_up is False and time.monotonic() - started >= 1.0:
                    return False
        return True

    def _event_drafts(
        self,
        plan: _Plan,
        breaks: dict[str, list[tuple[int, str]]],
        peer: str | None,
        token: TokenIdentity = ANONYMOUS,
    ) -> list[Draft]:
        """Records in the ingest's own chain about what arrived: link breaks, rejected seals."""
        drafts = []
        now = time.time_ns()
        common = {
            A.AUDIT_ACTOR_ID: "otel-audit-ingest",
            A.AUDIT_ACTOR_TYPE: "system",
            A.AUDIT_RESOURCE_TYPE: "audit_chain",
            A.AUDIT_RESULT: "failure",
            A.ATTESTED_TOKEN: token.name,
        }
        if peer:
            common[A.CLIENT_ADDRESS] = peer
        for chain_id, items in breaks.items():
            drafts.append(
                self._builder.build(
                    {
                        **common,
                        A.AUDIT_ACTION: EVENT_LINK_BREAK,
                        A.AUDIT_RESOURCE_ID: chain_id,
                        A.AUDIT_REASON: "; ".join(p for _, p in items[:_MAX_EXAMPLES]),
                        "otel_audit.ingest.breaks.count": len(items),
                        "otel_audit.ingest.breaks.seq": [seq for seq, _ in items[:_MAX_EXAMPLES]],
                    },
                    time_unix_nano=now,
                    body=f"{len(items)} link problem(s) in chain {chain_id} seen on arrival at the OTLP ingest",
                    severity_text="WARN",
                    severity_number=13,
                    scope="otel_audit.ingest",
                )
            )
        if plan.rejected:
            drafts.append(
                self._builder.build(
                    {
                        **common,
                        A.AUDIT_ACTION: EVENT_REJECTED,
                        A.AUDIT_RESOURCE_ID: "otlp-request",
                        A.AUDIT_REASON: "; ".join(plan.rejected[:_MAX_EXAMPLES]),
                        "otel_audit.ingest.rejected.count": len(plan.rejected),
                    },
                    time_unix_nano=now,
                    body=f"{len(plan.rejected)} pre-sealed record(s) rejected by the OTLP ingest",
                    severity_text="WARN",
                    severity_number=13,
                    scope="otel_audit.ingest",
                )
            )
        return drafts

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            stats = self.stats
            for name, value in increments.items():
                setattr(stats, name, getattr(stats, name) + value)

    def _count_token(self, token: TokenIdentity, **increments: int) -> None:
        with self._stats_lock:
            counts = self._by_token.get(token.name)
            if counts is None:
                counts = self._by_token[token.name] = {
                    "requests": 0,
                    "records": 0,
                    "sealed": 0,
                    "relayed": 0,
                    "rejected": 0,
                    "refused_service": 0,
                    "flagged_service": 0,
                }
            for name, value in increments.items():
                counts[name] += value

    def count(self, name: str, n: int = 1) -> None:
        """Counters the HTTP layer keeps (bad requests, unauthorized, internal errors)."""
        self._count(**{name: n})
