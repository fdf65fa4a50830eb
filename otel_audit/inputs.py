"""Make an audit record's ``extra`` safe for OpenTelemetry before its LoggingHandler sees it.

OpenTelemetry's ``LoggingHandler`` turns a ``logging.LogRecord`` into an OTel
log record *before* any processor runs, and its attribute cleaning
(``opentelemetry.attributes._clean_attribute_value``) raises on some values and
silently changes others:

* a map or list nested ~1,000 deep, or one that contains itself:
  ``RecursionError`` out of the ``logging`` call;
* an object whose ``__str__`` raises: that exception, out of the ``logging`` call;
* a ``%s`` message whose arguments do not match: ``TypeError`` from
  ``record.getMessage()``, out of the ``logging`` call;
* ``log.exception()`` for an exception whose first argument's ``str()`` raises
  (the handler stores ``str(exc.args[0])``): that exception, likewise;
* sets, dates, decimals and other objects become ``str()`` text (``"{1, 2}"``),
  objects without a custom ``__str__``/``__repr__`` become ``None``,
  ``bytearray`` a tuple of numbers, and map entries whose key is empty, falsy
  (``0``, ``None``, ``False``) or an object without a custom ``__str__`` are
  dropped, all without a trace.

:class:`AuditInputFilter` is a :class:`logging.Filter` for such a handler. For
an audit record (``audit.action`` in ``extra``, or a designated logger or event
name) it converts what OpenTelemetry would mangle with the rules of
:func:`otel_audit.core.normalize.to_plain`, replaces lone surrogates by U+FFFD,
renames empty keys, catches message formatting errors, and lists every change
in the ``otel_audit.input.problems`` attribute, which the record builder moves
into the sealed record's ``problems``. An ordinary audit record (text and small
numbers, plain maps and lists) is only checked, not copied. Other records cost
one dictionary lookup (plus the recognizer's cached checks when
``audit_loggers``/``event_prefix`` are set) and are not touched.

The filter converts the values *in the LogRecord itself* (the application's own
objects are never modified): handlers that run after it see the converted values.

:func:`otel_audit.configure` adds the filter to every OpenTelemetry
``LoggingHandler`` attached to a logger at that moment, including the one it
installs and the one ``opentelemetry-instrument`` installs; a handler the
application creates later needs ``audit.protect(handler)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from otel_audit.core import attributes as A
from otel_audit.core.canonical import MAX_SAFE_INTEGER
from otel_audit.core.normalize import MAX_DEPTH, clean_text, object_text, plain_key, to_plain
from otel_audit.core.recognize import Recognizer

__all__ = ["EMPTY_KEY", "AuditInputFilter", "guard_record"]

_log = logging.getLogger("otel_audit")

_ACTION = A.AUDIT_ACTION
_NOTES = A.INPUT_PROBLEMS
_SAFE = MAX_SAFE_INTEGER
#: What an empty map key is renamed to (OpenTelemetry drops attributes with an empty key).
EMPTY_KEY = "(empty key)"

#: The attributes every LogRecord has; everything else came from ``extra`` (or a
#: record factory) and becomes an OpenTelemetry attribute.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
#: The last attribute LogRecord.__init__ sets (``process``; ``taskName`` from Python 3.12).
_LAST_INIT = list(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)[-1]
_EVENT_NAME = "otel.event.name"
_EVENT_NAME_OLD = "event.name"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any, depth: int) -> bool:
    """Whether OpenTelemetry keeps ``value`` exactly as it is (and it is JSON-safe): the fast check."""
    kind = value.__class__
    if kind is str:
        return value.isascii() or _is_utf8(value)
    if kind is int:
        safe: bool = -_SAFE <= value <= _SAFE
        return safe
    if kind is float or kind is bool or value is None or kind is bytes:
        return True
    if kind is dict:
        if depth > MAX_DEPTH:
            return False
        for key, item in value.items():
            if key.__class__ is not str or not key or not (key.isascii() or _is_utf8(key)):
                return False
            if not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        if depth > MAX_DEPTH:
            return False
        for item in value:
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def guard_record(record: logging.LogRecord) -> list[str]:
    """Convert ``record`` in place so that OpenTelemetry takes it as it is; return the notes.

    Never raises (but :class:`RecursionError` when the caller's own stack is
    already exhausted, which nothing can help).
    """
    d = record.__dict__
    notes: list[str] = []
    # The message: what LoggingHandler builds the body from (record.getMessage()).
    msg = record.msg
    if record.args or msg.__class__ is not str:
        try:
            text = record.getMessage()
        except Exception as exc:
            _unformattable(record, exc, notes)
        else:
            if text.__class__ is not str or not (text.isascii() or _is_utf8(text)):
                record.msg = to_plain(text if text.__class__ is str else object_text(text)[0], "message", notes)
                record.args = ()
    elif not (msg.isascii() or _is_utf8(msg)):
        record.msg = to_plain(msg, "message", notes)
    if record.exc_info:
        _check_exception(record, notes)
    # The extra values (everything that is not a standard LogRecord attribute).
    if _extras_plain(d):
        if notes:
            _merge_notes(d, notes, None)
        return notes
    _convert_extras(d, notes)
    return notes


def _extras_plain(d: dict[Any, Any]) -> bool:
    """Whether every extra value is one OpenTelemetry keeps as it is: the check for every audit record.

    ``extra`` entries are added after ``LogRecord.__init__`` has set its attributes
    (``makeRecord`` refuses to overwrite one), so walking the record's attributes
    backwards from the newest reaches all of them before ``_LAST_INIT``; the
    standard ones met on the way (``message``, ``asctime`` set by a formatter) are
    skipped. If ``_LAST_INIT`` is missing, everything is walked.
    """
    for key, value in reversed(d.items()):
        if value.__class__ is str and key.__class__ is str and key and key.isascii() and value.isascii():
            continue  # the common case first: ASCII text under an ASCII name
        if key.__class__ is not str:
            return False
        if key == _LAST_INIT:
            return True
        if key in _STANDARD:
            continue
        if not key or not (key.isascii() or _is_utf8(key)):
            return False
        if value.__class__ is str:
            if _is_utf8(value):
                continue
            return False
        if key == _NOTES:
            if value.__class__ is tuple and all(note.__class__ is str for note in value):
                continue  # set by another protected handler this record went through
            return False
        if not _plain(value, 1):
            return False
    return True


def _convert_extras(d: dict[Any, Any], notes: list[str]) -> None:
    """The slow path: convert every extra that is not plain, in the record's own order."""
    earlier = None
    taken = None
    for key in [k for k in d if k not in _STANDARD]:
        value = d[key]
        if key == _NOTES:
            del d[key]
            if value.__class__ in (list, tuple) and all(e.__class__ is str for e in value):
                earlier = value  # set by another protected handler: kept, first
            else:
                notes.append(
                    f"extra: {_NOTES} is reserved for otel-audit's notes; a {type(value).__name__} given there "
                    "was dropped"
                )
            continue
        key_ok = key.__class__ is str and key and (key.isascii() or _is_utf8(key))
        if key_ok and _plain(value, 1):
            continue
        new_key = key
        if not key_ok:
            if taken is None:
                taken = {k for k in d if k.__class__ is str and k}
            if key.__class__ is str and not key:
                new_key = _unique(EMPTY_KEY, taken)
                notes.append(f"extra: empty key stored as {new_key!r} (OpenTelemetry drops empty keys)")
            else:
                new_key = plain_key(key, "extra", notes, taken)
            taken.add(new_key)
        new_value = to_plain(value, new_key, notes, empty_keys=EMPTY_KEY)
        if new_key is not key:
            del d[key]
        d[new_key] = new_value
    if notes or earlier:
        _merge_notes(d, notes, earlier)


