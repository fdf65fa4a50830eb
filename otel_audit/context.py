"""The audit context: who is acting, from where, for every audit call made inside it.

A ``contextvars``-based scope that supplies default attributes to audit
records, so that code deep inside a request handler, a worker job or a CLI
command does not have to repeat the actor, session and client address in every
``extra=``::

    from otel_audit import audit_context

    with audit_context(actor_id="batch-7", actor_type="service", session_id=job.id):
        log.info("nightly export", extra={"audit.action": "export",
                                          "audit.resource.type": "report",
                                          "audit.resource.id": "r-1",
                                          "audit.result": "success"})

Rules (the processor applies them to *audit* records only; other records never
look at the context):

* an attribute given in ``extra=`` always wins; the context fills in what is
  missing; baggage (``session.id``, ``user.id``) comes after the context;
* contexts nest: an inner one inherits the outer one's attributes and overrides
  those it names;
* threads and asyncio tasks see the context the way ``contextvars`` propagates:
  tasks (and ``asyncio.to_thread``, ``contextvars.copy_context().run``) get a
  copy of the context current when they were created; a plain
  ``threading.Thread`` starts with an empty context unless it is run in a copy;
* a context can also carry a *resolver*: a function called at the moment an
  audit record is logged, whose attributes come between the context's own and
  the explicit ones. The web middleware uses it so that a user who signs in
  halfway through a request is the actor of the records logged after that.

This module knows neither OpenTelemetry nor PostgreSQL.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from otel_audit.core import attributes as A
from otel_audit.errors import InvalidInput

__all__ = [
    "AuditContext",
    "audit_context",
    "close_root_context",
    "context_attributes",
    "current_audit_context",
    "open_root_context",
    "update_audit_context",
]

_log = logging.getLogger("otel_audit")

#: Attributes a context may not supply: what marks a record as an audit record,
#: and what only the seal writes.
_FORBIDDEN = frozenset({A.AUDIT_ACTION, *A.SEAL_ATTRIBUTES, A.RECORD_CANONICAL, A.CHAIN_GENESIS})

Resolver = Callable[[], Mapping[str, Any] | None]


class AuditContext:
    """One level of audit context: its own attributes, an optional resolver, and the level around it.

    Immutable once made; :func:`update_audit_context` makes a new one. What a
    record inherits is merged from the outermost level inwards, each level's
    own attributes first, then its resolver's: an inner level always wins.
    """

    __slots__ = ("_own", "_parent", "_resolver")

    def __init__(
        self, attributes: Mapping[str, Any], resolver: Resolver | None = None, parent: AuditContext | None = None
    ) -> None:
        self._own = dict(attributes)
        self._resolver = resolver
        self._parent = parent

    def attributes(self) -> dict[str, Any]:
        """What an audit record logged now inherits from this level and those around it."""
        parent = self._parent
        if parent is None and self._resolver is None:
            return self._own
        merged = parent.attributes().copy() if parent is not None else {}
        merged.update(self._own)
        resolver = self._resolver
        if resolver is not None:
            try:
                resolved = resolver()
            except Exception:
                _log.exception(
                    "otel-audit: an audit context's resolver raised; the record keeps the context's fixed "
                    "attributes. Fix the resolver (it runs inside every audit call of the context)."
                )
                resolved = None
            if resolved:
                for key, value in resolved.items():
                    if value is not None and key not in _FORBIDDEN and isinstance(key, str):
                        merged[key] = _attribute_value(value)
        return merged


_CURRENT: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("otel_audit_context", default=None)

#: What the processor calls for each audit record: ``None`` (no context) costs one lookup.
current_audit_context = _CURRENT.get


def open_root_context(
    attributes: Mapping[str, Any], resolver: Resolver | None = None
) -> contextvars.Token[AuditContext | None]:
    """Open an audit context with no parent, for an owner whose scope is not a ``with`` block.

    The web middleware opens one per request (a request is a root: nothing from
    an earlier request on the thread leaks into it) and closes it with
    :func:`close_root_context` when the response is done. ``attributes`` are
    taken as given (the middleware has already made them safe).
    """
    return _CURRENT.set(AuditContext(attributes, resolver))


def close_root_context(token: contextvars.Token[AuditContext | None]) -> None:
    """Close what :func:`open_root_context` opened; raises ``ValueError`` outside the context that opened it."""
    _CURRENT.reset(token)


def context_attributes() -> dict[str, Any]:
    """The attributes an audit record logged here and now would inherit (empty outside a context)."""
    ctx = _CURRENT.get()
    return dict(ctx.attributes()) if ctx is not None else {}


_SCALARS = (str, bool, int, float)


def _attribute_value(value: Any) -> Any:
    """What OpenTelemetry can carry: inherited values are written on the exported record too."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
        return list(value)
    return str(value)


