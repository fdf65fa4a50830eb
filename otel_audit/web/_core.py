"""What every framework adapter shares: options, the per-request state, the one record.

The adapters (:mod:`.asgi`, :mod:`.wsgi`, :mod:`.flask`, :mod:`.django`) only
translate their framework's request and response into a :class:`RequestAudit`;
everything an auditor relies on (which requests, actor, action, resource,
result, client address, session, the moment of sealing, fail-closed) is
decided here, once, the same way for all of them. Standard library and the
OpenTelemetry API only.
"""

from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from otel_audit.context import close_root_context, open_root_context
from otel_audit.core import attributes as A
from otel_audit.errors import InvalidInput
from otel_audit.processor import collect_sealed

if TYPE_CHECKING:
    from otel_audit.configuration import AuditHandle

__all__ = [
    "ANONYMOUS",
    "RequestAudit",
    "RequestView",
    "RouteAudit",
    "WebAuditConfig",
    "audited",
    "not_audited",
]

_log = logging.getLogger("otel_audit")

#: The request being handled (set by the middleware while the handler runs).
_REQUEST: contextvars.ContextVar[RequestAudit | None] = contextvars.ContextVar("otel_audit_web_request", default=None)

#: The actor of a request nobody is signed in for.
ANONYMOUS = "anonymous"
#: Methods that change state (``requests="state-changing"``).
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The route of a request no route matched (404): never the raw path.
UNMATCHED = "(unmatched)"
#: Resource type of a route without path parameters: the resource is the route itself.
ROUTE_RESOURCE = "http.route"
#: Attribute names of what the middleware adds beyond the audit fields.
DURATION = "otel_audit.web.duration_us"
DISCONNECTED = "otel_audit.web.client_disconnected"
FORWARDED_IGNORED = "otel_audit.web.forwarded_ignored"
FOLLOWS = "otel_audit.web.follows"
RESPONSE_REPLACED = "otel_audit.web.response_replaced"
MARK = "__otel_audit_route__"


# --------------------------------------------------------------------------- route marks
@dataclass(frozen=True)
class RouteAudit:
    """Per-route options, set with :func:`audited` (or :func:`not_audited`).

    ``action``: the action to store instead of ``"METHOD /route/{template}"``.
    ``resource_type``/``resource_id``: the resource type, and the name of the
    route parameter that holds its id (or a callable taking the
    :class:`RequestView` and returning the id). ``fail_closed``: ``True`` or a
    timeout in seconds: the response is not sent as a success unless the
    record is committed to PostgreSQL (see :class:`WebAuditConfig`).
    """

    audit: bool = True
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | Callable[[RequestView], Any] | None = None
    fail_closed: bool | float = False


def audited(
    handler: Callable[..., Any] | None = None,
    /,
    *,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | Callable[[RequestView], Any] | None = None,
    fail_closed: bool | float = False,
) -> Any:
    """Mark a route handler as audited (``@audited`` or ``@audited(action="export", fail_closed=True)``).

    Put it *below* the framework's route decorator, so the framework registers
    the marked function. Marked routes are audited in every ``requests=`` mode.
    """
    mark = RouteAudit(True, action, resource_type, resource_id, fail_closed)

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        _set_mark(fn, mark)
        return fn

    return apply(handler) if handler is not None else apply


def current_request() -> RequestAudit | None:
    """The request the middleware is auditing in this context (``None`` outside one)."""
    return _REQUEST.get()


def mark_request(mark: RouteAudit) -> None:
    """Give the current request per-route options (what a FastAPI dependency does)."""
    state = _REQUEST.get()
    if state is None:
        _log.warning("otel-audit: a route asked to be audited but no audit middleware handles this request")
        return
    state.mark = mark


