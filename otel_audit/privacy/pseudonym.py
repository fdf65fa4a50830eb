"""Pseudonymization: personal identifiers stored as keyed HMAC-SHA-256.

A configured field (``audit.actor.id``, ``user.id``, ``client.address``,
``session.id`` by default) is stored as ::

    hmac-sha256:<key id>:<lowercase hex HMAC-SHA-256(key, DOMAIN || UTF-8 text)>

so the records of one person still join (the same value under the same key
gives the same pseudonym, in every field), and an investigator who knows the
identifier can find them (``otel-audit query --actor alice@example.com``
computes the pseudonym with every configured key). Without the key, a
pseudonym reveals nothing about the value, short of guessing a value *and*
holding the key.

Keys rotate: a key ring lists the current key first and older keys after
it; records keep the id of the key that made their pseudonym, and searches
try every key in the ring, so old records stay findable as long as their key
stays in the ring. Key ring text (a file, or an environment variable): one
key per line (or comma-separated), ``<key id>:<base64 of 32 random bytes>``;
``#`` starts a comment. ``otel-audit privacy new-key`` prints one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_audit.errors import AuditConfigurationError

__all__ = [
    "DEFAULT_PSEUDONYMIZED",
    "PREFIX",
    "PseudonymKey",
    "Pseudonymizer",
    "load_key_ring",
    "new_key_line",
    "parse_key_ring",
]

PREFIX = "hmac-sha256:"
DOMAIN = b"otel-audit.pseudonym.v1\x00"
#: Fields pseudonymized when a key ring is configured and no field list is given.
DEFAULT_PSEUDONYMIZED: tuple[str, ...] = ("audit.actor.id", "user.id", "client.address", "session.id")
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class PseudonymKey:
    """One HMAC key and its id (the id is stored in each pseudonym; the key never is)."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"PseudonymKey(key_id={self.key_id!r})"

    def pseudonym(self, text: str) -> str:
        digest = hmac.new(self.secret, DOMAIN + text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"{PREFIX}{self.key_id}:{digest}"


def new_key_line(key_id: str) -> str:
    """A fresh key ring line ``<key id>:<base64 of 32 random bytes>``."""
    if not _KEY_ID.fullmatch(key_id):
        raise AuditConfigurationError(f"key id {key_id!r}: use 1 to 32 letters, digits, '.', '_' or '-'")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def parse_key_ring(text: str, *, source: str) -> list[PseudonymKey]:
    """Keys from key ring text (current key first). ``source`` names it in errors (never the text)."""
    keys: list[PseudonymKey] = []
    for number, raw in enumerate(re.split(r"[\n,]", text), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key_id, sep, encoded = line.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise AuditConfigurationError(
                f"{source}, entry {number}: expected '<key id>:<base64 key>' with a key id of letters, digits, "
                "'.', '_' or '-' (`otel-audit privacy new-key --id ID` prints one)"
            )
        try:
            secret = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise AuditConfigurationError(f"{source}, key {key_id!r}: the key is not valid base64") from None
        if len(secret) < _MIN_KEY_BYTES:
            raise AuditConfigurationError(
                f"{source}, key {key_id!r}: {len(secret)} bytes is too short a key; use 32 random bytes"
            )
        if any(k.key_id == key_id for k in keys):
            raise AuditConfigurationError(f"{source}: key id {key_id!r} appears twice; key ids must be unique")
        keys.append(PseudonymKey(key_id, secret))
    return keys


def load_key_ring(path: str | os.PathLike[str]) -> list[PseudonymKey]:
    """Read a key ring file; errors say which file and what to do."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditConfigurationError(f"cannot read the pseudonym key ring {path}: {exc.strerror or exc}") from None
    keys = parse_key_ring(text, source=str(path))
    if not keys:
        raise AuditConfigurationError(f"the pseudonym key ring {path} holds no key")
    return keys


class Pseudonymizer:
    """Pseudonyms with the current key (the first), searches with every key of the ring."""

    def __init__(self, keys: Sequence[PseudonymKey], fields: Iterable[str] = DEFAULT_PSEUDONYMIZED) -> None:
        if not keys:
            raise AuditConfigurationError("pseudonymization needs at least one key")
        self.keys = tuple(keys)
        self.current = self.keys[0]
        self.fields = tuple(dict.fromkeys(fields))

    def pseudonym(self, value: Any) -> Any:
        """The stored form of ``value``: text and numbers become a pseudonym, other values stay (maps, lists)."""
        if value.__class__ is str:
            if value.startswith(PREFIX):
                return value  # already a pseudonym (an audit context or an upstream emitter made it)
            return self.current.pseudonym(value)
        if value.__class__ in (int, float, bool):
            return self.current.pseudonym(str(value))
        return value

    def candidates(self, term: str) -> list[str]:
        """What ``term`` is stored as under each key of the ring (for searches)."""
        return [key.pseudonym(term) for key in self.keys]

    def describe(self) -> dict[str, Any]:
        """Fields and key ids (never keys): recorded in the chain's genesis."""
        return {"algorithm": "hmac-sha256", "fields": list(self.fields), "key_id": self.current.key_id}
