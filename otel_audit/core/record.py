"""The audit record: its fields, how it is built from attributes, and how it is hashed.

A record is one JSON object (the *document*). Its top-level keys are exactly the
columns PostgreSQL stores it under (:data:`RECORD_FIELDS`), so the queryable
columns are a plain projection of the hashed document and the verifier can
check every one of them. The document is hashed as::

    hash = lowercase_hex(SHA-256(RECORD_DOMAIN || canonical_json(document)))

where ``RECORD_DOMAIN`` separates record hashes from every other hash otel-audit
computes (chain genesis, checkpoints), so bytes valid in one role can never be
replayed in another.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import time
from collections.abc import Iterable, Mapping
from typing import Any

from otel_audit.core import attributes as A
from otel_audit.core.canonical import MAX_SAFE_INTEGER, CanonicalEncodingError, canonical_json
from otel_audit.core.normalize import Normalizer, clean_text, sanitize

__all__ = [
    "CHECKPOINT_DOMAIN",
    "GENESIS_DOMAIN",
    "HASH_ALGORITHM",
    "RECORD_DOMAIN",
    "RECORD_FIELDS",
    "RECORD_FORMAT",
    "RESOURCE_PREFIX",
    "RecordBuilder",
    "encode_draft",
    "format_timestamp",
    "record_hash",
    "record_hashes",
    "record_seq",
    "resource_attributes",
    "shrink_to_fit",
]

RECORD_FORMAT = 1
HASH_ALGORITHM = "sha256"
RECORD_DOMAIN = b"otel-audit.record.v1\x00"
GENESIS_DOMAIN = b"otel-audit.chain.v1\x00"
CHECKPOINT_DOMAIN = b"otel-audit.checkpoint.v1\x00"

#: Every key a record document may have, in the order columns are listed. ``v``
#: is stored in the column ``format_version``; all others under their own name.
#: A field whose value is null is *omitted* from the document (and NULL in its
#: column); ``v``, ``id``, ``chain_id``, ``seq``, ``prev_hash``, ``timestamp``,
#: ``actor_type``, ``attributes`` and ``problems`` are always present.
RECORD_FIELDS: tuple[str, ...] = (
    "v",
    "id",
    "chain_id",
    "seq",
    "prev_hash",
    "timestamp",
    "actor_id",
    "actor_type",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "ip_address",
    "user_agent",
    "session_id",
    "user_id",
    "reason",
    "changed_fields",
    "old_values",
    "trace_id",
    "span_id",
    "trace_flags",
    "service_name",
    "service_instance_id",
    "host_name",
    "scope",
    "severity_text",
    "severity_number",
    "event_name",
    "message",
    "attributes",
    "problems",
)

_SAFE = MAX_SAFE_INTEGER
_INPUT_FIELDS = A.INPUT_FIELDS
_TEXT_OR_NONE = frozenset({str, type(None)})
_INT_OR_NONE = frozenset({int, type(None)})
_CONTEXT_TEXT = (
    ("user_id", A.USER_ID),
    ("session_id", A.SESSION_ID),
    ("service_name", A.SERVICE_NAME),
    ("service_instance_id", A.SERVICE_INSTANCE_ID),
    ("host_name", A.HOST_NAME),
    ("scope", "scope"),
    ("severity_text", "severity_text"),
    ("event_name", "event_name"),
)
_OPTIONAL_FIELDS = frozenset({"ip_address", "user_agent", "reason", "changed_fields", "old_values", "input_problems"})
_STRUCTURED_FIELDS = frozenset({"changed_fields", "old_values", "ip_address", "input_problems"})
_ACTOR_TYPES = A.ACTOR_TYPES
_RESULTS = A.RESULTS
_INDEXED = (
    ("action", A.AUDIT_ACTION),
    ("actor_id", A.AUDIT_ACTOR_ID),
    ("resource_type", A.AUDIT_RESOURCE_TYPE),
    ("resource_id", A.AUDIT_RESOURCE_ID),
)

#: Resource attributes other than service.name, service.instance.id and host.name (which have
#: fields of their own) are kept in ``attributes`` under this prefix: ``resource.service.version``.
RESOURCE_PREFIX = "resource."
_LIFTED_RESOURCE_KEYS = frozenset((A.SERVICE_NAME, A.SERVICE_INSTANCE_ID, A.HOST_NAME))


def resource_attributes(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource attributes a record keeps in ``attributes``: all but the three with fields of
    their own, each under :data:`RESOURCE_PREFIX`. Computed once per resource by the caller."""
    return {RESOURCE_PREFIX + str(key): value for key, value in resource.items() if key not in _LIFTED_RESOURCE_KEYS}


