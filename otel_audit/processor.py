"""The OpenTelemetry side: a LogRecordProcessor that seals audit records.

Register it on the LoggerProvider *before* any BatchLogRecordProcessor: it
runs on the caller's thread, writes the seal back onto the record, and the
exporters that follow then carry the seal in OTLP. Non-audit records return
after one dictionary lookup.

It never raises into the application except where that is the point:
``strict=True`` and an invalid record (:class:`AuditRecordInvalid`), or a
spool that stays full (:class:`SpoolFull`, ``when_full="block"``). Anything
else is logged and counted; the record is not silently lost.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import baggage
from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord

from otel_audit.context import current_audit_context
from otel_audit.core import attributes as A
from otel_audit.core.chain import SealedRecord
from otel_audit.core.recognize import Recognizer
from otel_audit.core.record import HASH_ALGORITHM, RecordBuilder, resource_attributes
from otel_audit.errors import AuditNotCommitted, AuditRecordInvalid, SpoolFull
from otel_audit.pipeline import AuditPipeline
from otel_audit.privacy.policy import PrivacyPolicy

__all__ = ["AuditLogRecordProcessor", "collect_sealed"]

_log = logging.getLogger("otel_audit")

#: Records sealed inside the current ``fail_closed()`` block (per thread / task).
_FAIL_CLOSED: contextvars.ContextVar[list[SealedRecord] | None] = contextvars.ContextVar(
    "otel_audit_fail_closed", default=None
)


@contextmanager
def collect_sealed() -> Iterator[list[SealedRecord]]:
    """Collect the audit records sealed in this thread or task inside the block, in order.

    What :meth:`AuditLogRecordProcessor.fail_closed` waits for; the web
    middleware's fail-closed routes use it the same way.
    """
    sealed: list[SealedRecord] = []
    token = _FAIL_CLOSED.set(sealed)
    try:
        yield sealed
    finally:
        _FAIL_CLOSED.reset(token)


_SESSION = A.SESSION_ID
_USER = A.USER_ID
_ACTION = A.AUDIT_ACTION
_DROP_MARKER_ACTION = "otel_audit.records_dropped"
# The context key under which the API stores baggage: reading it directly saves
# building a MappingProxy per record (get_all). Falls back to the public API.
_BAGGAGE_KEY = getattr(baggage, "_BAGGAGE_KEY", None)
# host.name when the Resource has none (the SDK's default Resource does not detect it).
_HOSTNAME = socket.gethostname()


class AuditLogRecordProcessor(LogRecordProcessor):
    """Recognize -> validate -> enrich -> seal -> annotate -> spool.

    ``audit_loggers``: logger names (with their children) whose records are
    audit records even without ``audit.action``. ``event_prefix``: records
    whose OTel event name starts with it are audit records; their action
    defaults to the event name without the prefix. ``strict``: raise
    :class:`AuditRecordInvalid` instead of storing invalid records flagged.
    ``privacy``: the :class:`~otel_audit.privacy.PrivacyPolicy` applied before
    sealing (secret redaction and the rest); ``None`` applies none. Redacted
    values are written back onto the OpenTelemetry record, so exporters that
    run after this processor never see the secret either.
    """

    def __init__(
        self,
        pipeline: AuditPipeline,
        *,
        audit_loggers: Iterable[str] = (),
        event_prefix: str | None = None,
        strict: bool = False,
        privacy: PrivacyPolicy | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.strict = strict
        self.privacy = privacy
        self._recognizer = Recognizer(audit_loggers, event_prefix)
        self.audit_loggers = self._recognizer.audit_loggers
        self.event_prefix = self._recognizer.event_prefix
        self._builder = RecordBuilder()
        self._resource: Any = None
        self._resource_fields: tuple[Any, Any, Any, dict[str, Any]] = (None, None, None, {})
        self._drop_lock = threading.Lock()
        self._dropped_since: tuple[int, float, float] | None = None  # count, first, last
        self._drop_logged = 0.0
        self._shutdown = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    # ------------------------------------------------------------------ OTel API
    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        record = log_record.log_record
        attributes = record.attributes
        amap = getattr(attributes, "_dict", attributes)
        if amap is None:
            amap = {}
        default_action = None
        if _ACTION not in amap:
            default_action = self._recognize_other(log_record)
            if default_action is None:
                return
        if self._shutdown:
            _log.error("otel-audit: audit record logged after shutdown was not stored: %s", record.body)
            self.pipeline.count_dropped()
            return
        inherited = current_audit_context()  # otel_audit.audit_context(): one lookup when none is open
        if inherited is not None:
            amap = _inherit(attributes, amap, inherited.attributes())
        privacy = self.privacy
        if privacy is not None:
            changes, body = privacy.redact(amap, record.body)
            if changes is not None:
                # Onto the OTel record itself: the OTLP export must not carry the secret either.
                amap = _write(attributes, amap, changes)
                record.body = body
        try:
            sealed = self._seal(log_record, amap, default_action or None)
        except (AuditRecordInvalid, SpoolFull) as exc:
            if isinstance(exc, SpoolFull) and self.pipeline.config.spool.when_full == "drop":
                self._note_drop(exc)
                return
            raise
        except Exception as exc:
            if self.strict:
                raise
            fallback = self._seal_fallback(log_record, amap, exc)
            if fallback is None:
                return
            sealed = fallback
        _annotate(attributes, sealed, self.pipeline.chain.genesis if sealed.seq == 1 else None)
        pending = _FAIL_CLOSED.get()
        if pending is not None:
            pending.append(sealed)
        if self._dropped_since is not None:
            self._emit_drop_marker()

    def shutdown(self) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting records, flush for up to ``timeout`` seconds, stop the sink."""
        if self._shutdown:
            return True
        self._shutdown = True
        return self.pipeline.close(timeout)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.pipeline.flush(timeout_millis / 1000.0)

    # ------------------------------------------------------------------ fail-closed
    @contextmanager
    def fail_closed(self, timeout: float = 5.0, *, expect: int = 1) -> Iterator[list[SealedRecord]]:
        """Hold the caller until the block's audit records are committed to PostgreSQL.

        Raises :class:`AuditNotCommitted` when they are not committed within
        ``timeout`` seconds, or when fewer than ``expect`` audit records reached
        otel-audit inside the block (a logger level or a missing handler
        swallowed the call: the action must not proceed unaudited).
        """
        with collect_sealed() as sealed:
            yield sealed
        if len(sealed) < expect:
            raise AuditNotCommitted(
                f"expected {expect} audit record(s) inside fail_closed(), but {len(sealed)} reached otel-audit. "
                "Check the logger's level and that it propagates to the OpenTelemetry LoggingHandler."
            )
        if sealed and not self.pipeline.wait_committed(sealed[-1], timeout):
            stats = self.pipeline.stats
            raise AuditNotCommitted(
                f"audit record {sealed[-1].record_id} was not committed to PostgreSQL within {timeout:g}s "
                f"(last error: {stats.last_error or 'none'}). It is safe in the spool and will be written "
                "later; do not proceed with the action."
            )

    # ------------------------------------------------------------------ internals
    def _recognize_other(self, log_record: ReadWriteLogRecord) -> str | None:
        """Audit by logger name or event name; returns the default action or None.

        The rules live in :class:`~otel_audit.core.recognize.Recognizer`, which the
        OTLP ingest applies to records from other languages.
        """
        recognizer = self._recognizer
        if not recognizer.active:
            return None
        scope = log_record.instrumentation_scope
        return recognizer.default_action(scope.name if scope is not None else None, log_record.log_record.event_name)

    def _seal(self, log_record: ReadWriteLogRecord, amap: Any, default_action: str | None) -> SealedRecord:
        record = log_record.log_record
        resource = log_record.resource
        if resource is not self._resource:
            attrs = resource.attributes if resource is not None else {}
            self._resource_fields = (
                attrs.get(A.SERVICE_NAME),
                attrs.get(A.SERVICE_INSTANCE_ID),
                attrs.get(A.HOST_NAME) or _HOSTNAME,
                resource_attributes(attrs),
            )
            self._resource = resource
        service_name, instance_id, host_name, resource_extra = self._resource_fields
        fallback_session = fallback_user = None
        if _SESSION not in amap or _USER not in amap:
            context = getattr(record, "context", None)
            if context:
                bag = context.get(_BAGGAGE_KEY) if _BAGGAGE_KEY is not None else baggage.get_all(context)
                if bag:
                    fallback_session = bag.get(_SESSION)
                    fallback_user = bag.get(_USER)
        problems = None
        dropped = getattr(record.attributes, "dropped", 0)
        if dropped:
            problems = (f"OpenTelemetry attribute limits dropped {dropped} attribute(s) before sealing",)
        severity = record.severity_number
        scope = log_record.instrumentation_scope
        draft = self._builder.build(
            amap,
            time_unix_nano=record.timestamp or record.observed_timestamp or time.time_ns(),
            body=record.body,
            severity_text=record.severity_text,
            severity_number=severity.value if severity is not None else None,
            event_name=record.event_name,
            scope=scope.name if scope is not None else None,
            trace_id=record.trace_id or 0,
            span_id=record.span_id or 0,
            trace_flags=record.trace_flags,
            service_name=service_name,
            service_instance_id=instance_id,
            host_name=host_name,
            fallback_session_id=fallback_session,
            fallback_user_id=fallback_user,
            default_action=default_action,
            problems=problems or (),
            resource=resource_extra,
        )
        if self.strict and draft.problems:
            raise AuditRecordInvalid(draft.problems)
        privacy = self.privacy
        if privacy is not None and privacy.protects:
            changes = privacy.protect(draft)
            if changes is not None:
                _write(record.attributes, amap, changes)  # the export says what the seal covers
        return self.pipeline.seal(draft)

    def _seal_fallback(self, log_record: ReadWriteLogRecord, amap: Any, exc: Exception) -> SealedRecord | None:
        """An unexpected error while building the record: store what is known, as text.

        The record is sealed with the attributes' text form and the error in
        its problems, so the event is not lost to a bug in otel-audit; only if
        even that fails is it counted as dropped.
        """
        _log.exception(
            "otel-audit: internal error while sealing an audit record; storing it as text. Please report this."
        )
        try:
            privacy = self.privacy
            # With pseudonyms or encryption configured, the values may be personal data the policy did not get
            # to protect: keep the names only.
            text = repr(sorted(map(str, amap))) if privacy is not None and privacy.protects else repr(dict(amap))
            draft = self._builder.build(
                {"otel_audit.unsealable": text[:65536]},
                time_unix_nano=log_record.log_record.timestamp or time.time_ns(),
                body=str(log_record.log_record.body)[:65536],
                problems=(f"internal error while sealing ({type(exc).__name__}: {exc}); attributes stored as text",),
            )
            return self.pipeline.seal(draft)
        except Exception:
            self.pipeline.count_dropped()
            # Names only: the values may hold personal data the privacy policy did not get to protect.
            _log.exception(
                "otel-audit: the audit record could not be stored at all (attribute names: %s)", sorted(map(str, amap))
            )
            return None

    def _note_drop(self, exc: SpoolFull) -> None:
        self.pipeline.count_dropped()
        now = time.time()
        with self._drop_lock:
            count, first, _ = self._dropped_since or (0, now, now)
            self._dropped_since = (count + 1, first, now)
            # Every loss is counted; the log says so at the first one and then every 10 s.
            report = count == 0 or now - self._drop_logged >= 10.0
            if report:
                self._drop_logged = now
        if report:
            _log.error(
                "otel-audit: audit records are being DROPPED (when_full=drop): %d so far in this streak; %s",
                count + 1,
                exc,
            )

    def _emit_drop_marker(self) -> None:
        """Record in the chain itself that records were dropped, once space is back."""
        with self._drop_lock:
            info = self._dropped_since
            self._dropped_since = None
        if info is None:
            return
        count, first, last = info
        draft = self._builder.build(
            {
                A.AUDIT_ACTION: _DROP_MARKER_ACTION,
                A.AUDIT_ACTOR_ID: "otel-audit",
                A.AUDIT_ACTOR_TYPE: "system",
                A.AUDIT_RESOURCE_TYPE: "audit_chain",
                A.AUDIT_RESOURCE_ID: self.pipeline.chain_id,
                A.AUDIT_RESULT: "failure",
                A.AUDIT_REASON: "spool full with when_full=drop",
                "otel_audit.dropped.count": count,
                "otel_audit.dropped.first": _iso(first),
                "otel_audit.dropped.last": _iso(last),
            },
            time_unix_nano=time.time_ns(),
            body=f"{count} audit record(s) were dropped because the spool was full",
            severity_text="ERROR",
            severity_number=17,
            scope="otel_audit",
        )
        try:
            self.pipeline.seal(draft)
        except SpoolFull:
            with self._drop_lock:  # still full: keep the tally for next time
                c2, f2, l2 = self._dropped_since or (0, first, last)
                self._dropped_since = (c2 + count, min(f2, first), max(l2, last))

    def _after_fork_in_child(self) -> None:
        if self._shutdown:
            return
        self._drop_lock = threading.Lock()
        self.pipeline.restart_after_fork()


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def _write(attributes: Any, amap: Any, changes: dict[str, Any]) -> Any:
    """Replace attribute values on the OTel record (no other thread sees it yet); returns the map to seal.

    A value ``None`` removes the attribute.
    """
    inner = getattr(attributes, "_dict", None)
    if inner is not None:
        for key, value in changes.items():
            if value is None:
                inner.pop(key, None)
            else:
                inner[key] = value
        return inner
    if attributes is not None:
        try:
            for key, value in changes.items():
                if value is None:
                    attributes.pop(key, None)
                else:
                    attributes[key] = value
            return attributes
        except (TypeError, AttributeError):  # a read-only mapping: seal the protected view only
            pass
    merged = {**amap, **changes}
    return {key: value for key, value in merged.items() if value is not None}