def _merge_notes(d: dict[Any, Any], notes: list[str], earlier: Any) -> None:
    if earlier is None:
        earlier = d.get(_NOTES)
    if earlier is not None:  # another protected handler set some already
        notes[0:0] = earlier
    d[_NOTES] = tuple(notes)


def _check_exception(record: logging.LogRecord, notes: list[str]) -> None:
    """OpenTelemetry's handler stores ``str(exception.args[0])``: make sure it can.

    If that raises, the record gets a stand-in exception: same type name and
    module, same traceback and chained exceptions, the argument's text form as
    its message. The application's exception object is not touched.
    """
    exc_info = record.exc_info
    if exc_info.__class__ is not tuple or len(exc_info) != 3 or exc_info[1] is None:
        return
    kind, value, traceback = exc_info
    try:
        args = value.args
        if args:
            str(args[0])
        return
    except Exception as exc:
        failure = f"{type(exc).__name__}: {object_text(exc)[0]}"
    try:
        first = value.args[0]
    except Exception:
        first = value
    text = clean_text(object_text(first)[0])[0]
    name = getattr(kind, "__name__", "Exception")
    stand_in_type = type(
        name,
        (Exception,),
        {"__module__": getattr(kind, "__module__", None), "__qualname__": getattr(kind, "__qualname__", name)},
    )
    stand_in = stand_in_type(text)
    for attribute in ("__cause__", "__context__", "__suppress_context__"):
        try:
            setattr(stand_in, attribute, getattr(value, attribute))
        except Exception:
            pass
    stand_in.__traceback__ = traceback
    record.exc_info = (kind, stand_in, traceback)
    notes.append(f"exception.message: str() of the exception's first argument raised {failure}; stored its text form")