#: Longest text kept in an indexed column; PostgreSQL's B-tree entries cannot exceed ~2.7 kB.
MAX_INDEXED_CHARS = 1024


def record_seq(canonical: bytes) -> int:
    """The sequence number of a record, read from its canonical bytes without parsing them.

    Sound because of the canonical layout: keys are sorted, every key after
    ``seq`` holds a scalar or a list of texts, and inside JSON text a quote is
    always escaped; so the last ``"seq":`` is the top-level key.
    """
    start = canonical.rfind(b'"seq":') + 6
    if start < 6:
        raise ValueError("not an otel-audit record: no seq")
    end = start
    while canonical[end] in b"0123456789":
        end += 1
    return int(canonical[start:end])


def record_hash(canonical: bytes) -> str:
    """The hex SHA-256 of a record's canonical bytes, with domain separation."""
    return hashlib.sha256(RECORD_DOMAIN + canonical).hexdigest()


def record_hashes(canonicals: Iterable[bytes]) -> list[str]:
    """:func:`record_hash` of each record, for many at once: the hash state of the domain prefix is
    copied for each record instead of concatenating the prefix to its bytes."""
    prefix = hashlib.sha256(RECORD_DOMAIN)
    hashes: list[str] = []
    append = hashes.append
    for canonical in canonicals:
        hasher = prefix.copy()
        hasher.update(canonical)
        append(hasher.hexdigest())
    return hashes


