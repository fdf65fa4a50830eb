"""Secret redaction: what must never enter an audit trail nobody can edit.

A hash-chained, append-only trail cannot forget a password once it is sealed,
so secrets are replaced *before* sealing, on by default. Two kinds of rules:

* **name rules**: the value of any attribute, or of any key nested in a map
  (``audit.old_values``), whose name contains one of the configured words
  (``password``, ``secret``, ``token``, ``authorization``, ``api_key``, ...;
  compared lowercase with ``.``, ``_``, ``-`` and spaces removed) is replaced
  by ``[REDACTED]``, whatever its type;
* **value rules**, in every text anywhere in the record (the message, every
  attribute, nested maps and lists): ``Bearer``/``Basic`` credentials, JSON Web
  Tokens, PEM private key blocks are replaced by ``[REDACTED:<rule>]``; card
  numbers (13 to 19 digits, optionally grouped by single spaces or hyphens,
  first digit 2 to 6 as in every card network's ISO/IEC 7812 range, passing
  the Luhn check) are masked to their first 6 and last 4 digits, as PCI DSS
  3.4 allows (``411111******1111``). Integers that are card numbers are masked
  the same way (and become text).

Every replacement is listed in the record itself, under the attribute
:data:`REDACTIONS` (``["audit.old_values.password: name", "message: jwt"]``):
which field, which rule, never the value. The module knows neither OTel nor
PostgreSQL; the processor and the OTLP ingest both call
:meth:`Redactor.redact_attributes` before building a record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from otel_audit.errors import InvalidInput

__all__ = [
    "DEFAULT_NAMES",
    "REDACTED",
    "REDACTIONS",
    "VALUE_RULES",
    "Redactor",
    "luhn_valid",
    "mask_pan",
]

#: The attribute under which a record lists its redactions (a list of texts ``"<field>: <rule>"``).
REDACTIONS = "otel_audit.redactions"
#: What a value matched by a name rule becomes.
REDACTED = "[REDACTED]"

#: Words that make a name sensitive (compared without separators, lowercase, as substrings).
DEFAULT_NAMES: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "cookie",
)

#: The value rules, by name (all on by default).
VALUE_RULES: tuple[str, ...] = ("bearer", "jwt", "private_key", "pan")

_BEARER = re.compile(r"(?i)\b(?:bearer|basic)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*")
# header.payload.signature; a JOSE header is base64url JSON, so it starts with "eyJ" ('{"').
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# A maximal run of digits joined by single spaces or hyphens, not part of a longer word or number.
_DIGITS = re.compile(r"(?<![\w.-])[2-6](?:[ -]?\d){12,18}(?![\w]|[ -]\d|\.\d)")
#: One cheap test per text: does any value rule possibly apply?
_TRIGGER = re.compile(r"(?i:bearer|basic)[ \t]|eyJ|-----BEGIN|[2-6](?:[ -]?\d){12}")
_SEPARATORS = re.compile(r"[\s._-]+")
_INT_LOW = 10**12
_INT_HIGH = 10**19


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_pan(digits: str) -> str:
    """First 6 and last 4 digits kept, the rest ``*`` (PCI DSS 3.4's widest allowed display)."""
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def _pan_candidate(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _normalize_name(name: str) -> str:
    return _SEPARATORS.sub("", name.lower())


class Redactor:
    """Replaces secrets in record attributes and messages; thread-safe, no I/O.

    ``names``: the words of the name rules (default :data:`DEFAULT_NAMES`);
    ``extra_names`` are added to them. ``values``: the value rules to apply
    (default all of :data:`VALUE_RULES`). ``exempt``: attribute names never
    redacted by name (otel-audit's own ``audit.*``/``otel_audit.*`` attributes
    are always exempt from name rules; value rules still apply to them).
    """

    def __init__(
        self,
        names: Iterable[str] = DEFAULT_NAMES,
        *,
        extra_names: Iterable[str] = (),
        values: Iterable[str] = VALUE_RULES,
        exempt: Iterable[str] = (),
    ) -> None:
        words = [_normalize_name(n) for n in (*names, *extra_names) if n and n.strip()]
        self.names: tuple[str, ...] = tuple(dict.fromkeys(w for w in words if w))
        rules = tuple(values)
        unknown = set(rules) - set(VALUE_RULES)
        if unknown:
            raise InvalidInput(
                f"unknown redaction value rule(s) {sorted(unknown)}: choose from {', '.join(VALUE_RULES)}"
            )
        self.values: tuple[str, ...] = tuple(r for r in VALUE_RULES if r in rules)
        self.exempt = frozenset(exempt)
        self._name_cache: dict[str, bool] = {}
        self._nested_cache: dict[str, bool] = {}
        self._pan = "pan" in self.values
        self._text_rules = [
            (rule, pattern)
            for rule, pattern in (("private_key", _PRIVATE_KEY), ("jwt", _JWT), ("bearer", _BEARER))
            if rule in self.values
        ]

    def describe(self) -> dict[str, Any]:
        """The rules in force (recorded in the chain's genesis)."""
        return {"names": list(self.names), "values": list(self.values)}

    # ------------------------------------------------------------------ names
    def sensitive_name(self, name: str) -> bool:
        """Whether a value stored under ``name`` is replaced whatever it is."""
        hit = self._name_cache.get(name)
        if hit is None:
            if name in self.exempt or name.startswith(("otel_audit.", "audit.")):
                hit = False
            else:
                flat = _normalize_name(name)
                hit = any(word in flat for word in self.names)
            if len(self._name_cache) < 65536:
                self._name_cache[name] = hit
        return hit

    def _nested_sensitive(self, name: str) -> bool:
        """Name rules for keys inside maps (no exemptions there); cached like top-level names."""
        hit = self._nested_cache.get(name)
        if hit is None:
            flat = _normalize_name(name)
            hit = any(word in flat for word in self.names)
            if len(self._nested_cache) < 65536:
                self._nested_cache[name] = hit
        return hit

    # ------------------------------------------------------------------ values
    def redact_text(self, text: str, path: str, notes: list[str]) -> str:
        """``text`` with every value-rule match replaced; one note per rule that matched."""
        if _TRIGGER.search(text) is None:
            return text
        for rule, pattern in self._text_rules:
            text, n = pattern.subn(f"[REDACTED:{rule}]", text)
            if n:
                notes.append(f"{path}: {rule}")
        if self._pan:
            hits = 0

            def mask(match: re.Match[str]) -> str:
                nonlocal hits
                digits = re.sub(r"[ -]", "", match.group(0))
                if not _pan_candidate(digits):
                    return match.group(0)
                hits += 1
                return mask_pan(digits)

            text = _DIGITS.sub(mask, text)
            if hits:
                notes.append(f"{path}: pan")
        return text

    def redact_value(self, value: Any, path: str, notes: list[str], depth: int = 0) -> Any:
        """A value with secrets replaced; the same object when nothing was replaced."""
        kind = value.__class__
        if kind is str:
            return self.redact_text(value, path, notes)
        if kind is int:
            if self._pan and _INT_LOW <= abs(value) < _INT_HIGH:
                digits = str(abs(value))
                if _pan_candidate(digits):
                    notes.append(f"{path}: pan")
                    return mask_pan(digits)
            return value
        if kind is dict or isinstance(value, Mapping):
            if depth > 64:
                return value
            changed: dict[Any, Any] | None = None
            for key, item in value.items():
                sub = f"{path}.{key}"
                if key.__class__ is str and self._nested_sensitive(key):
                    new = REDACTED
                    notes.append(f"{sub}: name")
                else:
                    new = self.redact_value(item, sub, notes, depth + 1)
                    if new is item:
                        continue
                if changed is None:
                    changed = dict(value)
                changed[key] = new
            return value if changed is None else changed
        if kind is list or kind is tuple:
            if depth > 64:
                return value
            items: list[Any] | None = None
            for i, item in enumerate(value):
                new = self.redact_value(item, f"{path}[{i}]", notes, depth + 1)
                if new is not item:
                    if items is None:
                        items = list(value)
                    items[i] = new
            if items is None:
                return value
            return tuple(items) if kind is tuple else items
        if kind is bytes:
            # Bytes become hex text in the record; a secret in them is not recognisable. Decode when it is text.
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return value
            redacted = self.redact_text(text, path, notes)
            return value if redacted is text else redacted
        return value

    # ------------------------------------------------------------------ records
    def _collect(self, value: Any, texts: list[str], depth: int) -> bool:
        """Gather the texts of a plain map or list (``old_values``) for :meth:`_clean`; ``False`` when it
        holds anything the fast check cannot judge (a sensitive key, a large number, another type)."""
        if depth > 8:
            return False
        items = value.values() if value.__class__ is dict else value
        if value.__class__ is dict:
            cache = self._nested_cache
            for key in value:
                hit = cache.get(key)
                if hit is None:
                    if key.__class__ is not str:
                        return False
                    hit = self._nested_sensitive(key)
                if hit:
                    return False
        for item in items:
            kind = item.__class__
            if kind is str:
                texts.append(item)
            elif kind is int:
                if item >= _INT_LOW or item <= -_INT_LOW:
                    return False
            elif kind is dict or kind is list or kind is tuple:
                if not self._collect(item, texts, depth + 1):
                    return False
            elif not (kind is float or kind is bool or item is None):
                return False
        return True

    def _clean(self, attributes: Mapping[str, Any], body: Any) -> bool:
        """The fast check for the common record: no sensitive name, only texts and small numbers at the top
        level, and one search over all texts joined by line breaks (no rule matches across one) finds
        nothing. ``False`` sends the record through the full walk."""
        cache = self._name_cache
        texts: list[str] = []
        for key, value in attributes.items():
            hit = cache.get(key)
            if hit is None:
                if key.__class__ is not str:
                    return False
                hit = self.sensitive_name(key)
            if hit:
                return False
            kind = value.__class__
            if kind is str:
                texts.append(value)
            elif kind is int:
                if value >= _INT_LOW or value <= -_INT_LOW:
                    return False
            elif kind is dict or kind is list or kind is tuple:
                if not self._collect(value, texts, 0):
                    return False
            elif not (kind is float or kind is bool or value is None):
                return False
        if body is not None:
            if body.__class__ is not str:
                return False
            texts.append(body)
        return not texts or _TRIGGER.search("\n".join(texts)) is None

    def redact_attributes(self, attributes: Mapping[str, Any], body: Any) -> tuple[dict[str, Any] | None, Any]:
        """Redact a record's attributes and its message (body).

        Returns ``(changes, body)``: ``changes`` maps each attribute whose value
        was replaced to its new value, plus :data:`REDACTIONS` with the notes,
        or is ``None`` when nothing was found (the common case allocates
        nothing); ``body`` is the message with secrets replaced (the same
        object when none were). Never raises: a value that cannot be examined
        is replaced by ``[REDACTED:error]``.
        """
        if self._clean(attributes, body):
            return None, body
        notes: list[str] = []
        changes: dict[str, Any] | None = None
        for key, value in attributes.items():
            try:
                if key.__class__ is str and self.sensitive_name(key):
                    new: Any = REDACTED
                    notes.append(f"{key}: name")
                else:
                    kind = value.__class__
                    if kind is str and _TRIGGER.search(value) is None:
                        continue
                    new = self.redact_value(value, key if key.__class__ is str else repr(key), notes)
                    if new is value:
                        continue
            except Exception:  # never let a secret through because of a bug here
                new = "[REDACTED:error]"
                notes.append(f"{key}: error")
            if changes is None:
                changes = {}
            changes[key] = new
        if body is not None:
            try:
                body = self.redact_value(body, "message", notes)
            except Exception:
                body = "[REDACTED:error]"
                notes.append("message: error")
        if notes:
            if changes is None:
                changes = {}
            previous = attributes.get(REDACTIONS)
            earlier = list(previous) if isinstance(previous, (list, tuple)) else []
            changes[REDACTIONS] = tuple(dict.fromkeys([*earlier, *notes]))
        return changes, body


def apply_changes(attributes: MutableMapping[str, Any], changes: Mapping[str, Any]) -> None:
    """Write :meth:`Redactor.redact_attributes` changes into a mutable attribute map."""
    for key, value in changes.items():
        attributes[key] = value