def not_audited(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Never write a request record for this handler (health checks); its explicit audit calls still count."""
    _set_mark(handler, RouteAudit(False))
    return handler


def _set_mark(fn: Any, mark: RouteAudit) -> None:
    target = getattr(fn, "__func__", fn)  # bound methods: mark the function
    try:
        setattr(target, MARK, mark)
    except (AttributeError, TypeError):
        raise TypeError(f"cannot mark {fn!r} as audited: it does not accept attributes") from None


def mark_of(handler: Any) -> RouteAudit | None:
    """The :class:`RouteAudit` of a handler, looking through ``functools.wraps`` wrappers and views."""
    seen = 0
    while handler is not None and seen < 8:
        mark = getattr(handler, MARK, None)
        if isinstance(mark, RouteAudit):
            return mark
        # Django class-based views (view_class), functools.wraps (__wrapped__), Flask MethodView (view_class).
        handler = getattr(handler, "__wrapped__", None) or getattr(handler, "view_class", None)
        seen += 1
    return None


# --------------------------------------------------------------------------- the request view
class RequestView:
    """What resolvers and the hook see of a request, whatever the framework.

    ``request`` is the framework's own object (the ASGI scope, the WSGI
    environ, Flask's ``request``, Django's ``HttpRequest``).
    """

    __slots__ = ("_state",)

    def __init__(self, state: RequestAudit) -> None:
        self._state = state

    @property
    def request(self) -> Any:
        return self._state.request

    @property
    def method(self) -> str:
        return self._state.method

    @property
    def route(self) -> str | None:
        return self._state.route

    @property
    def path(self) -> str:
        return self._state.path

    @property
    def path_params(self) -> Mapping[str, Any]:
        return self._state.params

    @property
    def status(self) -> int | None:
        return self._state.status

    @property
    def error(self) -> BaseException | None:
        return self._state.error

    @property
    def client_disconnected(self) -> bool:
        return self._state.disconnected

    def header(self, name: str) -> str | None:
        return self._state.header(name.lower())


# --------------------------------------------------------------------------- options
ActorResolver = Callable[[RequestView], Any]
ResourceResolver = Callable[[RequestView], "tuple[str, Any] | None"]
Hook = Callable[[RequestView, dict[str, Any]], "bool | None"]


class WebAuditConfig:
    """Options shared by every adapter (the middleware constructors take the same keywords).

    ``requests``: ``"all"`` (default), ``"state-changing"`` (POST, PUT, PATCH,
    DELETE) or ``"marked"`` (only :func:`audited` routes). Marked routes are
    audited in every mode; :func:`not_audited` routes and ``exclude`` never.
    ``exclude``: route templates or paths (``"/health"``), a trailing ``*``
    matching a prefix (``"/static/*"``).

    ``actor``: ``f(view) -> actor`` where actor is an id, an ``(id, type)``
    pair, a user object (``id``/``pk``/``get_id()``/``identity``/``username``;
    ``is_authenticated`` false means anonymous; ``is_superuser`` makes the type
    ``admin``) or ``None``; defaults per framework (``request.state.user``,
    ``flask.g.user`` / Flask-Login, Django's ``request.user``); ``anonymous``
    when nobody is signed in.

    ``resources``: ``{"patient_id": "patient_record"}`` (route parameter ->
    resource type) or ``f(view) -> (type, id) | None``. Without either, the
    resource is the route's last path parameter, typed by the literal segment
    before it (``/patients/{id}`` -> ``patients``), or the route itself
    (``http.route``, the template) when it has no parameter.

    ``trusted_proxies``: addresses or networks (``"10.0.0.0/8"``; ``"unix"``
    for a Unix-socket peer) whose ``X-Forwarded-For``/``Forwarded`` headers are
    believed. From any other peer these headers are ignored and noted
    (``otel_audit.web.forwarded_ignored``).

    ``session_cookie``/``session_header``: where the session id is, besides
    the framework's session. Session ids are credentials, so they are stored
    as ``sha256:<32 hex>`` unless ``hash_session_id=False``.

    ``hook``: ``f(view, attributes)`` called before sealing; it may change or
    add attributes, and returning ``False`` vetoes the record.

    ``fail_closed_timeout``: seconds a fail-closed route waits for the commit
    (``@audited(fail_closed=2.0)`` overrides); ``audit``: the handle
    ``otel_audit.configure()`` returned (found automatically: the one whose
    chain sealed the record); ``logger``: the logger the request records go through
    (``audit.http``, level INFO; deliberately outside the ``otel_audit``
    namespace, so that quieting otel-audit's own messages, even with
    ``propagate = False``, cannot silence request records).
    """

    def __init__(
        self,
        *,
        requests: Literal["all", "state-changing", "marked"] = "all",
        exclude: Iterable[str] = (),
        actor: ActorResolver | None = None,
        resources: Mapping[str, str] | ResourceResolver | None = None,
        trusted_proxies: Iterable[str] = (),
        session_cookie: str | None = None,
        session_header: str | None = None,
        hash_session_id: bool = True,
        hook: Hook | None = None,
        fail_closed_timeout: float = 5.0,
        audit: AuditHandle | None = None,
        logger: str | logging.Logger = "audit.http",
    ) -> None:
        if requests not in ("all", "state-changing", "marked"):
            raise InvalidInput(f"requests={requests!r}: use 'all', 'state-changing' or 'marked'")
        self.requests = requests
        self.exclude_exact = frozenset(e for e in exclude if not e.endswith("*"))
        self.exclude_prefixes = tuple(e[:-1] for e in exclude if e.endswith("*"))
        self.actor = actor
        self.resources = resources
        self.trusted = _Trusted(trusted_proxies)
        self.session_cookie = session_cookie
        self.session_header = session_header.lower() if session_header else None
        self.hash_session_id = hash_session_id
        self.hook = hook
        self.fail_closed_timeout = float(fail_closed_timeout)
        self.audit = audit
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
            if logger.level == logging.NOTSET:
                # Request records are INFO; an application whose root logger is at WARNING must not lose them.
                logger.setLevel(logging.INFO)
        self.logger = logger
        self._warned_unconfigured = False

    def selected(self, method: str, route: str | None, path: str, mark: RouteAudit | None) -> bool:
        """Whether a request gets a record (its route is known by now)."""
        if mark is not None and not mark.audit:
            return False
        if route in self.exclude_exact or path in self.exclude_exact:
            return False
        prefixes = self.exclude_prefixes
        if prefixes and (path.startswith(prefixes) or (route is not None and route.startswith(prefixes))):
            return False
        if mark is not None:
            return True
        if self.requests == "all":
            return True
        if self.requests == "state-changing":
            return method in STATE_CHANGING
        return False

    def handle(self, chain_id: str) -> AuditHandle | None:
        """The handle whose pipeline sealed into ``chain_id`` (the given one, else among the active ones)."""
        if self.audit is not None:
            return self.audit
        from otel_audit.configuration import active_handles

        for handle in active_handles():
            if handle.chain_id == chain_id:
                return handle
        return None

    def check_configured(self) -> None:
        if self._warned_unconfigured:
            return
        from otel_audit.configuration import active_handles

        if self.audit is None and not active_handles():
            self._warned_unconfigured = True
            _log.warning(
                "otel-audit: a request was audited but otel_audit.configure() has not run in this process, so its "
                "record reaches no audit processor. Call otel_audit.configure() at start-up (in every worker)."
            )


# --------------------------------------------------------------------------- client address
class _Trusted:
    def __init__(self, entries: Iterable[str]) -> None:
        self.unix = False
        nets = []
        for entry in entries:
            if entry == "unix":
                self.unix = True
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise InvalidInput(
                    f"trusted_proxies: {entry!r} is not an IP address or network (use '10.0.0.0/8', '::1', 'unix')"
                ) from None
        self.nets = tuple(nets)
        self.any = bool(nets) or self.unix

    def __contains__(self, address: str | None) -> bool:
        if address is None:
            return self.unix
        ip = _ip(address)
        if ip is None:
            return False
        return any(ip in net for net in self.nets if net.version == ip.version)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _strip_port(token: str) -> str:
    token = token.strip().strip('"')
    if token.startswith("["):  # [2001:db8::1]:4711
        return token[1 : token.find("]")] if "]" in token else token[1:]
    if token.count(":") == 1:  # 192.0.2.1:8080
        return token.split(":", 1)[0]
    return token


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, in order."""
    hops = []
    for element in header.split(","):
        for pair in element.split(";"):
            key, _, value = pair.strip().partition("=")
            if key.lower() == "for":
                hops.append(_strip_port(value))
    return hops


def client_address(
    peer: str | None, xff: str | None, forwarded: str | None, trusted: _Trusted
) -> tuple[str | None, str | None]:
    """``(client address, ignored header text)`` for a request from ``peer``.

    Proxy headers count only when the peer is trusted; then the chain of hops
    is walked from the right and the first address that is not a trusted
    proxy is the client (a client cannot forge the hops our proxies appended).
    """
    if not xff and not forwarded:
        return peer, None
    if not trusted.any or peer not in trusted:
        text = f"forwarded: {forwarded}" if forwarded else f"x-forwarded-for: {xff}"
        return peer, text[:512]
    hops = _forwarded_for(forwarded) if forwarded else [_strip_port(h) for h in (xff or "").split(",")]
    client = peer
    for hop in reversed(hops):
        if not hop or _ip(hop) is None:
            break  # "unknown", an obfuscated node: the nearest trusted hop is all we know
        client = hop
        if hop not in trusted:
            break
    return client, None


# --------------------------------------------------------------------------- actor, resource
def actor_of(value: Any) -> tuple[str, str] | None:
    """``(id, type)`` from what an actor resolver returned, or ``None`` for nobody."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        return (value, "user") if value else None
    if isinstance(value, tuple) and len(value) == 2:
        return (str(value[0]), str(value[1])) if value[0] is not None else None
    if isinstance(value, Mapping):
        key = value.get("id") or value.get("sub") or value.get("username")
        kind = value.get("type") or "user"
        return (str(key), str(kind)) if key is not None else None
    try:
        if getattr(value, "is_authenticated", True) is False or getattr(value, "is_anonymous", False) is True:
            return None
    except Exception:
        return None
    ident: Any = None
    for name in ("id", "pk"):
        ident = getattr(value, name, None)
        if ident is not None and not callable(ident):
            break
        ident = None
    if ident is None:
        get_id = getattr(value, "get_id", None)
        if callable(get_id):
            ident = get_id()
    if ident is None:
        for name in ("user_id", "identity", "username"):
            try:
                ident = getattr(value, name, None)
            except Exception:  # Starlette's BaseUser.identity raises NotImplementedError
                ident = None
            if ident is not None and not callable(ident):
                break
            ident = None
    if ident is None:
        return None
    kind = getattr(value, "audit_actor_type", None)
    if kind not in A.ACTOR_TYPES:
        kind = "admin" if getattr(value, "is_superuser", False) is True else "user"
    return str(ident), kind


_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def default_resource(route: str | None, params: Mapping[str, Any]) -> tuple[str, Any]:
    if route is None:
        return ROUTE_RESOURCE, UNMATCHED
    names = _PARAM.findall(route)
    for name in reversed(names):
        if name in params:
            before = route[: route.find("{" + name)].rstrip("/")
            segment = before.rsplit("/", 1)[-1]
            if not segment or "{" in segment:
                segment = name
            return segment, params[name]
    return ROUTE_RESOURCE, route


def session_digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def error_type(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def result_of(status: int | None, error: BaseException | None, disconnected: bool, complete: bool) -> str:
    if status in (401, 403):
        return "denied"
    if error is not None:
        return "failure"
    if disconnected and not complete:
        return "failure"
    if status is None or status >= 400:
        return "failure"
    return "success"


# --------------------------------------------------------------------------- the request
class RequestAudit:
    """One request's audit state, from arrival to its (one) sealed record.

    Adapters fill in ``route``, ``params``, ``mark``, ``status``, ``error``,
    ``disconnected`` as they learn them, and call :meth:`finish` (exactly once
    is enforced) at the moment the response is about to complete.
    """

    __slots__ = (
        "_context_token",
        "_headers",
        "_lock",
        "_otel_context",
        "_request_token",
        "actor_resolver",
        "complete",
        "config",
        "disconnected",
        "error",
        "frozen",
        "last_actor",
        "mark",
        "method",
        "params",
        "path",
        "peer",
        "record_id",
        "request",
        "route",
        "sealed",
        "session_resolver",
        "start",
        "status",
    )

    def __init__(
        self,
        config: WebAuditConfig,
        request: Any,
        *,
        method: str,
        path: str,
        peer: str | None,
        headers: Callable[[str], str | None],
        actor: Callable[[], Any] | None = None,
        session: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.request = request
        self.method = method.upper()
        self.path = path
        self.peer = peer
        self._headers = headers
        self.session_resolver = session
        self.actor_resolver = actor
        self.start = time.perf_counter_ns()
        self.route: str | None = None
        self.params: Mapping[str, Any] = {}
        self.mark: RouteAudit | None = None
        self.status: int | None = None
        self.error: BaseException | None = None
        self.disconnected = False
        self.complete = False
        self.sealed = False
        self.record_id: str | None = None
        self.last_actor: tuple[str, str] | None = None
        self.frozen: tuple[tuple[str, str] | None, str | None] | None = None
        self._lock = threading.Lock()
        self._context_token: Any = None
        self._request_token: Any = None
        self._otel_context: Any = None

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the audit context of the request (explicit audit calls in the handler inherit it)."""
        client, _ = client_address(
            self.peer, self.header("x-forwarded-for"), self.header("forwarded"), self.config.trusted
        )
        fixed: dict[str, Any] = {}
        if client:
            fixed[A.CLIENT_ADDRESS] = client
        agent = self.header("user-agent")
        if agent:
            fixed[A.USER_AGENT] = agent
        # A request is a root: nothing from an earlier request on this thread can leak into it.
        self._context_token = open_root_context(fixed, self._context_values)
        self._request_token = _REQUEST.set(self)
        span_context = trace.get_current_span().get_span_context()
        if not span_context.is_valid and self.header("traceparent"):
            # No server span (no instrumentation, or it wraps this middleware from inside):
            # correlate with the caller's trace instead.
            self._otel_context = propagate.extract(
                {"traceparent": self.header("traceparent") or "", "tracestate": self.header("tracestate") or ""}
            )

    def close(self) -> None:
        """Close the audit context (in the context that opened it)."""
        token, self._context_token = self._context_token, None
        request_token, self._request_token = self._request_token, None
        if token is not None:
            try:
                _REQUEST.reset(request_token)
                close_root_context(token)
            except ValueError:  # closed from another context (a server thread): nothing to reset there
                pass

    def capture_trace(self) -> None:
        """Remember the current server span (adapters call it where instrumentation has made it current)."""
        current = otel_context.get_current()
        if trace.get_current_span(current).get_span_context().is_valid:
            self._otel_context = current

    def header(self, name: str) -> str | None:
        try:
            return self._headers(name)
        except Exception:
            return None

    # ------------------------------------------------------------ what the record says
    def _context_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        actor = self.resolve_actor() or self.last_actor or (ANONYMOUS, "user")
        values[A.AUDIT_ACTOR_ID], values[A.AUDIT_ACTOR_TYPE] = actor
        session = self.session_id()
        if session:
            values[A.SESSION_ID] = session
        return values

    def freeze(self) -> None:
        """Resolve actor and session now and keep them (the framework's request ends before the record)."""
        actor = self.resolve_actor()
        session = self.session_id()
        self.frozen = (actor, session)

    def resolve_actor(self) -> tuple[str, str] | None:
        if self.frozen is not None:
            return self.frozen[0]
        resolver = self.config.actor
        try:
            if resolver is not None:
                raw = resolver(RequestView(self))
            elif self.actor_resolver is not None:
                raw = self.actor_resolver()
            else:
                raw = None
            actor = actor_of(raw)
        except Exception:
            _log.exception("otel-audit: the actor resolver raised; the request is recorded as anonymous")
            actor = None
        if actor is not None:
            self.last_actor = actor
        return actor

    def session_id(self) -> str | None:
        if self.frozen is not None:
            return self.frozen[1]
        value: Any = None
        try:
            if self.session_resolver is not None:
                value = self.session_resolver()
        except Exception:
            value = None
        config = self.config
        if not value and config.session_cookie:
            value = _cookie(self.header("cookie"), config.session_cookie)
        if not value and config.session_header:
            value = self.header(config.session_header)
        if not value:
            return None
        value = str(value)
        return session_digest(value) if config.hash_session_id else value

    def selected(self) -> bool:
        return self.config.selected(self.method, self.route, self.path, self.mark)

    def fail_closed_timeout(self) -> float | None:
        mark = self.mark
        if mark is None or mark.fail_closed is False:
            return None
        if mark.fail_closed is True:
            return self.config.fail_closed_timeout
        return float(mark.fail_closed)

    def attributes(self) -> dict[str, Any] | None:
        """The record's attributes, or ``None`` when the hook vetoes it."""
        config = self.config
        mark = self.mark
        route = self.route
        actor = self.resolve_actor() or self.last_actor or (ANONYMOUS, "user")
        if mark is not None and mark.action:
            action = mark.action
        else:
            action = f"{self.method} {route if route is not None else UNMATCHED}"
        resource_type, resource_id = self._resource()
        status = self.status
        complete = self.complete
        result = result_of(status, self.error, self.disconnected, complete)
        client, ignored = client_address(
            self.peer, self.header("x-forwarded-for"), self.header("forwarded"), config.trusted
        )
        attrs: dict[str, Any] = {
            A.AUDIT_ACTION: action,
            A.AUDIT_ACTOR_ID: actor[0],
            A.AUDIT_ACTOR_TYPE: actor[1],
            A.AUDIT_RESOURCE_TYPE: resource_type,
            A.AUDIT_RESOURCE_ID: resource_id,
            A.AUDIT_RESULT: result,
            "http.request.method": self.method,
            "url.path": self.path,
            DURATION: (time.perf_counter_ns() - self.start) // 1000,
        }
        if route is not None:
            attrs["http.route"] = route
        if status is not None:
            attrs["http.response.status_code"] = status
        if client:
            attrs[A.CLIENT_ADDRESS] = client
        if self.peer:
            attrs["network.peer.address"] = self.peer
        if ignored:
            attrs[FORWARDED_IGNORED] = ignored
        agent = self.header("user-agent")
        if agent:
            attrs[A.USER_AGENT] = agent
        session = self.session_id()
        if session:
            attrs[A.SESSION_ID] = session
        if self.error is not None:
            attrs["error.type"] = error_type(self.error)
        if self.disconnected and not complete:
            attrs[DISCONNECTED] = True
        hook = config.hook
        if hook is not None:
            try:
                if hook(RequestView(self), attrs) is False:
                    return None
            except Exception:
                _log.exception("otel-audit: the request audit hook raised; the record is written without its changes")
        return attrs

    def _resource(self) -> tuple[str, Any]:
        mark = self.mark
        params = self.params
        if mark is not None and mark.resource_type:
            ident: Any = None
            if callable(mark.resource_id):
                try:
                    ident = mark.resource_id(RequestView(self))
                except Exception:
                    _log.exception("otel-audit: the route's resource_id resolver raised")
            elif mark.resource_id:
                ident = params.get(mark.resource_id)
            if ident is None:
                ident = default_resource(self.route, params)[1] if params else self.route or UNMATCHED
            return mark.resource_type, _text(ident)
        resources = self.config.resources
        if callable(resources):
            try:
                found = resources(RequestView(self))
            except Exception:
                _log.exception("otel-audit: the resources resolver raised; using the route's default resource")
                found = None
            if found:
                return str(found[0]), _text(found[1])
        elif resources:
            for name in reversed(list(params)):
                kind = resources.get(name)
                if kind is not None:
                    return kind, _text(params[name])
        kind, ident = default_resource(self.route, params)
        return kind, _text(ident)

    # ------------------------------------------------------------ sealing
    def finish(self) -> None:
        """Seal the request's record now, if it is selected and not sealed yet. Never raises for a
        vetoed or unselected request; raises what the audit processor raises (a full spool that
        stays full with ``when_full=block``, an invalid record in strict mode)."""
        with self._lock:
            if self.sealed:
                return
            self.sealed = True
        if not self.selected():
            return
        attrs = self.attributes()
        if attrs is None:
            return
        self._emit(attrs)

    def finish_fail_closed(self, timeout: float) -> bool:
        """Seal and wait for the commit (blocking). ``False``: not committed; the caller must not send
        the response as a success. A follow-up record then says what was sent instead."""
        with self._lock:
            if self.sealed:
                return True
            self.sealed = True
        if not self.selected():
            return True
        attrs = self.attributes()
        if attrs is None:
            return True
        with collect_sealed() as sealed:  # what otel_audit's fail_closed() collects, per context
            self._emit(attrs)
        if not sealed:
            _log.error(
                "otel-audit: fail-closed route %s: its audit record reached no audit processor (is "
                "otel_audit.configure() called in this process, and does the %r logger reach the OpenTelemetry "
                "LoggingHandler?); answering 503",
                self.route,
                self.config.logger.name,
            )
            return False
        record = sealed[-1]
        self.record_id = record.record_id
        handle = self.config.handle(record.chain_id)
        if handle is None:
            _log.error(
                "otel-audit: fail-closed route %s: no otel_audit.configure() handle owns chain %s; answering 503",
                self.route,
                record.chain_id,
            )
            return False
        if handle.pipeline.wait_committed(record, timeout):
            return True
        _log.error(
            "otel-audit: fail-closed route %s: audit record %s was not committed to PostgreSQL within %gs (last "
            "error: %s); answering 503. The record is safe in the spool and will be written later.",
            self.route,
            record.record_id,
            timeout,
            handle.pipeline.stats.last_error or "none",
        )
        return False

    def follow_up(self, reason: str, *, status: int | None = None) -> None:
        """A second record for a request whose record was sealed early (fail-closed) and whose
        response then did not go as that record said: failed, cut short, or replaced."""
        attrs = self.attributes()
        if attrs is None:
            return
        attrs[A.AUDIT_RESULT] = "failure"
        attrs[A.AUDIT_REASON] = reason
        if status is not None:
            attrs["http.response.status_code"] = status
            attrs[RESPONSE_REPLACED] = True
        if self.record_id is not None:
            attrs[FOLLOWS] = self.record_id
        try:
            self._emit(attrs)
        except Exception:
            _log.exception("otel-audit: the follow-up record of a fail-closed request could not be sealed")

    def _emit(self, attrs: dict[str, Any]) -> None:
        self.config.check_configured()
        message = f"{attrs[A.AUDIT_ACTION]} -> {attrs.get('http.response.status_code', 'no response')}"
        ctx = self._otel_context
        if ctx is not None and not trace.get_current_span().get_span_context().is_valid:
            token = otel_context.attach(ctx)
            try:
                self.config.logger.info(message, extra=attrs)
            finally:
                otel_context.detach(token)
        else:
            self.config.logger.info(message, extra=attrs)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"') or None
    return None


# --------------------------------------------------------------------------- route templates
_FLASK_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")


def flask_template(rule: str) -> str:
    """``/patients/<int:id>`` -> ``/patients/{id}`` (one spelling for every framework)."""
    return _FLASK_PARAM.sub(r"{\1}", rule)


def django_template(route: str) -> str:
    """``patients/<int:pk>/`` or ``^patients/(?P<pk>[0-9]+)/$`` -> ``/patients/{pk}/``."""
    if "(?P<" in route or route.startswith("^") or route.endswith("$"):
        text = _REGEX_GROUP.sub(r"{\1}", route).replace("^", "").replace("$", "").replace("\\", "")
    else:
        text = _FLASK_PARAM.sub(r"{\1}", route)
    return text if text.startswith("/") else "/" + text