@functools.lru_cache(maxsize=4096)
def _normalize_ip(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if getattr(address, "scope_id", None):
        return None  # PostgreSQL's inet has no zone index
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:  # ::ffff:a.b.c.d (a dual-stack socket's view of an IPv4 client) is a.b.c.d
        return str(mapped)
    return str(address)


_ts_cache: tuple[int, str] = (-1, "")


def format_timestamp(unix_nano: int) -> str:
    """RFC 3339, UTC, microsecond precision: ``2026-11-28T08:50:47.123456Z``.

    Microseconds because that is what PostgreSQL's ``timestamptz`` keeps; the
    hashed text and the stored column then hold the same instant exactly.
    """
    global _ts_cache
    # The formatted second is cached as one tuple, replaced in one assignment:
    # two attributes updated separately could pair one thread's second with
    # another thread's text.
    seconds, rest = divmod(unix_nano, 1_000_000_000)
    cached_second, prefix = _ts_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _ts_cache = (seconds, prefix)
    return f"{prefix}.{rest // 1000:06d}Z"


class Draft:
    """A record document before sealing, plus what the normalizer learned."""

    __slots__ = ("ascii_keys", "doc", "has_float")

    def __init__(self, doc: dict[str, Any], has_float: bool, ascii_keys: bool) -> None:
        self.doc = doc
        self.has_float = has_float
        self.ascii_keys = ascii_keys

    @property
    def problems(self) -> list[str]:
        problems: list[str] = self.doc["problems"]
        return problems


class RecordBuilder:
    """Builds record documents from attributes and context (no OTel, no I/O).

    The processor and the ingest service both use it, so a record looks the
    same whichever way it arrived. Stateless, hence thread-safe.
    """

    def build(
        self,
        attributes: Mapping[str, Any],
        *,
        time_unix_nano: int,
        body: Any = None,
        severity_text: str | None = None,
        severity_number: int | None = None,
        event_name: str | None = None,
        scope: str | None = None,
        trace_id: int = 0,
        span_id: int = 0,
        trace_flags: int | None = None,
        service_name: str | None = None,
        service_instance_id: str | None = None,
        host_name: str | None = None,
        fallback_session_id: Any = None,
        fallback_user_id: Any = None,
        default_action: str | None = None,
        problems: Iterable[str] = (),
        resource: Mapping[str, Any] | None = None,
    ) -> Draft:
        """Lift the audit fields out of ``attributes``, validate, normalize the rest.

        Written for the hot path (it runs inside the application's logging
        call): when every value is text or a small integer, nothing but one type
        test per value happens; the :class:`Normalizer` is only created for
        values that need it.
        """
        problem_list: list[str] = list(problems) if problems else []
        norm: Normalizer | None = None
        ascii_keys = True
        inputs: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        input_fields = _INPUT_FIELDS
        for key, value in attributes.items():
            field = input_fields.get(key)
            kind = value.__class__
            if field is not None:
                if kind is not str and field not in _STRUCTURED_FIELDS:
                    norm = norm or Normalizer(problem_list)
                    value = norm.text(value, key)
                inputs[field] = value
                continue
            if key.__class__ is not str:
                problem_list.append(f"attribute key {key!r} of type {type(key).__name__} stored as text")
                key = str(key)
            if not key.isascii():
                ascii_keys = False
            if kind is str or kind is int and -_SAFE <= value <= _SAFE:
                rest[key] = value
            else:
                norm = norm or Normalizer(problem_list)
                rest[key] = norm.value(value, key)

        if resource:  # from resource_attributes(): prefixed, never audit input fields
            for key, value in resource.items():
                if key in rest:
                    problem_list.append(
                        f"resource attribute {key[len(RESOURCE_PREFIX) :]!r} not kept: the record has an attribute "
                        f"{key!r} of its own"
                    )
                    continue
                if not key.isascii():
                    ascii_keys = False
                kind = value.__class__
                if kind is str or kind is int and -_SAFE <= value <= _SAFE:
                    rest[key] = value
                else:
                    norm = norm or Normalizer(problem_list)
                    rest[key] = norm.value(value, key)

        # Null fields are omitted from the document (see RECORD_FIELDS).
        doc: dict[str, Any] = {
            "v": RECORD_FORMAT,
            "timestamp": format_timestamp(time_unix_nano),
            "actor_type": "user",
            "attributes": rest,
            "problems": problem_list,
        }

        get = inputs.get
        action = get("action") or default_action
        if action:
            doc["action"] = action
        else:
            problem_list.append("missing audit.action")
        user_id = get("user_id", fallback_user_id)
        if user_id is not None:
            doc["user_id"] = user_id
        actor_id = get("actor_id") or user_id
        if actor_id:
            doc["actor_id"] = actor_id
        else:
            problem_list.append("missing audit.actor.id (and no user.id attribute or baggage)")
        actor_type = get("actor_type")
        if actor_type:
            doc["actor_type"] = actor_type
            if actor_type not in _ACTOR_TYPES:
                problem_list.append(f"audit.actor.type {actor_type!r} is not one of user, service, admin, system")
        resource_type = get("resource_type")
        if resource_type:
            doc["resource_type"] = resource_type
        else:
            problem_list.append("missing audit.resource.type")
        resource_id = get("resource_id")
        if resource_id:
            doc["resource_id"] = resource_id
        else:
            problem_list.append("missing audit.resource.id")
        result = get("result")
        if result:
            doc["result"] = result
            if result not in _RESULTS:
                problem_list.append(f"audit.result {result!r} is not one of success, failure, denied")
        else:
            problem_list.append("missing audit.result")
        session_id = get("session_id", fallback_session_id)
        if session_id is not None:
            doc["session_id"] = session_id

        if body.__class__ is str:
            doc["message"] = body
        elif body is not None:
            norm = norm or Normalizer(problem_list)
            rest["otel.body"] = norm.value(body, "body")
        if trace_id:
            doc["trace_id"] = f"{trace_id:032x}"
            if trace_flags is not None:
                doc["trace_flags"] = int(trace_flags)
        if span_id:
            doc["span_id"] = f"{span_id:016x}"
        if service_name is not None:
            doc["service_name"] = service_name
        if service_instance_id is not None:
            doc["service_instance_id"] = service_instance_id
        if host_name is not None:
            doc["host_name"] = host_name
        if scope is not None:
            doc["scope"] = scope
        if severity_text is not None:
            doc["severity_text"] = severity_text
        if severity_number is not None:
            doc["severity_number"] = severity_number
        if event_name is not None:
            doc["event_name"] = event_name

        if not _OPTIONAL_FIELDS.isdisjoint(inputs):
            norm = norm or Normalizer(problem_list)
            self._optional_inputs(inputs, doc, rest, norm)
        # Rare cases, checked once at the end: context values that are not text,
        # indexed values too long for a B-tree, a severity that is not an int.
        if (
            {
                user_id.__class__,
                session_id.__class__,
                service_name.__class__,
                service_instance_id.__class__,
                host_name.__class__,
                scope.__class__,
                severity_text.__class__,
                event_name.__class__,
            }
            - _TEXT_OR_NONE
            or severity_number.__class__ not in _INT_OR_NONE
            or len(action or "") > MAX_INDEXED_CHARS
            or len(actor_id or "") > MAX_INDEXED_CHARS
            or len(resource_type or "") > MAX_INDEXED_CHARS
            or len(resource_id or "") > MAX_INDEXED_CHARS
        ):
            norm = norm or Normalizer(problem_list)
            self._fix_rare(doc, norm)
        if norm is None:
            return Draft(doc, False, ascii_keys)
        return Draft(doc, norm.has_float, ascii_keys and norm.ascii_keys)

    @staticmethod
    def _fix_rare(doc: dict[str, Any], norm: Normalizer) -> None:
        for field, label in _CONTEXT_TEXT:
            value = doc.get(field)
            if value is not None and value.__class__ is not str:
                doc[field] = norm.text(value, label)
        number = doc.get("severity_number")
        if number is not None and number.__class__ is not int:
            try:
                doc["severity_number"] = int(number)
            except (TypeError, ValueError):
                norm.problems.append(f"severity_number {number!r} is not an integer; dropped")
                del doc["severity_number"]
        for field, label in _INDEXED:
            if field in doc:
                doc[field] = _clip(doc[field], label, norm.problems)

    @staticmethod
    def _optional_inputs(inputs: dict[str, Any], doc: dict[str, Any], rest: dict[str, Any], norm: Normalizer) -> None:
        """Fields most records lack: client address, user agent, reason, changes."""
        problem_list = norm.problems
        if "input_problems" in inputs:
            notes = inputs["input_problems"]
            if type(notes) in (list, tuple) and all(type(n) is str for n in notes):
                problem_list[0:0] = notes  # they were made first, before OpenTelemetry saw the record
            else:
                problem_list.append(f"{A.INPUT_PROBLEMS} should be a list of texts; kept in attributes")
                rest[A.INPUT_PROBLEMS] = norm.value(notes, A.INPUT_PROBLEMS)
        raw_ip = inputs.get("ip_address")
        if raw_ip is not None:
            ip_address = _normalize_ip(raw_ip) if type(raw_ip) is str else None
            if ip_address is None:
                problem_list.append(
                    f"client.address {raw_ip!r} is not an IP address; kept in attributes['client.address']"
                )
                rest[A.CLIENT_ADDRESS] = norm.value(raw_ip, A.CLIENT_ADDRESS)
            else:
                doc["ip_address"] = ip_address
        for field in ("user_agent", "reason"):
            if field in inputs:
                doc[field] = inputs[field]
        raw_changed = inputs.get("changed_fields")
        if raw_changed is not None:
            if type(raw_changed) in (list, tuple) and all(type(f) is str for f in raw_changed):
                doc["changed_fields"] = list(raw_changed)
            elif isinstance(raw_changed, str):
                problem_list.append("audit.changed_fields should be a list of names; a single text was wrapped")
                doc["changed_fields"] = [raw_changed]
            else:
                problem_list.append("audit.changed_fields should be a list of names; kept in attributes")
                rest[A.AUDIT_CHANGED_FIELDS] = norm.value(raw_changed, A.AUDIT_CHANGED_FIELDS)
        old_values = inputs.get("old_values")
        if old_values is not None:
            doc["old_values"] = norm.value(old_values, A.AUDIT_OLD_VALUES)


def _clip(value: str | None, label: str, problems: list[str]) -> str | None:
    """Shorten an indexed field that a B-tree index could not hold (limit ~2.7 kB)."""
    if value is None or len(value) <= MAX_INDEXED_CHARS:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    problems.append(
        f"{label} truncated from {len(value)} to {MAX_INDEXED_CHARS} characters (indexed field); "
        f"original sha256={digest}"
    )
    return value[:MAX_INDEXED_CHARS]


def encode_draft(draft: Draft, max_bytes: int) -> bytes:
    """Canonical bytes of a drafted record, made storable and small enough.

    Fast path: one orjson call. Text PostgreSQL cannot hold (U+0000, which
    JSON writes as ``\\u0000``) or that is not Unicode (lone surrogates, which
    orjson refuses) sends the record through :func:`sanitize`; an oversized
    record through :func:`shrink_to_fit`. Both note what they changed.
    """
    doc = draft.doc
    try:
        out = canonical_json(doc, has_float=draft.has_float, ascii_keys=draft.ascii_keys)
        clean = b"\\u0000" not in out
    except CanonicalEncodingError:
        clean = False
    if not clean:
        problems = doc["problems"]
        for key, value in list(doc.items()):
            if key != "problems":
                doc[key] = sanitize(value, key, problems)
        # The notes themselves quote paths and keys, which may hold what was just replaced.
        problems[:] = [clean_text(p)[0] for p in problems]
        out = canonical_json(doc)
    if len(out) > max_bytes:
        shrink_to_fit(doc, len(out), max_bytes)
        out = canonical_json(doc)
    return out


#: Fields whose values may be shortened when a record exceeds the size limit,
#: largest first. Everything else is small and fixed.
_SHRINKABLE = ("message", "old_values", "attributes", "reason", "user_agent")


def shrink_to_fit(doc: dict[str, Any], encoded_size: int, max_bytes: int) -> None:
    """Shorten the largest free-form values until the record fits ``max_bytes``.

    The record is kept (never dropped) with a problem entry per shortened value
    that names its original size and SHA-256, so the loss is explicit and the
    original can be matched if it surfaces elsewhere.
    """
    while encoded_size > max_bytes:
        candidates = []
        for field in _SHRINKABLE:
            value = doc.get(field)
            if field == "attributes" and isinstance(value, dict):
                for key, item in value.items():
                    candidates.append((len(canonical_json(item)), field, key))
            elif value is not None:
                candidates.append((len(canonical_json(value)), field, None))
        if not candidates:
            break
        size, field, key = max(candidates)
        original = doc[field][key] if key is not None else doc[field]
        original_bytes = canonical_json(original)
        overflow = encoded_size - max_bytes
        keep = max(0, min(1024, size - overflow - 200))
        if isinstance(original, str):
            replacement = original[:keep] + "…"
        else:
            replacement = original_bytes[:keep].decode("utf-8", "ignore") + "…"
        digest = hashlib.sha256(original_bytes).hexdigest()
        where = f"attributes[{key!r}]" if key is not None else field
        doc["problems"].append(
            f"{where} truncated: {len(original_bytes)} bytes exceeded the record size limit of "
            f"{max_bytes}; original sha256={digest}"
        )
        if key is not None:
            doc[field][key] = replacement
        else:
            doc[field] = replacement
        new_size = len(canonical_json(doc))
        if new_size >= encoded_size:
            break  # nothing left to gain; store as is rather than loop
        encoded_size = new_size
