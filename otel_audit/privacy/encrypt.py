"""Per-subject field encryption (crypto-shredding) and its reader.

A configured field is replaced, before sealing, by ::

    aead:<key_ref>:<base64url(nonce || AES-256-GCM ciphertext and tag)>

of the field's canonical JSON value (so a map stays a map when read back),
with ``"otel-audit.field.v1\\0" || key_ref || "\\0" || field name`` as
associated data (a ciphertext cannot be moved to another field or key). The
seal covers the ciphertext: destroying the subject key (``otel-audit erase``)
makes the field unreadable in PostgreSQL, in archives and in every backup of
them at once, and ``otel-audit verify`` still passes, because nothing sealed
changed. The verifier needs no key.

Whose key: the record's data subject, the first of ``subject_fields``
present (default ``audit.subject.id``, then ``audit.actor.id``, then
``user.id``), read before any pseudonymization. ``audit.subject.id`` itself
is never stored; the record names its subject key in
``otel_audit.subject_key`` and lists its encrypted fields in
``otel_audit.encrypted``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from otel_audit.core import attributes as A
from otel_audit.core.canonical import canonical_json
from otel_audit.privacy.fields import FIELD_OF, replace_field
from otel_audit.privacy.keystore import KeyErased, KeyStore, KeyStoreUnavailable

__all__ = [
    "DEFAULT_ENCRYPTED",
    "DEFAULT_SUBJECT_FIELDS",
    "ENCRYPTED",
    "ERASED",
    "PREFIX",
    "SUBJECT_ID",
    "SUBJECT_KEY",
    "UNREADABLE",
    "Decryptor",
    "Encryptor",
]

PREFIX = "aead:"
_AAD = b"otel-audit.field.v1\x00"
#: Fields encrypted when a key store is configured and no field list is given.
DEFAULT_ENCRYPTED: tuple[str, ...] = ("audit.old_values", "user_agent.original")
SUBJECT_ID = "audit.subject.id"
DEFAULT_SUBJECT_FIELDS: tuple[str, ...] = (SUBJECT_ID, A.AUDIT_ACTOR_ID, A.USER_ID)
#: Attributes a protected record carries: its subject key ref, and the names of its encrypted fields.
SUBJECT_KEY = "otel_audit.subject_key"
ENCRYPTED = "otel_audit.encrypted"
#: What readers see in place of a value whose key was destroyed / that they have no key store for.
ERASED = "[erased]"
UNREADABLE = "[encrypted]"
_WITHHELD = "[withheld: key store unavailable]"
_NO_SUBJECT = "[withheld: no data subject]"


def _aad(key_ref: str, field: str) -> bytes:
    return _AAD + key_ref.encode() + b"\x00" + field.encode("utf-8", "surrogatepass")


class Encryptor:
    """Encrypts the configured fields of a record document under its subject's key."""

    def __init__(
        self,
        store: KeyStore,
        fields: Iterable[str] = DEFAULT_ENCRYPTED,
        subject_fields: Iterable[str] = DEFAULT_SUBJECT_FIELDS,
    ) -> None:
        self.store = store
        self.fields = tuple(dict.fromkeys(fields))
        self.subject_fields = tuple(dict.fromkeys(subject_fields))

    def describe(self) -> dict[str, Any]:
        return {
            "algorithm": "aes-256-gcm",
            "fields": list(self.fields),
            "subject": list(self.subject_fields),
            "key_store": self.store.describe(),
        }

    def subject_of(self, doc: dict[str, Any]) -> str | None:
        attributes = doc["attributes"]
        subject = attributes.pop(SUBJECT_ID, None)  # never stored
        if subject is not None and SUBJECT_ID in self.subject_fields:
            return str(subject)
        for name in self.subject_fields:
            if name == SUBJECT_ID:
                continue
            field = FIELD_OF.get(name)
            value = doc.get(field) if field is not None else attributes.get(name)
            if value is not None and value != "":
                return value if value.__class__ is str else str(value)
        return None

    def protect(self, doc: dict[str, Any]) -> list[str]:
        """Encrypt in place; returns the attribute names that changed."""
        subject = self.subject_of(doc)
        changed: list[str] = []
        if subject is None:
            for name in self.fields:
                if replace_field(doc, name, lambda _v: _NO_SUBJECT)[0]:
                    changed.append(name)
            if changed:
                doc["problems"].append(
                    f"no data subject ({', '.join(self.subject_fields)}): {', '.join(changed)} withheld, not stored"
                )
            return changed
        try:
            key_ref, aead = self.store.key_for_subject(subject)
        except KeyStoreUnavailable as exc:
            for name in self.fields:
                if replace_field(doc, name, lambda _v: _WITHHELD)[0]:
                    changed.append(name)
            if changed:
                doc["problems"].append(f"{exc}: {', '.join(changed)} withheld, not stored")
            return changed

        def seal(name: str) -> Any:
            def transform(value: Any) -> str:
                nonce = secrets.token_bytes(12)
                ciphertext = aead.encrypt(nonce, canonical_json(value), _aad(key_ref, name))
                return f"{PREFIX}{key_ref}:{base64.urlsafe_b64encode(nonce + ciphertext).decode()}"

            return transform

        for name in self.fields:
            if replace_field(doc, name, seal(name))[0]:
                changed.append(name)
        attributes = doc["attributes"]
        attributes[SUBJECT_KEY] = key_ref
        if changed:
            attributes[ENCRYPTED] = list(changed)
        return changed


class Decryptor:
    """Reads encrypted values back for display: plaintext with the key store, a marker without or after erasure."""

    def __init__(self, store: KeyStore | None) -> None:
        self.store = store

    def reveal(self, value: Any, field: str | None = None) -> Any:
        """``value`` with every ciphertext inside replaced by its plaintext or a marker."""
        if value.__class__ is str:
            if not value.startswith(PREFIX):
                return value
            return self._open(value, field)
        if isinstance(value, dict):
            return {k: self.reveal(v, _join(field, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.reveal(v, field) for v in value]
        return value

    def _open(self, text: str, field: str | None) -> Any:
        if self.store is None:
            return UNREADABLE
        try:
            _, key_ref, payload = text.split(":", 2)
            blob = base64.urlsafe_b64decode(payload)
            aead = self.store.key_by_ref(key_ref)
        except KeyErased:
            return ERASED
        except (ValueError, TypeError):
            return UNREADABLE
        for name in _field_names(field):
            try:
                return orjson.loads(aead.decrypt(blob[:12], blob[12:], _aad(key_ref, name)))
            except InvalidTag:
                continue
        return UNREADABLE


def _join(parent: str | None, key: str) -> str | None:
    if parent is None:
        return key
    return f"{parent}.{key}"


#: Column name -> the attribute name a field was encrypted under.
_ATTRIBUTE_OF = {field: name for name, field in FIELD_OF.items()}


def _field_names(field: str | None) -> list[str]:
    """Which field name the ciphertext was bound to: the column's attribute name, or the attribute itself."""
    if field is None:
        return []
    names = []
    if field in _ATTRIBUTE_OF:
        names.append(_ATTRIBUTE_OF[field])
    if field.startswith("attributes."):
        names.append(field[len("attributes.") :])
    if field.startswith("old_values."):
        names.append(A.AUDIT_OLD_VALUES + field[len("old_values") :])
    names.append(field)
    return names
