"""Exact comparison of stored values with sealed fields: by JSON type, numbers as exact decimals.

Python's ``==`` is too loose for evidence: ``True == 1``, and a float parser
reads ``1.5`` and ``1.50000000000000001`` as the same number, while PostgreSQL's
``jsonb`` keeps both as different ``numeric`` values (and queries see the
difference). A superuser who edits a ``jsonb`` column from ``true`` to ``1``, or
adds digits beyond a double's precision, must be caught.

The rule (also in docs/specification.md, "Comparing columns with fields"):
two JSON values are equal when they have the same JSON type (a boolean is never
a number), strings are equal code point for code point, numbers have the same
exact decimal value (``1.5`` = ``1.50``, ``1e+21`` = ``1000000000000000000000``,
``1.5`` != ``1.50000000000000001``), arrays are equal element by element and
objects have the same member names with equal values.

The checks are tiered for speed, because nearly every stored value is an
object of strings: ``==`` on the fast parser's (orjson) values first, which
is exact when no number or boolean is involved; a type-strict walk when they
are; and, only when a float is involved, both texts parsed again with numbers
as :class:`decimal.Decimal`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

__all__ = [
    "UNREADABLE",
    "decimal_equal",
    "json_column_equal",
    "load_decimal",
    "loads_or_unreadable",
    "strict_equal",
    "strings_only",
    "utc_text",
]

_STR_ONLY = frozenset({str})
_NUMBERS = (int, Decimal)
_loads = orjson.loads


class _NeedsDecimal(Exception):
    """A float is involved: only the decimal texts can say whether two numbers are equal."""


def load_decimal(text: str | bytes) -> Any:
    """Parse JSON keeping every non-integer number as an exact :class:`~decimal.Decimal`."""
    return json.loads(text, parse_float=Decimal)


def strict_equal(a: Any, b: Any) -> bool:
    """Type-strict equality of two values parsed by orjson; raises ``_NeedsDecimal`` when a float is in the way."""
    ca, cb = a.__class__, b.__class__
    if ca is not cb:
        if ca is float or cb is float:
            raise _NeedsDecimal
        return False
    if ca is dict:
        return a.keys() == b.keys() and all(strict_equal(v, b[k]) for k, v in a.items())
    if ca is list:
        return len(a) == len(b) and all(map(strict_equal, a, b))
    if ca is float:
        raise _NeedsDecimal
    same: bool = a == b  # Any == Any is Any to mypy; a plain name keeps the hot path free of a bool() call
    return same


def decimal_equal(a: Any, b: Any) -> bool:
    """Exact equality of two values parsed by :func:`load_decimal` (int and Decimal compare by value)."""
    same: bool  # Any == Any is Any to mypy; an annotated name keeps the hot path free of a bool() call
    ca, cb = a.__class__, b.__class__
    if ca in _NUMBERS and cb in _NUMBERS:
        same = a == b
        return same
    if ca is not cb:
        return False
    if ca is dict:
        return a.keys() == b.keys() and all(decimal_equal(v, b[k]) for k, v in a.items())
    if ca is list:
        return len(a) == len(b) and all(map(decimal_equal, a, b))
    same = a == b
    return same


def utc_text(column: str) -> str:
    """SQL rendering a ``timestamptz`` column as the sealed documents write times: RFC 3339 in UTC with
    six fractional digits and ``Z`` (``2026-12-02T14:49:35.702812Z``), so that equal text means equal
    time and the comparison is a string comparison (docs/specification.md, "Comparing columns with
    fields")."""
    return f"pg_catalog.to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def strings_only(value: Any) -> bool:
    """Is ``value`` an object whose members are all strings (where ``==`` with anything is exact)?"""
    return value.__class__ is dict and {*map(type, value.values())} <= _STR_ONLY


def json_column_equal(
    doc: dict[str, Any], field: str, stored: Any, stored_text: str | bytes | None, canonical: bytes
) -> bool:
    """Is a ``jsonb`` column exactly the sealed field ``doc[field]``?

    ``doc`` is the sealed document as the fast parser read it, ``stored`` the
    column as the fast parser read it (:data:`UNREADABLE` when it could not),
    ``stored_text`` the column's text (None: SQL NULL, which only an absent
    field projects to; JSON ``null`` is another value), and ``canonical`` the
    sealed bytes (parsed again with :func:`load_decimal` only when a float is
    involved).
    """
    if stored_text is None or field not in doc:
        return stored_text is None and field not in doc
    sealed = doc[field]
    if stored is not UNREADABLE:
        if sealed != stored:  # exact for a difference: equal texts parse to equal values
            return False
        if strings_only(stored):
            return True  # == was exact
        try:
            return strict_equal(sealed, stored)
        except _NeedsDecimal:
            pass
    try:
        return decimal_equal(load_decimal(canonical).get(field), load_decimal(stored_text))
    except ValueError:  # not JSON at all
        return False


class _Unreadable:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unreadable>"


#: What a column parsed to when the fast parser could not read it (a number beyond 64 bits).
UNREADABLE: Any = _Unreadable()


def loads_or_unreadable(text: str | bytes | None) -> Any:
    if text is None:
        return None
    try:
        return _loads(text)
    except orjson.JSONDecodeError:
        return UNREADABLE