def _inherit(attributes: Any, amap: Any, defaults: dict[str, Any]) -> Any:
    """Fill in what the record lacks from the audit context (:mod:`otel_audit.context`).

    Written onto the OTel record itself, like the seal, so that what is
    exported says the same as what is sealed. Explicit attributes always win.
    """
    missing = {key: value for key, value in defaults.items() if key not in amap}
    if not missing:
        return amap
    inner = getattr(attributes, "_dict", None)
    if inner is not None:
        inner.update(missing)  # no other thread sees the record yet (see _annotate)
        return inner
    if attributes is not None:
        try:
            for key, value in missing.items():
                attributes[key] = value
            return attributes
        except TypeError:  # a read-only mapping: seal the merged view only
            pass
    return {**amap, **missing}


def _annotate(attributes: Any, sealed: SealedRecord, genesis: bytes | None = None) -> None:
    """Write the seal onto the OTel record's attributes.

    Besides the six seal attributes, the record carries its canonical bytes
    (``audit.record.canonical``) and, for record 1 of a chain, the chain's
    genesis (``audit.chain.genesis``): an OTLP ingest (``otel-audit serve``)
    cannot re-derive the exact hashed bytes from the exported record (baggage
    and the host-name fallback are not in OTLP), so it stores these under the
    original chain, after checking them against the seal.

    ``BoundedAttributes.__setitem__`` costs ~0.7 µs per key (validation, a lock,
    eviction bookkeeping); eight of them would eat most of the sealing budget.
    The values are known-clean scalars, so they go straight into the underlying
    dict; the seal must never be evicted or truncated by attribute limits anyway.
    """
    values = {
        A.RECORD_ID: sealed.record_id,
        A.CHAIN_ID: sealed.chain_id,
        A.SEQUENCE_NUMBER: sealed.seq,
        A.SEQUENCE_PREV_HASH: sealed.prev_hash,
        A.INTEGRITY_ALGORITHM: HASH_ALGORITHM,
        A.INTEGRITY_VALUE: sealed.hash,
        A.RECORD_CANONICAL: sealed.canonical.decode("utf-8"),
    }
    if genesis is not None:
        values[A.CHAIN_GENESIS] = genesis.decode("utf-8")
    inner = getattr(attributes, "_dict", None)
    if inner is not None:
        # No other thread can see this record yet (later processors run after us
        # on this thread), so the container's lock is not needed.
        inner.update(values)
    elif attributes is not None:
        for key, value in values.items():
            attributes[key] = value
