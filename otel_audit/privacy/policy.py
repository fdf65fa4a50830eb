"""The privacy policy: which protections run on every audit record before it is sealed.

One object, built in one place (:func:`privacy_policy`) from arguments and
``OTEL_AUDIT_*`` environment variables, used the same way by
``configure()``'s processor and by ``otel-audit serve``, so records from other
languages get exactly the treatment in-process records get.

Order on the hot path, all before sealing (the seal covers the result):

1. :meth:`PrivacyPolicy.redact` on the record's attributes and message:
   secrets are replaced (:mod:`otel_audit.privacy.redact`); the processor
   writes the result back onto the OpenTelemetry record too, so the OTLP
   export carries no secret either.
2. :meth:`PrivacyPolicy.protect` on the built record document: configured
   fields become keyed pseudonyms (:mod:`otel_audit.privacy.pseudonym`).
   The processor writes the protected values back onto the OpenTelemetry
   record as well, so the export says what the seal covers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from otel_audit import settings
from otel_audit.core import attributes as A
from otel_audit.core.record import Draft
from otel_audit.errors import AuditConfigurationError
from otel_audit.privacy.encrypt import (
    DEFAULT_ENCRYPTED,
    DEFAULT_SUBJECT_FIELDS,
    ENCRYPTED,
    SUBJECT_ID,
    SUBJECT_KEY,
    Encryptor,
)
from otel_audit.privacy.fields import FIELD_OF, replace_field
from otel_audit.privacy.keystore import KeyStore, MasterKey, master_keys
from otel_audit.privacy.pseudonym import (
    DEFAULT_PSEUDONYMIZED,
    Pseudonymizer,
    PseudonymKey,
    load_key_ring,
    parse_key_ring,
)
from otel_audit.privacy.redact import DEFAULT_NAMES, VALUE_RULES, Redactor

__all__ = ["PrivacyPolicy", "privacy_policy", "pseudonym_keys"]


class PrivacyPolicy:
    """The protections in force. ``redactor=None`` turns secret redaction off (not recommended)."""

    def __init__(
        self,
        *,
        redactor: Redactor | None = None,
        pseudonymizer: Pseudonymizer | None = None,
        encryptor: Encryptor | None = None,
    ) -> None:
        if pseudonymizer is not None and encryptor is not None:
            both = set(pseudonymizer.fields) & set(encryptor.fields)
            if both:
                raise AuditConfigurationError(
                    f"{', '.join(sorted(both))}: a field is either pseudonymized (searchable) or encrypted (erasable), "
                    "not both; take it out of one of the two lists"
                )
        self.redactor = redactor
        self.pseudonymizer = pseudonymizer
        self.encryptor = encryptor
        #: Whether :meth:`protect` has anything to do (the hot path skips it otherwise).
        self.protects = pseudonymizer is not None or encryptor is not None

    def protect(self, draft: Draft) -> dict[str, Any] | None:
        """Pseudonymize the configured fields of a built record, in place, before it is sealed.

        Returns the attribute values to write back onto the OpenTelemetry
        record (attribute name -> protected value; ``None``: remove the
        attribute), or ``None`` when nothing changed.
        """
        doc = draft.doc
        changes: dict[str, Any] | None = None
        encryptor = self.encryptor
        if encryptor is not None:  # first: the subject is read from the plain values
            changes = {}
            for name in encryptor.protect(doc):
                self._note_change(changes, doc, name)
            # The subject's identifier is never stored, nor exported: None removes it from the OTel record.
            changes[SUBJECT_ID] = None
            key_ref = doc["attributes"].get(SUBJECT_KEY)
            if key_ref is not None:
                changes[SUBJECT_KEY] = key_ref
                changes[ENCRYPTED] = doc["attributes"].get(ENCRYPTED)
        pseudonymizer = self.pseudonymizer
        if pseudonymizer is not None:
            transform = pseudonymizer.pseudonym
            for name in pseudonymizer.fields:
                found, new = replace_field(doc, name, transform)
                if found:
                    if changes is None:
                        changes = {}
                    self._note_change(changes, doc, name)
            # The actor falls back to user.id: never leave the plain value in actor_id when user.id is protected.
            if (
                A.USER_ID in pseudonymizer.fields
                and A.AUDIT_ACTOR_ID not in pseudonymizer.fields
                and doc.get("actor_id").__class__ is str
                and doc.get("user_id") is not None
                and doc["actor_id"] != doc["user_id"]
                and transform(doc["actor_id"]) == doc["user_id"]
            ):
                doc["actor_id"] = doc["user_id"]
        return changes

    def redact(self, attributes: Mapping[str, Any], body: Any) -> tuple[dict[str, Any] | None, Any]:
        """See :meth:`Redactor.redact_attributes`; ``(None, body)`` with redaction off."""
        redactor = self.redactor
        if redactor is None:
            return None, body
        return redactor.redact_attributes(attributes, body)

    @staticmethod
    def _note_change(changes: dict[str, Any], doc: dict[str, Any], name: str) -> None:
        """The attribute value to write back onto the OTel record for a protected field."""
        if name.startswith(_OLD_VALUES_PREFIX) or name == A.AUDIT_OLD_VALUES:
            changes[A.AUDIT_OLD_VALUES] = doc.get("old_values")
            return
        field = FIELD_OF.get(name)
        if field is not None and field != "ip_address":
            changes[name] = doc.get(field)
        else:
            changes[name] = doc["attributes"].get(name)

    def describe(self) -> dict[str, Any]:
        """The policy as data, without any key material (what an auditor may read)."""
        return {
            "redact": self.redactor.describe() if self.redactor is not None else None,
            "pseudonymize": self.pseudonymizer.describe() if self.pseudonymizer is not None else None,
            "encrypt": self.encryptor.describe() if self.encryptor is not None else None,
        }


_OLD_VALUES_PREFIX = A.AUDIT_OLD_VALUES + "."


def pseudonym_keys(
    keys: str | os.PathLike[str] | Sequence[PseudonymKey] | None = None, *, env: Mapping[str, str] | None = None
) -> list[PseudonymKey]:
    """The pseudonym key ring: ``keys`` (a file path or keys), else ``OTEL_AUDIT_PSEUDONYM_KEYS_FILE`` (a
    file), else ``OTEL_AUDIT_PSEUDONYM_KEYS`` (the key ring text itself); empty when none is set."""
    if keys is not None and not isinstance(keys, (str, os.PathLike)):
        return list(keys)
    path = keys if keys is not None else settings.PSEUDONYM_KEYS_FILE.get(env)
    if path is not None:
        return load_key_ring(path)
    inline = settings.PSEUDONYM_KEYS.get(env)
    if inline:
        return parse_key_ring(inline, source=settings.PSEUDONYM_KEYS.name)
    return []


def privacy_policy(
    *,
    redact: bool | None = None,
    redact_names: Iterable[str] | None = None,
    redact_values: Iterable[str] | None = None,
    pseudonymize: Iterable[str] | None = None,
    pseudonym_keys: str | os.PathLike[str] | Sequence[PseudonymKey] | None = None,
    encrypt: Iterable[str] | None = None,
    subject_fields: Iterable[str] | None = None,
    keystore_dsn: str | None = None,
    master_key: str | os.PathLike[str] | Sequence[MasterKey] | None = None,
    key_store: KeyStore | None = None,
    env: Mapping[str, str] | None = None,
) -> PrivacyPolicy:
    """Build the policy from arguments, falling back to environment variables.

    ========================  ==============================  ==========================
    argument                  environment variable            default
    ========================  ==============================  ==========================
    ``redact``                ``OTEL_AUDIT_REDACT``           on
    ``redact_names``          ``OTEL_AUDIT_REDACT_NAMES``     none (added to the built-in words)
    ``redact_values``         ``OTEL_AUDIT_REDACT_VALUES``    ``bearer,jwt,private_key,pan``
    ``pseudonym_keys``        ``OTEL_AUDIT_PSEUDONYM_KEYS_FILE``  none: no pseudonyms
                              (a file) or ``_KEYS`` (the text)
    ``pseudonymize``          ``OTEL_AUDIT_PSEUDONYMIZE``     ``audit.actor.id,user.id,client.address,session.id``
    ``keystore_dsn``          ``OTEL_AUDIT_KEYSTORE_DSN``     none: no encryption
    ``master_key``            ``OTEL_AUDIT_MASTER_KEY_FILE``  required with a key store
                              (a file) or ``_KEY`` (the text)
    ``encrypt``               ``OTEL_AUDIT_ENCRYPT``          ``audit.old_values,user_agent.original``
    ``subject_fields``        ``OTEL_AUDIT_SUBJECT_FIELDS``   ``audit.subject.id,audit.actor.id,user.id``
    ========================  ==============================  ==========================

    ``key_store``: a ready :class:`~otel_audit.privacy.keystore.KeyStore` instead of
    ``keystore_dsn`` and ``master_key``.

    ``configure()`` and ``otel-audit serve`` both call it. Raises
    :class:`~otel_audit.errors.AuditConfigurationError` on a value it cannot use.
    """
    if redact is None:
        redact = settings.REDACT.get(env)
    redactor = None
    if redact:
        names = list(redact_names) if redact_names is not None else list(settings.REDACT_NAMES.get(env))
        values = list(redact_values) if redact_values is not None else _listed(settings.REDACT_VALUES.get(env))
        try:
            redactor = Redactor(DEFAULT_NAMES, extra_names=names, values=VALUE_RULES if values is None else values)
        except ValueError as exc:
            raise AuditConfigurationError(f"redaction: {exc} (redact_values= or OTEL_AUDIT_REDACT_VALUES)") from None
    ring = _pseudonym_keys(pseudonym_keys, env=env)
    fields = list(pseudonymize) if pseudonymize is not None else _listed(settings.PSEUDONYMIZE.get(env))
    pseudonymizer = None
    if ring:
        pseudonymizer = Pseudonymizer(ring, DEFAULT_PSEUDONYMIZED if fields is None else fields)
    elif fields:
        raise AuditConfigurationError(
            "fields to pseudonymize are configured but no key: set OTEL_AUDIT_PSEUDONYM_KEYS_FILE (or pass "
            "pseudonym_keys=) to a key ring file; `otel-audit privacy new-key --id k1` prints a key line"
        )
    encrypted = list(encrypt) if encrypt is not None else _listed(settings.ENCRYPT.get(env))
    if key_store is None:
        dsn = keystore_dsn or settings.KEYSTORE_DSN.get(env)
        if dsn is not None:
            key_store = KeyStore(dsn, master_keys(master_key, env=env))
    encryptor = None
    if key_store is not None:
        subjects = list(subject_fields) if subject_fields is not None else _listed(settings.SUBJECT_FIELDS.get(env))
        encryptor = Encryptor(
            key_store,
            DEFAULT_ENCRYPTED if encrypted is None else encrypted,
            DEFAULT_SUBJECT_FIELDS if subjects is None else subjects,
        )
    elif encrypted:
        raise AuditConfigurationError(
            "fields to encrypt are configured but no key store: set OTEL_AUDIT_KEYSTORE_DSN and "
            "OTEL_AUDIT_MASTER_KEY_FILE (or pass keystore_dsn= and master_key=); see docs/privacy.md"
        )
    if pseudonymizer is not None and encryptor is not None and pseudonymize is None and fields is None:
        # Default pseudonym fields give way to fields explicitly encrypted.
        kept = [f for f in pseudonymizer.fields if f not in encryptor.fields]
        pseudonymizer = Pseudonymizer(pseudonymizer.keys, kept)
    return PrivacyPolicy(redactor=redactor, pseudonymizer=pseudonymizer, encryptor=encryptor)


_pseudonym_keys = pseudonym_keys


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values is not None else None
