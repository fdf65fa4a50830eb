"""``otel_audit.configure()``: one call that wires audit logging into an application.

It reads the standard ``OTEL_*`` variables and ``OTEL_AUDIT_*`` ones where no
argument is given, reuses an SDK LoggerProvider that is already configured
(putting the audit processor *first*, so exporters see sealed records), or
creates one, and makes sure ``logging`` calls reach it.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from opentelemetry import _logs
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource

from otel_audit import settings
from otel_audit.core.chain import SealedRecord
from otel_audit.core.keys import SigningKey, load_signing_key
from otel_audit.errors import AuditConfigurationError
from otel_audit.inputs import AuditInputFilter
from otel_audit.pipeline import AuditPipeline, PipelineConfig
from otel_audit.privacy.policy import PrivacyPolicy, privacy_policy
from otel_audit.processor import AuditLogRecordProcessor
from otel_audit.spool.spool import SpoolConfig
from otel_audit.witness import DirectoryWitness, Witness

__all__ = ["AuditHandle", "active_handles", "checkpoint_options", "configure"]

_log = logging.getLogger("otel_audit")


class AuditHandle:
    """What :func:`configure` returns: flush, shut down, fail closed, inspect."""

    def __init__(
        self,
        processor: AuditLogRecordProcessor,
        provider: LoggerProvider,
        *,
        owns_provider: bool,
        handler: logging.Handler | None,
    ) -> None:
        self.processor = processor
        self.logger_provider = provider
        self.handler = handler
        self._owns_provider = owns_provider
        self._lock = threading.Lock()
        self._shut = False
        self._filters: list[tuple[logging.Handler, AuditInputFilter]] = []

    @property
    def pipeline(self) -> AuditPipeline:
        return self.processor.pipeline

    @property
    def chain_id(self) -> str:
        return self.pipeline.chain_id

    def flush(self, timeout: float = 30.0) -> bool:
        """Return once every audit record logged so far is committed to PostgreSQL.

        ``False`` if that did not happen within ``timeout`` seconds (the records
        stay in the spool and are written later).
        """
        return self.pipeline.flush(timeout)

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Flush, then stop the sink (and the LoggerProvider if configure() created it).

        Idempotent; also registered to run at interpreter exit.
        """
        with self._lock:
            if self._shut:
                return True
            self._shut = True
        committed = self.processor.close(timeout)
        _remove(self.logger_provider, self.processor)
        _ACTIVE.pop(id(self.logger_provider), None)
        if self._owns_provider:
            self.logger_provider.shutdown()
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
        for handler, guard in self._filters:
            handler.removeFilter(guard)
        self._filters.clear()
        return committed

    def protect(self, handler: logging.Handler) -> logging.Handler:
        """Add the audit input filter to an OpenTelemetry ``LoggingHandler`` the application created.

        Without it, OpenTelemetry's attribute cleaning runs on the raw ``extra``
        before otel-audit sees the record: some values make the logging call
        raise (deeply nested or self-containing maps, objects whose ``str()``
        raises, ``%s`` arguments that do not match) and others are changed or
        dropped unnoted. ``configure()`` already protects every OpenTelemetry
        handler attached to a logger when it runs; call this for handlers
        created afterwards. Idempotent; returns ``handler``. Add other filters
        first: this one should run last.
        """
        if not any(isinstance(f, AuditInputFilter) for f in handler.filters):
            guard = AuditInputFilter(self.processor.audit_loggers, self.processor.event_prefix)
            handler.addFilter(guard)
            self._filters.append((handler, guard))
        return handler

    def fail_closed(self, timeout: float = 5.0, *, expect: int = 1) -> AbstractContextManager[list[SealedRecord]]:
        """``with audit.fail_closed(): log.info(...)`` returns only once the record is in PostgreSQL.

        Raises :class:`otel_audit.AuditNotCommitted` otherwise; see
        :meth:`AuditLogRecordProcessor.fail_closed`.
        """
        return self.processor.fail_closed(timeout, expect=expect)

    def stats(self) -> dict[str, Any]:
        """Counters of this process's pipeline (also exported as OTel metrics)."""
        return self.pipeline.snapshot()


