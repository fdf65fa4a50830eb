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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from otel_audit.errors import AuditConfigurationError
from otel_audit.privacy.redact import DEFAULT_NAMES, VALUE_RULES, Redactor

__all__ = ["PrivacyPolicy", "privacy_policy"]

_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}


class PrivacyPolicy:
    """The protections in force. ``redactor=None`` turns secret redaction off (not recommended)."""

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        self.redactor = redactor

    def redact(self, attributes: Mapping[str, Any], body: Any) -> tuple[dict[str, Any] | None, Any]:
        """See :meth:`Redactor.redact_attributes`; ``(None, body)`` with redaction off."""
        redactor = self.redactor
        if redactor is None:
            return None, body
        return redactor.redact_attributes(attributes, body)

    def describe(self) -> dict[str, Any]:
        """The policy as data, without any key material (what an auditor may read)."""
        return {"redact": self.redactor.describe() if self.redactor is not None else None}


def _env_list(env: Mapping[str, str], name: str) -> list[str] | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise AuditConfigurationError(f"{name}={raw!r}: use on or off")


def privacy_policy(
    *,
    redact: bool | None = None,
    redact_names: Iterable[str] | None = None,
    redact_values: Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> PrivacyPolicy:
    """Build the policy from arguments, falling back to environment variables.

    ========================  ==============================  ==========================
    argument                  environment variable            default
    ========================  ==============================  ==========================
    ``redact``                ``OTEL_AUDIT_REDACT``           on
    ``redact_names``          ``OTEL_AUDIT_REDACT_NAMES``     none (added to the built-in words)
    ``redact_values``         ``OTEL_AUDIT_REDACT_VALUES``    ``bearer,jwt,private_key,pan``
    ========================  ==============================  ==========================

    ``configure()`` and ``otel-audit serve`` both call it. Raises
    :class:`~otel_audit.errors.AuditConfigurationError` on a value it cannot use.
    """
    env = os.environ if env is None else env
    if redact is None:
        redact = _env_flag(env, "OTEL_AUDIT_REDACT", True)
    redactor = None
    if redact:
        names = list(redact_names) if redact_names is not None else (_env_list(env, "OTEL_AUDIT_REDACT_NAMES") or [])
        values = list(redact_values) if redact_values is not None else _env_list(env, "OTEL_AUDIT_REDACT_VALUES")
        try:
            redactor = Redactor(DEFAULT_NAMES, extra_names=names, values=VALUE_RULES if values is None else values)
        except ValueError as exc:
            raise AuditConfigurationError(f"redaction: {exc} (redact_values= or OTEL_AUDIT_REDACT_VALUES)") from None
    return PrivacyPolicy(redactor=redactor)
