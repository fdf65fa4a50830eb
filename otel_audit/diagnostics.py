"""otel-audit's own warnings and errors reach the operator even when nothing else shows them.

An application that calls ``configure()`` and nothing else has no logging handler
but OpenTelemetry's, which turns log calls into OTel log records: otel-audit's
messages (PostgreSQL unreachable, records left in the spool at exit) would then go
nowhere a person looks. :class:`StderrFallback`, attached to the ``otel_audit``
logger, writes a warning or error to stderr exactly when no other handler on its
way up the logger hierarchy would show it (OpenTelemetry's ``LoggingHandler`` does
not count), so an application that configured logging sees each message once, and
one that did not sees it on stderr.

Repeats are rate-limited: a message with the same text template is written at most
once per :data:`REPEAT_INTERVAL` seconds, with a count of the ones not shown.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

__all__ = ["REPEAT_INTERVAL", "StderrFallback", "install_stderr_fallback"]

#: Seconds during which a repeated message (same logger, same template) is counted, not written.
REPEAT_INTERVAL = 60.0

_LOGGER = "otel_audit"
_install_lock = threading.Lock()


class StderrFallback(logging.Handler):
    """Writes otel-audit's warnings and errors to stderr when no other handler shows them."""

    def __init__(self, repeat_interval: float = REPEAT_INTERVAL) -> None:
        super().__init__(logging.WARNING)
        self.repeat_interval = repeat_interval
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (last written, not shown since)
        self._seen_lock = threading.Lock()
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def handle(self, record: logging.LogRecord) -> bool:
        if _shown_elsewhere(record, self):
            return False
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._seen_lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.repeat_interval:
                self._seen[key] = (last[0], last[1] + 1)
                return
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = (now, 0)
        try:
            text = self.format(record)
            if not text.split(" ", 1)[-1].startswith("otel-audit"):
                text = f"{record.levelname} otel-audit: {text.split(' ', 1)[-1]}"
            if last is not None and last[1]:
                text += f" ({last[1]} more like this in the last {now - last[0]:.0f}s not shown)"
            stream = sys.stderr
            if stream is None:  # pythonw, a daemon with stderr closed
                return
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # never let a diagnostic break the caller
            self.handleError(record)


def _is_opentelemetry(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("opentelemetry")


def _shown_elsewhere(record: logging.LogRecord, me: logging.Handler) -> bool:
    """Would a handler other than ``me`` and OpenTelemetry's show ``record``? (As ``Logger.callHandlers`` walks.)"""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        for handler in logger.handlers:
            if handler is me or _is_opentelemetry(handler):
                continue
            if record.levelno >= handler.level:
                return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def install_stderr_fallback() -> StderrFallback:
    """Attach the fallback to the ``otel_audit`` logger once per process; returns it."""
    logger = logging.getLogger(_LOGGER)
    with _install_lock:
        for handler in logger.handlers:
            if isinstance(handler, StderrFallback):
                return handler
        handler = StderrFallback()
        logger.addHandler(handler)
        return handler