def configure(
    dsn: str | None = None,
    *,
    service_name: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_max_bytes: int | None = None,
    spool_segment_bytes: int | None = None,
    spool_fsync: str | None = None,
    when_full: str | None = None,
    block_timeout: float | None = None,
    strict: bool | None = None,
    audit_loggers: Sequence[str] | None = None,
    event_prefix: str | None = None,
    max_record_bytes: int | None = None,
    signing_key: str | os.PathLike[str] | SigningKey | None = None,
    witness_dir: str | os.PathLike[str] | None = None,
    witnesses: Sequence[Witness] = (),
    checkpoint_records: int | None = None,
    checkpoint_interval: float | None = None,
    redact: bool | None = None,
    redact_names: Sequence[str] | None = None,
    pseudonymize: Sequence[str] | None = None,
    pseudonym_keys: str | os.PathLike[str] | None = None,
    encrypt: Sequence[str] | None = None,
    subject_fields: Sequence[str] | None = None,
    keystore_dsn: str | None = None,
    master_key: str | os.PathLike[str] | None = None,
    privacy: PrivacyPolicy | None = None,
    otlp: bool | None = None,
    logger_provider: LoggerProvider | None = None,
    install_handler: bool = True,
    level: int = logging.INFO,
    metrics: bool = True,
    meter_provider: Any = None,
) -> AuditHandle:
    """Install the audit processor.

    Each argument left ``None`` is read from its ``OTEL_AUDIT_*`` environment
    variable (:mod:`otel_audit.settings` lists them with their defaults, as
    does the configuration reference); ``dsn`` is required one way or the
    other. ``service_name`` falls back to ``OTEL_SERVICE_NAME``; ``otlp`` is on
    when configure() creates the provider and ``OTEL_EXPORTER_OTLP_*`` names an
    endpoint or ``OTEL_LOGS_EXPORTER`` includes ``otlp``.

    ``metrics``/``meter_provider``: pipeline metrics (``otel_audit.*``) are
    registered on ``meter_provider``, or the global MeterProvider.

    ``signing_key`` (a path to the PEM file ``otel-audit keygen`` wrote, or a
    :class:`~otel_audit.core.keys.SigningKey`) turns on signed checkpoints:
    every ``checkpoint_records`` records and every ``checkpoint_interval``
    seconds, idle or not, plus a closing one at shutdown. ``witness_dir`` (and
    any ``witnesses=`` objects) receive a copy of each committed checkpoint.

    ``pseudonym_keys`` (a key ring file) stores the ``pseudonymize`` fields as
    keyed HMAC-SHA-256 pseudonyms. ``keystore_dsn`` and ``master_key`` encrypt
    the ``encrypt`` fields under a key per data subject, which ``otel-audit
    erase`` can destroy (docs/privacy.md).

    ``redact``/``redact_names``: secrets (passwords, tokens, keys, card
    numbers) are replaced before sealing, on by default; see
    :func:`otel_audit.privacy.privacy_policy` for all privacy settings, or pass
    a ready ``privacy=`` policy (then the other privacy arguments are ignored).

    ``level``: audit calls at this level must reach OpenTelemetry. If the root
    logger's level would discard them, it is lowered to ``level`` and the root
    logger's existing handlers keep their old threshold, so other output does
    not change.

    Every OpenTelemetry ``LoggingHandler`` attached to a logger when this runs
    (including the one installed here) gets :class:`~otel_audit.AuditInputFilter`,
    which makes audit records' ``extra`` values safe for OpenTelemetry's attribute
    cleaning and notes each conversion; protect a handler created later with
    :meth:`AuditHandle.protect`.
    """
    dsn = dsn or settings.DSN.get()
    if not dsn:
        raise AuditConfigurationError(
            "otel_audit.configure() needs a PostgreSQL DSN: pass dsn= or set OTEL_AUDIT_DSN, "
            "for example postgresql://audit_writer@db.internal/audit"
        )
    service_name = service_name or os.environ.get("OTEL_SERVICE_NAME")
    spool = SpoolConfig(
        directory=Path(spool_dir) if spool_dir is not None else settings.SPOOL_DIR.get(),
        max_bytes=int(settings.SPOOL_MAX_BYTES.value(spool_max_bytes)),
        segment_bytes=int(settings.SPOOL_SEGMENT_BYTES.value(spool_segment_bytes)),
        fsync=spool_fsync or settings.SPOOL_FSYNC.get(),  # type: ignore[arg-type]
        when_full=when_full or settings.WHEN_FULL.get(),  # type: ignore[arg-type]
        block_timeout=float(settings.BLOCK_TIMEOUT.value(block_timeout)),
    )
    strict = settings.STRICT.value(strict)
    if audit_loggers is None:
        audit_loggers = list(settings.LOGGERS.get())
    if event_prefix is None:
        event_prefix = settings.EVENT_PREFIX.get()
    if privacy is None:
        privacy = privacy_policy(
            redact=redact,
            redact_names=redact_names,
            pseudonymize=pseudonymize,
            pseudonym_keys=pseudonym_keys,
            encrypt=encrypt,
            subject_fields=subject_fields,
            keystore_dsn=keystore_dsn,
            master_key=master_key,
        )
    config = PipelineConfig(
        dsn=dsn,
        spool=spool,
        privacy=privacy.describe(),
        max_record_bytes=int(settings.MAX_RECORD_BYTES.value(max_record_bytes)),
        **checkpoint_options(
            signing_key=signing_key,
            witness_dir=witness_dir,
            witnesses=witnesses,
            checkpoint_records=checkpoint_records,
            checkpoint_interval=checkpoint_interval,
        ),
    )

    provider, owns_provider = _logger_provider(logger_provider, service_name)
    if id(provider) in _ACTIVE:
        raise AuditConfigurationError(
            "otel_audit.configure() was already called for this LoggerProvider: every audit record would be "
            "sealed twice. Use the handle the first call returned, or call its shutdown() first."
        )
    resource_attrs = provider.resource.attributes
    pipeline = AuditPipeline(
        config,
        emitter={
            "service_name": resource_attrs.get(SERVICE_NAME),
            "host_name": resource_attrs.get("host.name") or socket.gethostname(),
        },
    )
    processor = AuditLogRecordProcessor(
        pipeline, audit_loggers=audit_loggers, event_prefix=event_prefix, strict=bool(strict), privacy=privacy
    )
    _add_first(provider, processor)
    if otlp is None:
        otlp = owns_provider and _otlp_requested()
    if otlp:
        _add_otlp_exporter(provider)

    handler = None
    if install_handler and not _has_otel_handler():
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        handler = LoggingHandler(level=logging.NOTSET, logger_provider=provider)
        logging.getLogger().addHandler(handler)
    handle = AuditHandle(processor, provider, owns_provider=owns_provider, handler=handler)
    # Audit records must reach the processor whatever their extra holds: OpenTelemetry's
    # handler cleans attributes before any processor runs (see otel_audit.inputs).
    for otel_handler in _otel_handlers():
        handle.protect(otel_handler)
    _ensure_level(level, audit_loggers)
    own = logging.getLogger("otel_audit")
    if own.level == logging.NOTSET:
        # Lowering the root level for audit calls must not turn otel-audit's own
        # INFO chatter into application logs; warnings and errors still flow.
        own.setLevel(logging.WARNING)
    if metrics:
        from otel_audit.metrics import register_pipeline_metrics

        register_pipeline_metrics(processor, meter_provider)

    _ACTIVE[id(provider)] = handle
    atexit.register(handle.shutdown)
    return handle


