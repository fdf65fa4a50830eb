"""Turn arbitrary attribute values into canonical-JSON values, never silently.

Audit data arrives from ``logging`` ``extra=`` dicts, OTel attribute maps and
OTLP payloads from other languages. Whatever it holds must end up hashed and
stored, so values that JSON or PostgreSQL cannot carry are converted, and every
conversion is written into the record's ``problems`` list so that an auditor
sees exactly what was changed and why. Each note starts with the path of the
value (``audit.old_values.tags``, ``payload[2]``) and says what became of it.

Two layers share these rules:

* :func:`to_plain` makes any Python object *plain*: ``None``, ``bool``,
  ``int``, ``float``, ``str``, ``bytes``, ``list`` and ``dict`` with ``str``
  keys, at most :data:`MAX_DEPTH` containers deep, without cycles. It runs
  before OpenTelemetry sees an audit record (``otel_audit.inputs``), because
  OpenTelemetry's own attribute cleaning raises on some values and silently
  changes or drops others, and again for anything odd that reaches the record
  builder;
* :class:`Normalizer` then makes plain values canonical JSON.

=====================================  =========================================
input                                  stored as (each one noted)
=====================================  =========================================
``bytes``, ``bytearray``, memoryview   base64 text
``int`` beyond +/-(2**53 - 1)          decimal text (JSON numbers are doubles)
NaN, +/-Infinity                       ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
text with U+0000                       U+0000 replaced by U+FFFD (PostgreSQL text
                                       cannot hold it)
text with lone surrogates              each replaced by U+FFFD (not Unicode;
                                       typically undecodable bytes)
non-text mapping keys                  ``str(key)`` (made unique if that text is
                                       taken)
sets, frozensets, dict views           a list (sorted when the items sort)
other sequences (range, deque, ...)    a list
``datetime``, ``date``, ``time``       ISO 8601 text (``isoformat()``)
enum members                           their value
``Decimal``, ``UUID``, any other       ``str(value)``; if ``str()`` raises,
object                                 ``repr(value)``; if that raises too,
                                       ``<unprintable TYPE>``
containers nested deeper than          that container as JSON text (at most
:data:`MAX_DEPTH` levels               :data:`MAX_DEEP_TEXT` characters)
a container inside itself (cycle)      the text ``<cycle>``
=====================================  =========================================

Not noted, because the value is the same: lists and tuples (both are JSON
arrays), other mappings (JSON objects), subclasses of ``str``/``int``/``float``
that are not enums (stored as their plain value), integral floats (``2.0`` is
the JSON number ``2``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import math
import numbers
from collections import UserString
from collections.abc import ItemsView, KeysView, Mapping, Sequence, ValuesView
from collections.abc import Set as AbstractSet
from typing import Any

import orjson

from otel_audit.core.canonical import MAX_SAFE_INTEGER, canonical_json

__all__ = [
    "MAX_DEEP_TEXT",
    "MAX_DEPTH",
    "Normalizer",
    "clean_text",
    "plain_key",
    "sanitize",
    "to_plain",
    "unicode_text",
]

REPLACEMENT = "\ufffd"

#: Containers (maps and lists) nested deeper than this, counting an attribute's own
#: value as level 1, are stored as JSON text. OTLP's protobuf decoders refuse
#: messages nested about 100 deep, and each map level costs 3 of them.
MAX_DEPTH = 20
#: The JSON text of a container cut at :data:`MAX_DEPTH` is kept up to this many characters.
MAX_DEEP_TEXT = 65536

CYCLE = "<cycle>"

_NoneType = type(None)
_EXACT_SCALARS = frozenset({str, int, float, bool, _NoneType, bytes})
_BYTES_LIKE = (bytes, bytearray, memoryview)


def clean_text(text: str) -> tuple[str, str | None]:
    """Return ``text`` made storable, and a description of what was replaced."""
    notes = []
    if "\x00" in text:
        notes.append(f"{text.count(chr(0))} NUL character(s)")
        text = text.replace("\x00", REPLACEMENT)
    if not _is_utf8(text):
        text = _replace_surrogates(text)
        notes.append("invalid Unicode (lone surrogates, e.g. undecodable bytes)")
    return text, (" and ".join(notes) + " replaced by U+FFFD") if notes else None


def _replace_surrogates(text: str) -> str:
    return "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unicode_text(text: str, path: str, notes: list[str]) -> str:
    """``text`` with lone surrogates replaced (and noted); U+0000 is left to the encoder."""
    if text.isascii() or _is_utf8(text):
        return text
    notes.append(f"{path}: invalid Unicode (lone surrogates, e.g. undecodable bytes) replaced by U+FFFD")
    return _replace_surrogates(text)


def _type_name(value: Any) -> str:
    kind = type(value)
    module = getattr(kind, "__module__", "builtins")
    name = getattr(kind, "__qualname__", None) or kind.__name__
    return name if module in ("builtins", None) else f"{module}.{name}"


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` of an exception whose own ``str()`` may fail too."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def object_text(value: Any) -> tuple[str, str | None]:
    """``str(value)``, else ``repr(value)``, else ``<unprintable TYPE>``; plus why ``str()`` failed."""
    try:
        text = str(value)
        if type(text) is str:
            return text, None
        raise TypeError(f"__str__ returned {type(text).__name__}")
    except Exception as exc:
        failure = _exception_text(exc)
    try:
        text = repr(value)
        if type(text) is str:
            return text, f"str() raised {failure}; its repr() was kept"
    except Exception:
        pass
    return f"<unprintable {_type_name(value)}>", f"str() raised {failure} and repr() failed too"


def plain_key(key: Any, path: str, notes: list[str], taken: AbstractSet[str] | dict[str, Any] = frozenset()) -> str:
    """A mapping key as text: ``str(key)`` for other types (made unique against ``taken``), noted."""
    if type(key) is str:
        return key if key.isascii() else unicode_text(key, f"{path}: key", notes)
    failure = None
    if isinstance(key, str):  # a subclass: its text
        text = str.__str__(key)
    else:
        text, failure = object_text(key)
    if not _is_utf8(text):
        text = _replace_surrogates(text)
    base = text
    n = 2
    while text in taken:
        text = f"{base}#{n}"
        n += 1
    if isinstance(key, str) and text == base and not isinstance(key, enum.Enum):
        return text
    notes.append(
        f"{path}: key of type {_type_name(key)} stored as text {text!r}"
        + (f" ({failure})" if failure else "")
        + (f" (made unique: {base!r} is taken)" if text != base else "")
    )
    return text


def to_plain(
    value: Any,
    path: str,
    notes: list[str],
    depth: int = 1,
    *,
    empty_keys: str | None = None,
    _active: set[int] | None = None,
) -> Any:
    """``value`` as plain data (see the module docstring), every conversion noted in ``notes``.

    ``depth`` is the nesting level of ``value`` itself (an attribute's value is
    level 1). ``empty_keys``: when given, an empty mapping key is renamed to it
    (OpenTelemetry drops attributes whose key is empty). Never raises for any
    input (a broken ``__iter__``/``items()`` is noted and its container kept as
    text).
    """
    kind = type(value)
    if kind is str:
        return value if value.isascii() else unicode_text(value, path, notes)
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        notes.append(f"{path}: integer {value} is outside the JSON-safe range, stored as text")
        return str(value)
    if kind in _EXACT_SCALARS:
        return value
    if kind is dict or kind is list or kind is tuple:
        return _container(value, kind is dict, path, notes, depth, empty_keys, _active)
    try:
        return _convert_other(value, kind, path, notes, depth, empty_keys, _active)
    except Exception as exc:  # a hostile __eq__, __iter__, __index__, isoformat ...
        text, _ = object_text(value)
        notes.append(
            f"{path}: value of type {_type_name(value)} could not be converted ({_exception_text(exc)}); "
            "stored as its text form"
        )
        return unicode_text(text, path, notes)


def _convert_other(
    value: Any, kind: type, path: str, notes: list[str], depth: int, empty_keys: str | None, active: set[int] | None
) -> Any:
    if isinstance(value, enum.Enum):
        inner = value.value
        if isinstance(value, str):
            inner = str.__str__(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            inner = int.__index__(value)
        elif isinstance(value, float):
            inner = float.__float__(value)
        notes.append(f"{path}: enum member {type(value).__name__}.{value.name} stored as its value")
        return to_plain(inner, path, notes, depth, empty_keys=empty_keys, _active=active)
    if isinstance(value, str):
        return to_plain(str.__str__(value), path, notes, depth)
    if isinstance(value, int):
        return to_plain(int.__index__(value), path, notes, depth)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, UserString):
        return to_plain(str(value.data), path, notes, depth)
    if isinstance(value, _BYTES_LIKE):
        return bytes(value)
    if isinstance(value, Mapping):
        return _container(value, True, path, notes, depth, empty_keys, active)
    if isinstance(value, AbstractSet | KeysView | ValuesView | ItemsView):
        items = _container(value, False, path, notes, depth, empty_keys, active)
        if type(items) is not list:
            return items  # cut at the depth limit, or a cycle
        try:
            items = sorted(items)
            order = "sorted"
        except Exception:
            order = "in iteration order"
        notes.append(f"{path}: {_type_name(value)} stored as a list ({order})")
        return items
    if isinstance(value, Sequence):
        items = _container(value, False, path, notes, depth, empty_keys, active)
        if type(items) is list and not isinstance(value, list):
            notes.append(f"{path}: {_type_name(value)} stored as a list")
        return items
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        text = value.isoformat()
        notes.append(f"{path}: {_type_name(value)} stored as ISO 8601 text")
        return unicode_text(text, path, notes)
    if isinstance(value, numbers.Integral):
        number = int(value)
        notes.append(f"{path}: {_type_name(value)} stored as the integer {number}")
        return number
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Rational):
        real = float(value)
        notes.append(f"{path}: {_type_name(value)} stored as a floating-point number")
        return real
    text, failure = object_text(value)
    notes.append(
        f"{path}: value of type {_type_name(value)} stored as its text form" + (f" ({failure})" if failure else "")
    )
    return unicode_text(text, path, notes)


def _container(
    value: Any, is_map: bool, path: str, notes: list[str], depth: int, empty_keys: str | None, active: set[int] | None
) -> Any:
    """A dict (``is_map``) or list copy of a container, children converted; cut at the depth limit."""
    if depth > MAX_DEPTH:
        return cut_deep(value, path, notes)
    ident = id(value)
    if active is None:
        active = set()
    elif ident in active:
        notes.append(f"{path}: contains itself (a cycle); the inner reference stored as the text {CYCLE!r}")
        return CYCLE
    active.add(ident)
    try:
        if not is_map:
            return [
                to_plain(item, f"{path}[{i}]", notes, depth + 1, empty_keys=empty_keys, _active=active)
                for i, item in enumerate(value)
            ]
        out: dict[str, Any] = {}
        items = list(value.items())
        taken = None
        for key, item in items:
            if type(key) is not str or (empty_keys is not None and not key):
                if taken is None:
                    taken = {k for k, _ in items if type(k) is str and (k or empty_keys is None)}
                if type(key) is str:  # empty, and OpenTelemetry would drop it
                    name = empty_keys or ""
                    base, n = name, 2
                    while name in taken:
                        name = f"{base}#{n}"
                        n += 1
                    notes.append(f"{path}: empty key stored as {name!r} (OpenTelemetry drops empty keys)")
                    key = name
                else:
                    key = plain_key(key, path, notes, taken)
                taken.add(key)
            elif not key.isascii():
                key = unicode_text(key, f"{path}: key", notes)
            out[key] = to_plain(item, f"{path}.{key}", notes, depth + 1, empty_keys=empty_keys, _active=active)
        return out
    finally:
        active.discard(ident)


def cut_deep(value: Any, path: str, notes: list[str]) -> str:
    """The JSON text of a container nested too deep (noted), built without recursion."""
    text, truncated = deep_json_text(value, MAX_DEEP_TEXT)
    notes.append(
        f"{path}: nested deeper than {MAX_DEPTH} levels; this part stored as JSON text"
        + (f" (cut at {MAX_DEEP_TEXT} characters)" if truncated else "")
    )
    return text


_NOTHING = object()


def deep_json_text(value: Any, limit: int) -> tuple[str, bool]:
    """JSON text of any value, at any depth, with an explicit stack; at most about ``limit`` characters.

    Leaves are converted as :func:`to_plain` would convert them (without notes:
    the caller notes the whole cut); a container met again inside itself is
    written as ``"<cycle>"``. Returns the text and whether it was cut short.
    """
    parts: list[str] = []
    size = 0
    stack: list[list[Any]] = []  # [iterator, is_map, first, id]
    open_ids: set[int] = set()
    pending = value
    scratch: list[str] = []
    while True:
        if pending is not _NOTHING:
            item, pending = pending, _NOTHING
            shape = _shape(item)
            if shape is None:
                piece = _json_leaf(item, scratch)
            elif id(item) in open_ids:
                piece = '"<cycle>"'
            else:
                is_map, iterator = shape
                open_ids.add(id(item))
                stack.append([iterator, is_map, True, id(item)])
                piece = "{" if is_map else "["
            parts.append(piece)
            size += len(piece)
        if size > limit:
            return "".join(parts)[:limit] + "…", True
        if not stack:
            return "".join(parts), False
        frame = stack[-1]
        try:
            nxt = next(frame[0])
        except StopIteration:
            nxt = _NOTHING
        except Exception:
            parts.append(("," if not frame[2] else "") + '"<unreadable>"')
            nxt = _NOTHING
        if nxt is _NOTHING:
            parts.append("}" if frame[1] else "]")
            size += 1
            open_ids.discard(frame[3])
            stack.pop()
            continue
        if not frame[2]:
            parts.append(",")
            size += 1
        frame[2] = False
        if frame[1]:
            key, pending = nxt
            if type(key) is not str:
                key, _ = object_text(key) if not isinstance(key, str) else (str.__str__(key), None)
            piece = _json_string(key) + ":"
            parts.append(piece)
            size += len(piece)
        else:
            pending = nxt


def _shape(value: Any) -> tuple[bool, Any] | None:
    """(is_map, iterator) for a container, None for a leaf (never raises)."""
    kind = type(value)
    if kind in _EXACT_SCALARS:
        return None
    try:
        if kind is dict or (kind is not list and kind is not tuple and isinstance(value, Mapping)):
            return True, iter(list(value.items()))
        if kind is list or kind is tuple or isinstance(value, AbstractSet | KeysView | ValuesView | ItemsView):
            return False, iter(list(value))
        if isinstance(value, Sequence) and not isinstance(value, str | _BYTES_LIKE | UserString):
            return False, iter(list(value))
    except Exception:
        return None
    return None


def _json_leaf(value: Any, notes: list[str]) -> str:
    plain = to_plain(value, "", notes) if type(value) not in _EXACT_SCALARS else value
    notes.clear()
    if plain is None:
        return "null"
    if plain is True:
        return "true"
    if plain is False:
        return "false"
    kind = type(plain)
    if kind is int:
        return str(plain)
    if kind is float:
        return repr(plain) if math.isfinite(plain) else _json_string(repr(plain))
    if kind is bytes:
        return _json_string(base64.b64encode(plain).decode("ascii"))
    if kind is str:
        return _json_string(plain)
    return _json_string(object_text(plain)[0])  # a container past the leaf test (cut, cycle)


def _json_string(text: str) -> str:
    if not _is_utf8(text):
        text = _replace_surrogates(text)
    return orjson.dumps(text).decode("utf-8")


class Normalizer:
    """Walks one record's values; collects problems and facts the encoder can use.

    One instance per record: ``problems`` is that record's list, ``has_float``
    and ``ascii_keys`` let :func:`~otel_audit.core.canonical.canonical_json`
    skip a second walk.
    """

    __slots__ = ("_active", "ascii_keys", "has_float", "problems")

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.has_float = False
        self.ascii_keys = True
        self._active: set[int] = set()

    def value(self, value: Any, path: str, depth: int = 1) -> Any:
        kind = type(value)
        if kind is str:
            # NUL and lone surrogates are not checked here: the encoder detects
            # both in one pass over its output and sends the record through
            # sanitize() (see otel_audit.core.record.encode_draft).
            return value
        if value is None or kind is bool:
            return value
        if kind is int:
            if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                return value
            self.problems.append(f"{path}: integer {value} is outside the JSON-safe range, stored as text")
            return str(value)
        if kind is float:
            if math.isfinite(value):
                if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
                    return int(value)
                self.has_float = True
                return value
            text = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
            self.problems.append(f"{path}: non-finite number {text} stored as text")
            return text
        if kind is dict or kind is list or kind is tuple:
            if depth > MAX_DEPTH:
                return cut_deep(value, path, self.problems)
            active = self._active
            ident = id(value)
            if ident in active:
                self.problems.append(
                    f"{path}: contains itself (a cycle); the inner reference stored as the text {CYCLE!r}"
                )
                return CYCLE
            active.add(ident)
            try:
                if kind is not dict:
                    return [self.value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
                out = {}
                taken = None
                for key, item in value.items():
                    if type(key) is not str:
                        if taken is None:
                            taken = {k for k in value if type(k) is str}
                        key = plain_key(key, path, self.problems, taken)
                        taken.add(key)
                    if not key.isascii():
                        self.ascii_keys = False
                    out[key] = self.value(item, f"{path}.{key}", depth + 1)
                return out
            finally:
                active.discard(ident)
        if kind is bytes or kind is bytearray or kind is memoryview:
            self.problems.append(f"{path}: bytes value stored as base64 text")
            return base64.b64encode(bytes(value)).decode("ascii")
        # Anything else (sets, other mappings and sequences, enums, dates, objects):
        # made plain by the shared rules, then normalized as plain data.
        return self.value(to_plain(value, path, self.problems, depth, _active=self._active), path, depth)

    def text(self, value: Any, path: str) -> str | None:
        """A field that must be text: other types are converted and noted."""
        if type(value) is str or value is None:
            return value
        self.problems.append(f"{path}: expected text, got {type(value).__name__}; stored as its text form")
        normalized = self.value(value, path)
        if isinstance(normalized, str):
            return normalized
        return canonical_json(normalized).decode("utf-8")


def sanitize(value: Any, path: str, problems: list[str]) -> Any:
    """Copy ``value`` with NUL characters and lone surrogates replaced, noting each.

    The slow path for the rare record whose text PostgreSQL could not store
    (U+0000) or that is not Unicode at all (lone surrogates from undecodable
    bytes).
    """
    kind = type(value)
    if kind is str:
        if "\x00" in value or not _is_utf8(value):
            value, note = clean_text(value)
            problems.append(f"{path}: {note}")
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if "\x00" in key or not _is_utf8(key):
                key, note = clean_text(key)
                problems.append(f"{path or 'record'}: key {note}")
                child = f"{path}.{key}" if path else key
            out[key] = sanitize(item, child, problems)
        return out
    if kind is list:
        return [sanitize(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    return value
