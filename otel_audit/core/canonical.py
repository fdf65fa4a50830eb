"""Canonical JSON encoding of audit documents (RFC 8785, JCS).

Every hash and signature in otel-audit is computed over bytes produced here, so
the rules must be exact and reproducible by a third party with any RFC 8785
implementation:

* the input is a *normalized* JSON value (see :mod:`otel_audit.core.normalize`):
  ``None``, ``bool``, ``int`` within +/-(2**53 - 1), finite ``float``, ``str``
  (valid Unicode, no U+0000), ``list`` and ``dict`` with ``str`` keys;
* the output is the RFC 8785 serialization: UTF-8, no insignificant whitespace,
  object members sorted by the UTF-16 code units of their names, strings with
  the minimal JSON escapes, numbers in ECMAScript ``Number.prototype.toString``
  form (so ``1.0`` is written ``1`` and ``1e-7`` stays ``1e-7``).

orjson produces exactly those bytes for everything but two corners, which is
why it can serve the hot path (about 40 times faster than the pure-Python
``rfc8785`` reference, which the property tests hold it to):

* floats: orjson writes ``1.0`` and ``1e16`` where JCS writes ``1`` and
  ``10000000000000000``. Floats are therefore pre-rendered with
  :func:`jcs_number` and handed to orjson as :class:`orjson.Fragment`.
* key order: orjson sorts keys by code point, JCS by UTF-16 code unit. The two
  orders only differ for keys holding characters above U+FFFF next to
  characters in U+E000..U+FFFF, so any document with a non-ASCII key is encoded
  by the reference implementation instead.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import rfc8785

from otel_audit.errors import CanonicalEncodingError

__all__ = ["CanonicalEncodingError", "canonical_json", "jcs_number", "reference_canonical_json"]

MAX_SAFE_INTEGER = 2**53 - 1

_SORT = orjson.OPT_SORT_KEYS
_Fragment = orjson.Fragment


def jcs_number(value: float) -> str:
    """Render a finite float exactly as ECMAScript ``Number.prototype.toString``.

    Python's ``repr`` already yields the shortest digit string that round-trips
    (the same digits ECMA-262 7.1.12.1 asks for); only the layout differs.
    """
    if value != value or value in (math.inf, -math.inf):
        raise CanonicalEncodingError(f"{value!r} has no JSON representation")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + jcs_number(-value)
    text = repr(value)
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    if frac_part == "0":
        frac_part = ""
    digits = (int_part + frac_part).lstrip("0")
    # Decimal exponent n such that value = 0.d1d2...dk * 10**n  (ECMA-262 naming).
    if int_part != "0":
        n = len(int_part) + exponent
    else:
        n = exponent - (len(frac_part) - len(frac_part.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    exp = n - 1
    sign = "+" if exp >= 0 else "-"
    if k == 1:
        return f"{digits}e{sign}{abs(exp)}"
    return f"{digits[0]}.{digits[1:]}e{sign}{abs(exp)}"


def _with_fragments(value: Any) -> Any:
    """Copy ``value`` with every float replaced by its pre-rendered JCS form."""
    kind = type(value)
    if kind is float:
        return _Fragment(jcs_number(value))
    if kind is dict:
        return {k: _with_fragments(v) for k, v in value.items()}
    if kind is list:
        return [_with_fragments(v) for v in value]
    return value


def canonical_json(value: Any, *, has_float: bool = True, ascii_keys: bool = False) -> bytes:
    """Encode a normalized JSON value as RFC 8785 bytes.

    ``has_float=False`` and ``ascii_keys=True`` are promises made by the
    normalizer, which has already walked the value; they let the hot path skip
    a second walk. Callers that cannot promise anything use the defaults.
    """
    if not ascii_keys and not _all_keys_ascii(value):
        return reference_canonical_json(value)
    if has_float:
        value = _with_fragments(value)
    try:
        return orjson.dumps(value, option=_SORT)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise CanonicalEncodingError(f"value is not canonical JSON: {exc}") from exc


def reference_canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes from the reference implementation (slow, used as the oracle)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError) as exc:  # UnicodeError: lone surrogates
        raise CanonicalEncodingError(f"value is not canonical JSON: {exc}") from exc


def _all_keys_ascii(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if not key.isascii() or not _all_keys_ascii(item):
                return False
        return True
    if kind is list:
        return all(_all_keys_ascii(item) for item in value)
    return True