#: LoggerProvider id -> the handle configure() returned for it (one audit processor each).
_ACTIVE: dict[int, AuditHandle] = {}


def active_handles() -> list[AuditHandle]:
    """The handles of the configure() calls in this process not yet shut down (one per LoggerProvider)."""
    return list(_ACTIVE.values())


# ---------------------------------------------------------------------- helpers
def checkpoint_options(
    *,
    signing_key: str | os.PathLike[str] | SigningKey | None = None,
    witness_dir: str | os.PathLike[str] | None = None,
    witnesses: Sequence[Witness] = (),
    checkpoint_records: int | None = None,
    checkpoint_interval: float | None = None,
) -> dict[str, Any]:
    """The checkpoint and witness settings of a :class:`PipelineConfig`, as keyword arguments.

    Each argument left ``None`` is read from its environment variable
    (``OTEL_AUDIT_SIGNING_KEY``, ``OTEL_AUDIT_WITNESS_DIR``,
    ``OTEL_AUDIT_CHECKPOINT_RECORDS``, ``OTEL_AUDIT_CHECKPOINT_INTERVAL``);
    ``OTEL_AUDIT_WITNESS`` (an ``s3://`` URL or a directory) adds a witness.
    :func:`configure` and ``otel-audit serve`` both use it, so an application
    and the OTLP ingest read the same variables the same way and fail the
    same way on an unreadable key. Raises
    :class:`~otel_audit.errors.AuditConfigurationError`.
    """
    key = _signing_key(signing_key)
    all_witnesses = list(witnesses)
    if witness_dir is None:
        witness_dir = settings.WITNESS_DIR.get()
    if witness_dir is not None:
        all_witnesses.insert(0, DirectoryWitness(witness_dir))
    witness_url = settings.WITNESS.get()
    if witness_url:
        # s3://bucket/prefix (Object Lock) or a directory; see otel_audit.witness_s3.
        from otel_audit.witness_s3 import open_witness

        all_witnesses.append(open_witness(witness_url))
    if all_witnesses and key is None:
        _log.warning(
            "otel-audit: a witness is configured but no signing key, so this process signs no checkpoints "
            "(only checkpoints replayed from earlier processes' spools are witnessed). Set OTEL_AUDIT_SIGNING_KEY "
            "(signing_key=, `otel-audit serve --signing-key`) to the key written by `otel-audit keygen`"
        )
    return {
        "signing_key": key,
        "checkpoint_records": int(settings.CHECKPOINT_RECORDS.value(checkpoint_records)),
        "checkpoint_interval": float(settings.CHECKPOINT_INTERVAL.value(checkpoint_interval)),
        "witnesses": tuple(all_witnesses),
    }


