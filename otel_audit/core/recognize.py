"""Which log records are audit records: one rule set for the processor and the ingest.

A record is an audit record when

1. it carries the attribute ``audit.action`` (any value, even empty), or
2. its OpenTelemetry event name starts with the configured ``event_prefix``;
   its action then defaults to the event name without the prefix, or
3. its instrumentation scope (for Python ``logging``: the logger name) is one of
   the configured ``audit_loggers`` or a child of one (``billing.audit`` covers
   ``billing.audit.export``); it has no default action.

The in-process processor applies this to SDK log records, the OTLP ingest to
decoded OTLP records, so a record is recognized the same way whichever path
it takes. No OTel, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Recognizer"]

_CACHE_LIMIT = 4096


class Recognizer:
    """Rules 2 and 3 above (rule 1 is a dictionary lookup the callers inline)."""

    def __init__(self, audit_loggers: Iterable[str] = (), event_prefix: str | None = None) -> None:
        self.audit_loggers = tuple(audit_loggers)
        self.event_prefix = event_prefix or None
        self._scope_cache: dict[str, bool] = {}

    @property
    def active(self) -> bool:
        """Whether anything but ``audit.action`` can make a record an audit record."""
        return bool(self.audit_loggers) or self.event_prefix is not None

    def default_action(self, scope_name: str | None, event_name: str | None) -> str | None:
        """For a record *without* ``audit.action``: ``None`` if it is not an audit record,
        else its default action (``""`` when there is none)."""
        prefix = self.event_prefix
        if prefix is not None and event_name and event_name.startswith(prefix):
            return event_name[len(prefix) :] or event_name
        if self.audit_loggers:
            name = scope_name or ""
            known = self._scope_cache.get(name)
            if known is None:
                known = any(name == n or name.startswith(n + ".") for n in self.audit_loggers)
                if len(self._scope_cache) >= _CACHE_LIMIT:  # scope names can come from the network
                    self._scope_cache.clear()
                self._scope_cache[name] = known
            if known:
                return ""
        return None