def _unique(name: str, taken: set[str]) -> str:
    base, n = name, 2
    while name in taken:
        name = f"{base}#{n}"
        n += 1
    return name


def _unformattable(record: logging.LogRecord, exc: Exception, notes: list[str]) -> None:
    """``record.getMessage()`` failed: keep the message and its arguments as text, say why."""
    kind = type(record.msg).__name__
    template, failure = object_text(record.msg)
    args = record.args
    reason = f"{type(exc).__name__}: {object_text(exc)[0]}"
    if args:
        if isinstance(args, tuple):
            shown = ", ".join(object_text(arg)[0] for arg in args)
        else:
            shown = object_text(args)[0]
        record.msg = to_plain(f"{template} (arguments: {shown})", "message", notes)
        notes.append(
            f"message: formatting the message with its arguments failed ({reason}); stored the unformatted "
            "message followed by the arguments' text forms"
        )
    else:
        record.msg = to_plain(template, "message", notes)
        kept = "its repr()" if failure and "repr() was kept" in failure else "a placeholder"
        notes.append(f"message: the message (a {kind}) could not be made text ({reason}); stored {kept} instead")
    record.args = ()


class AuditInputFilter(logging.Filter):
    """A :class:`logging.Filter` for an OpenTelemetry ``LoggingHandler``: see the module docstring.

    ``audit_loggers``/``event_prefix``: the processor's other recognition rules
    (``configure()`` passes its own); records they match are guarded too. The
    filter never rejects a record.
    """

    def __init__(self, audit_loggers: Iterable[str] = (), event_prefix: str | None = None) -> None:
        super().__init__()
        recognizer = Recognizer(audit_loggers, event_prefix)
        self._recognizer = recognizer if recognizer.active else None

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        if _ACTION not in d:
            recognizer = self._recognizer
            if recognizer is None:
                return True
            event = d.get(_EVENT_NAME)
            if event is None:
                event = d.get(_EVENT_NAME_OLD)
            if recognizer.default_action(record.name, event if event.__class__ is str else None) is None:
                return True
        try:
            guard_record(record)
        except Exception as exc:  # a bug here (or an exhausted stack) must not cost the record
            _last_resort(record, exc)
        return True


def _last_resort(record: logging.LogRecord, exc: Exception) -> None:
    """Every extra as text: what OpenTelemetry takes whatever happened above."""
    try:
        _log.warning(
            "otel-audit: internal error while preparing an audit record for OpenTelemetry; its extra "
            "values are stored as text. Please report this.",
            exc_info=exc,
        )
    except Exception:
        pass
    d = record.__dict__
    notes = [
        f"internal error while preparing the record for OpenTelemetry ({type(exc).__name__}); extras stored as text"
    ]
    for key in [k for k in d.keys() - _STANDARD if k != _NOTES]:
        value = d.pop(key)
        name = (
            key if key.__class__ is str and key and _is_utf8(key) else _unique(object_text(key)[0] or EMPTY_KEY, set(d))
        )
        d[name] = value if value.__class__ is str and _is_utf8(value) else clean_text(object_text(value)[0])[0]
    if not isinstance(record.msg, str) or record.args:
        record.msg, record.args = object_text(record.msg)[0], ()
    record.msg = clean_text(record.msg)[0]
    d[_NOTES] = tuple(notes)
