"""Turn arbitrary attribute values into canonical-JSON values, never silently.

Audit data arrives from ``logging`` ``extra=`` dicts, OTel attribute maps and
OTLP payloads from other languages. Whatever it holds must end up hashed and
stored, so values that JSON or PostgreSQL cannot carry are converted, and every
conversion is written into the record's ``problems`` list so that an auditor
sees exactly what was changed and why:

=====================================  =========================================
input                                  stored as
=====================================  =========================================
``bytes``                              base64 text
``int`` beyond +/-(2**53 - 1)          decimal text (JSON numbers are doubles)
NaN, +/-Infinity                       ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
text with U+0000                       U+0000 replaced by U+FFFD (PostgreSQL text
                                       cannot hold it)
text with lone surrogates              each replaced by U+FFFD (not Unicode;
                                       typically undecodable bytes)
non-text mapping keys                  ``str(key)``
any other object                       ``str(value)``
=====================================  =========================================
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

from otel_audit.core.canonical import MAX_SAFE_INTEGER, canonical_json

__all__ = ["Normalizer", "clean_text", "sanitize"]

REPLACEMENT = "\ufffd"


def clean_text(text: str) -> tuple[str, str | None]:
    """Return ``text`` made storable, and a description of what was replaced."""
    notes = []
    if "\x00" in text:
        notes.append(f"{text.count(chr(0))} NUL character(s)")
        text = text.replace("\x00", REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        fixed = "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
        notes.append("invalid Unicode (lone surrogates, e.g. undecodable bytes)")
        text = fixed
    return text, (" and ".join(notes) + " replaced by U+FFFD") if notes else None


class Normalizer:
    """Walks one record's values; collects problems and facts the encoder can use.

    One instance per record: ``problems`` is that record's list, ``has_float``
    and ``ascii_keys`` let :func:`~otel_audit.core.canonical.canonical_json`
    skip a second walk.
    """

    __slots__ = ("ascii_keys", "has_float", "problems")

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.has_float = False
        self.ascii_keys = True

    def value(self, value: Any, path: str) -> Any:
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
        if kind is dict or isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if type(key) is not str:
                    self.problems.append(f"{path}: key {key!r} of type {type(key).__name__} stored as text")
                    key = str(key)
                if not key.isascii():
                    self.ascii_keys = False
                out[key] = self.value(item, f"{path}.{key}")
            return out
        if kind is list or kind is tuple:
            return [self.value(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if kind is bytes or kind is bytearray or kind is memoryview:
            self.problems.append(f"{path}: bytes value stored as base64 text")
            return base64.b64encode(bytes(value)).decode("ascii")
        if isinstance(value, bool | int):  # subclasses such as IntEnum
            return self.value(int(value), path)
        if isinstance(value, float):
            return self.value(float(value), path)
        if isinstance(value, str):
            return self.value(str(value), path)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(item, f"{path}[{i}]") for i, item in enumerate(value)]
        self.problems.append(f"{path}: value of type {type(value).__name__} stored as its text form")
        try:
            text = str(value)
        except Exception as exc:  # a broken __str__ must not lose the record
            text = f"<unprintable {type(value).__name__}: {exc!r}>"
        return self.value(text, path)

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
            out[key] = sanitize(item, child, problems)
        return out
    if kind is list:
        return [sanitize(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
