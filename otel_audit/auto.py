"""Zero-code setup: ``opentelemetry-instrument`` calls :func:`post_instrument` through the
``opentelemetry_post_instrument`` entry point.

It runs after the distro/configurator (which may have created an SDK
LoggerProvider with exporters) and after the logging instrumentation (which
may have attached its LoggingHandler), so :func:`otel_audit.configure` finds
both and only adds what is missing: the audit processor, placed first.
Nothing happens unless ``OTEL_AUDIT_DSN`` is set.
"""

from __future__ import annotations

import logging

from otel_audit import settings

_log = logging.getLogger("otel_audit")


def post_instrument() -> None:
    if not settings.DSN.get():
        _log.debug("otel-audit: OTEL_AUDIT_DSN is not set; audit logging not enabled")
        return
    if settings.DISABLED.get():
        return
    from otel_audit.configuration import configure

    try:
        configure()
    except Exception:
        # opentelemetry-instrument swallows exceptions of its hooks; make this one loud.
        _log.exception("otel-audit: automatic configuration failed; audit records will NOT be written")
        raise