def _named(
    attributes: Mapping[str, Any] | None,
    actor_id: str | None,
    actor_type: str | None,
    user_id: str | None,
    session_id: str | None,
    client_address: str | None,
    user_agent: str | None,
) -> dict[str, Any]:
    values: dict[str, Any] = dict(attributes) if attributes else {}
    for key, value in (
        (A.AUDIT_ACTOR_ID, actor_id),
        (A.AUDIT_ACTOR_TYPE, actor_type),
        (A.USER_ID, user_id),
        (A.SESSION_ID, session_id),
        (A.CLIENT_ADDRESS, client_address),
        (A.USER_AGENT, user_agent),
    ):
        if value is not None:
            values[key] = value
    values = {key: _attribute_value(value) for key, value in values.items()}
    bad = _FORBIDDEN.intersection(values)
    if bad:
        raise InvalidInput(
            f"an audit context cannot supply {sorted(bad)}: audit.action marks a single record as an audit "
            "record and the audit.record/sequence/integrity attributes are written by the seal"
        )
    for key in values:
        if not isinstance(key, str):
            raise TypeError(f"audit context attribute names must be text, not {type(key).__name__}: {key!r}")
    return values


@contextmanager
def audit_context(
    attributes: Mapping[str, Any] | None = None,
    *,
    actor_id: str | None = None,
    actor_type: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    client_address: str | None = None,
    user_agent: str | None = None,
    resolver: Resolver | None = None,
) -> Iterator[AuditContext]:
    """Open an audit context for the ``with`` block (see the module docstring).

    The keyword arguments are shorthands for ``audit.actor.id``,
    ``audit.actor.type``, ``user.id``, ``session.id``, ``client.address`` and
    ``user_agent.original``; ``attributes`` may hold any other attribute
    (``{"tenant.id": "t-9"}``). Values are OpenTelemetry attribute values
    (text, numbers, booleans, lists of them); anything else becomes its ``str()``. ``resolver`` is called at each audit call inside
    the block and may return more attributes (``None`` values are ignored); an
    exception in it is logged and the fixed attributes are used.
    """
    values = _named(attributes, actor_id, actor_type, user_id, session_id, client_address, user_agent)
    ctx = AuditContext(values, resolver, _CURRENT.get())
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def update_audit_context(
    attributes: Mapping[str, Any] | None = None,
    *,
    actor_id: str | None = None,
    actor_type: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    client_address: str | None = None,
    user_agent: str | None = None,
) -> None:
    """Change the current context from here on (for example once a CLI user is known).

    Like any ``ContextVar.set``, it affects the current context and what is
    started from it later; tasks and threads already running keep what they
    copied. Outside any context it raises :class:`LookupError`: open one with
    :func:`audit_context` first, so that the change has a defined end.
    """
    ctx = _CURRENT.get()
    if ctx is None:
        raise LookupError("update_audit_context() outside an audit context: wrap the work in `with audit_context():`")
    values = _named(attributes, actor_id, actor_type, user_id, session_id, client_address, user_agent)
    _CURRENT.set(AuditContext({**ctx._own, **values}, ctx._resolver, ctx._parent))