def _signing_key(value: str | os.PathLike[str] | SigningKey | None) -> SigningKey | None:
    if isinstance(value, SigningKey):
        return value
    path = value if value is not None else settings.SIGNING_KEY.get()
    if path is None:
        return None
    return load_signing_key(path)


def _logger_provider(explicit: LoggerProvider | None, service_name: str | None) -> tuple[LoggerProvider, bool]:
    if explicit is not None:
        return explicit, False
    current = _logs.get_logger_provider()
    if isinstance(current, LoggerProvider):
        return current, False
    attrs = {SERVICE_NAME: service_name} if service_name else {}
    provider = LoggerProvider(resource=Resource.create(attrs))
    _logs.set_logger_provider(provider)
    if _logs.get_logger_provider() is not provider:
        raise AuditConfigurationError(
            "a global LoggerProvider that is not the OpenTelemetry SDK's is already set; pass "
            "logger_provider= (an opentelemetry.sdk._logs.LoggerProvider) to otel_audit.configure()"
        )
    return provider, True


def _add_first(provider: LoggerProvider, processor: LogRecordProcessor) -> None:
    """Register ``processor`` ahead of those already present.

    The SDK only appends, but exporters registered earlier (for example by
    ``opentelemetry-instrument``) must see the seal, so the audit processor has
    to run first. The multi-processor keeps a tuple under a lock; replacing it
    is the same operation ``add_log_record_processor`` performs.
    """
    multi = getattr(provider, "_multi_log_record_processor", None)
    current = getattr(multi, "_log_record_processors", None)
    lock = getattr(multi, "_lock", None)
    if isinstance(current, tuple) and lock is not None:
        with lock:
            multi._log_record_processors = (processor, *multi._log_record_processors)  # type: ignore[union-attr]
        return
    if current:
        _log.warning(
            "otel-audit: could not place the audit processor before the existing ones; "
            "OTLP exports from those will not carry the audit seal"
        )
    provider.add_log_record_processor(processor)


def _remove(provider: LoggerProvider, processor: LogRecordProcessor) -> None:
    """Take a shut-down audit processor out of the provider (the counterpart of _add_first)."""
    multi = getattr(provider, "_multi_log_record_processor", None)
    lock = getattr(multi, "_lock", None)
    if isinstance(getattr(multi, "_log_record_processors", None), tuple) and lock is not None:
        with lock:
            multi._log_record_processors = tuple(  # type: ignore[union-attr]
                p
                for p in multi._log_record_processors  # type: ignore[union-attr]
                if p is not processor
            )


def _otlp_requested() -> bool:
    exporters = {e.strip().lower() for e in os.environ.get("OTEL_LOGS_EXPORTER", "").split(",") if e.strip()}
    if "none" in exporters:
        return False
    return "otlp" in exporters or bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    )


def _add_otlp_exporter(provider: LoggerProvider) -> None:
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        except ImportError as exc:
            raise AuditConfigurationError(
                "OTLP protocol grpc was requested but the gRPC exporter is not installed: "
                "pip install 'otel-audit[grpc]', or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            ) from exc
    elif protocol in ("http/protobuf", "http/json"):
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    else:
        raise AuditConfigurationError(
            f"unknown OTLP protocol {protocol!r}: use grpc or http/protobuf (OTEL_EXPORTER_OTLP_PROTOCOL)"
        )
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))


def _is_otel_handler(handler: logging.Handler) -> bool:
    """An OpenTelemetry LoggingHandler (the instrumentation's or the SDK's deprecated one, or a subclass)."""
    return any(
        kind.__name__ == "LoggingHandler" and kind.__module__.startswith("opentelemetry")
        for kind in type(handler).__mro__
    )


def _otel_handlers() -> list[logging.Handler]:
    """Every OpenTelemetry LoggingHandler attached to a logger now (root first)."""
    loggers: list[Any] = [logging.getLogger()]
    loggers.extend(list(logging.Logger.manager.loggerDict.values()))
    found: list[logging.Handler] = []
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", ())):  # PlaceHolder entries have none
            if _is_otel_handler(handler) and handler not in found:
                found.append(handler)
    return found


def _has_otel_handler() -> bool:
    return any(_is_otel_handler(h) for h in logging.getLogger().handlers)


def _ensure_level(level: int, audit_loggers: Sequence[str]) -> None:
    root = logging.getLogger()
    if root.getEffectiveLevel() > level:
        old = root.getEffectiveLevel()
        for handler in root.handlers:
            if handler.level == logging.NOTSET and not _is_otel_handler(handler):
                handler.setLevel(old)
        root.setLevel(level)
    for name in audit_loggers:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
